"""Settings: every option the server reads from the environment, parsed and checked in one place."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

BACKENDS = ("sqlite", "postgresql")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class SettingsError(ValueError):
    """A setting has a value the server cannot use; the message names the setting."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"invalid setting {name}: {problem}")
        self.name = name


def _port(name: str, raw: str) -> int:
    """A TCP port number, 1-65535."""
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(name, f"{raw!r} is not a port number") from None
    if not 0 < value < 65536:
        raise SettingsError(name, f"{value} is outside 1-65535")
    return value


def _number(kind: type, noun: str, above_zero: bool) -> Callable[[str, str], Any]:
    """A parser of whole numbers (`int`, at least 1) or numbers (`float`, above 0)."""

    def parse(name: str, raw: str):
        try:
            value = kind(raw)
        except ValueError:
            raise SettingsError(name, f"{raw!r} is not {noun}") from None
        if value <= 0 if above_zero else value < 1:
            raise SettingsError(name, f"{value} must be {'above 0' if above_zero else 'at least 1'}")
        return value

    return parse


_positive_int = _number(int, "a whole number", above_zero=False)
_positive_float = _number(float, "a number", above_zero=True)


def _choice(options: tuple[str, ...], upper: bool = False) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        value = raw.upper() if upper else raw.lower()
        if value not in options:
            raise SettingsError(name, f"{raw!r} is not one of {', '.join(options)}")
        return value

    return parse


def _http_url(name: str, raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SettingsError(name, f"{raw!r} is not an absolute http(s) URL")
    return raw.rstrip("/")


def _mongodb_uri(name: str, raw: str) -> str:
    if raw and not raw.startswith(("mongodb://", "mongodb+srv://")):
        raise SettingsError(name, f"{raw!r} must start with mongodb:// or mongodb+srv://")
    return raw


def _text(name: str, raw: str) -> str:
    return raw


def _hours_list(name: str, raw: str) -> tuple[float, ...]:
    """Comma-separated hours above 0, largest first (e.g. `72,24`); empty for none."""
    return tuple(sorted({_positive_float(name, part.strip()) for part in raw.split(",") if part.strip()},
                        reverse=True))


def _path(name: str, raw: str) -> Path:
    if not raw:
        raise SettingsError(name, "must not be empty")
    return Path(raw).expanduser().resolve()


@dataclass(frozen=True)
class Setting:
    """One environment variable: its name, default, parser and meaning (the README's table)."""

    env: str
    default: str
    parse: Callable[[str, str], Any]
    help: str


SETTINGS: dict[str, Setting] = {
    "host": Setting("FHIR_HOST", "127.0.0.1", _text, "address the HTTP server listens on"),
    "port": Setting("FHIR_PORT", "8080", _port, "port the HTTP server listens on"),
    "base_url": Setting(
        "FHIR_BASE_URL", "", _text, "public FHIR base URL (default http://HOST:PORT/fhir)"
    ),
    "workers": Setting("FHIR_WORKERS", "", _text, "gunicorn worker processes (default 2 x cores)"),
    "threads": Setting("FHIR_THREADS", "4", _positive_int, "threads per gunicorn worker"),
    "mongodb_uri": Setting(
        "MONGODB_URI", "", _mongodb_uri, "use this MongoDB instead of the embedded FerretDB (production)"
    ),
    "db_name": Setting("FHIR_DB_NAME", "fhir", _text, "database name"),
    "db_backend": Setting(
        "FHIR_DB_BACKEND", "sqlite", _choice(BACKENDS), "embedded FerretDB backend: sqlite or postgresql"
    ),
    "db_port": Setting("FHIR_DB_PORT", "27027", _port, "port of the embedded FerretDB"),
    "pg_port": Setting("FHIR_PG_PORT", "54329", _port, "port of the embedded PostgreSQL (postgresql backend)"),
    "state_dir": Setting(
        "FHIR_STATE_DIR", ".local", _path, "folder for the FerretDB binary, database files and logs"
    ),
    "db_timeout": Setting(
        "FHIR_DB_TIMEOUT", "2", _positive_float, "seconds to wait for the database before answering 503"
    ),
    "commit_timeout": Setting(
        "FHIR_COMMIT_TIMEOUT", "30", _positive_float,
        "seconds after which an unfinished commit (a killed writer) is rolled back or forward",
    ),
    "page_size": Setting("FHIR_PAGE_SIZE", "50", _positive_int, "default _count of searches and history"),
    "page_max": Setting("FHIR_PAGE_MAX", "1000", _positive_int, "largest _count honoured"),
    "auth": Setting(
        "FHIR_AUTH", "on", _choice(("on", "off")),
        "on: every FHIR request needs a SMART access token; off: no authorization (local development only)",
    ),
    "log_level": Setting("FHIR_LOG_LEVEL", "INFO", _choice(LOG_LEVELS, upper=True), "log level"),
    "secret_key": Setting(
        "FHIR_SECRET_KEY", "", _text, "key for signing sessions and CSRF tokens (random per start if unset)"
    ),
    "reminder_hours": Setting(
        "FHIR_REMINDER_HOURS", "72,24", _hours_list,
        "hours before an appointment's start at which reminders go out (comma-separated; empty for none)",
    ),
    "job_interval": Setting(
        "FHIR_JOB_INTERVAL", "30", _positive_float,
        "seconds between runs of the background jobs (hold expiry, notices, reminders, waitlist offers)",
    ),
    "jobs": Setting("FHIR_JOBS", "on", _choice(("on", "off")), "on: run the background jobs in the server process"),
    "hold_minutes": Setting(
        "FHIR_HOLD_MINUTES", "10", _positive_float, "minutes an Appointment/$hold keeps its slots (Expires header)"
    ),
    "late_cancel_hours": Setting(
        "FHIR_LATE_CANCEL_HOURS", "24", _positive_float,
        "a cancellation this many hours or less before the start is flagged late",
    ),
}


@dataclass(frozen=True)
class Settings:
    """The parsed settings; build with `Settings.from_env()` or `load_settings(overrides)`."""

    host: str
    port: int
    base_url: str
    workers: str
    threads: int
    mongodb_uri: str
    db_name: str
    db_backend: str
    db_port: int
    pg_port: int
    state_dir: Path
    db_timeout: float
    commit_timeout: float
    page_size: int
    page_max: int
    auth: str
    log_level: str
    secret_key: str
    reminder_hours: tuple[float, ...]
    job_interval: float
    jobs: str
    hold_minutes: float
    late_cancel_hours: float

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every setting from the environment; raise SettingsError naming the first bad one."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for key, setting in SETTINGS.items():
            raw = env.get(setting.env, setting.default).strip()
            values[key] = setting.parse(setting.env, raw)
        if values["workers"]:
            values["workers"] = str(_positive_int("FHIR_WORKERS", values["workers"]))
        values["base_url"] = _http_url(
            "FHIR_BASE_URL", values["base_url"] or f"http://{values['host']}:{values['port']}/fhir"
        )
        if not values["db_name"] or any(c in values["db_name"] for c in "/\\. \"$"):
            raise SettingsError("FHIR_DB_NAME", f"{values['db_name']!r} is not a valid database name")
        if not values["secret_key"]:
            values["secret_key"] = os.urandom(32).hex()
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (tests and the CLI)."""
        current = {f.name: getattr(self, f.name) for f in fields(self)}
        current.update(changes)
        return Settings(**current)

    @property
    def database_uri(self) -> str:
        """The MongoDB URI the app connects to: MONGODB_URI, else the embedded FerretDB."""
        return self.mongodb_uri or f"mongodb://127.0.0.1:{self.db_port}/"

    @property
    def embedded_database(self) -> bool:
        """True when the server runs its own FerretDB rather than an external MongoDB."""
        return not self.mongodb_uri

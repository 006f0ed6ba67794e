"""PostgreSQL for FerretDB's postgresql backend: Debian's server, installed when missing, a private cluster."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from fhirserver.dbserver import process


class PostgresError(RuntimeError):
    """PostgreSQL could not be installed, initialised or started."""


def _bindir() -> Path | None:
    """The newest Debian PostgreSQL server binaries folder, if installed."""
    root = Path("/usr/lib/postgresql")
    versions = sorted((p for p in root.glob("*/bin") if (p / "postgres").exists()),
                      key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    return versions[-1] if versions else None


def ensure_installed() -> Path:
    """Install Debian's postgresql when its server is missing; return its bin folder."""
    found = _bindir()
    if found:
        return found
    if os.geteuid() != 0:
        raise PostgresError("PostgreSQL is not installed; run 'apt-get install postgresql' as root")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "postgresql"]):
        done = subprocess.run(argv, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise PostgresError(f"{' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    found = _bindir()
    if not found:
        raise PostgresError("apt-get installed postgresql but no server binaries were found")
    return found


@dataclass(frozen=True)
class PostgreSQL:
    """A private cluster in `state` (data, socket, log) listening on 127.0.0.1:`port`, trust auth on loopback."""

    state: Path
    port: int

    @property
    def data(self) -> Path:
        return self.state / "data"

    @property
    def socket_dir(self) -> Path:
        return self.state / "run"

    @property
    def logfile(self) -> Path:
        return self.state / "postgresql.log"

    def url(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def _as_owner(self, argv: list[str]) -> list[str]:
        """PostgreSQL refuses to run as root: run its tools as the `postgres` user then."""
        if os.geteuid() != 0:
            return argv
        return ["runuser", "-u", "postgres", "--", *argv]

    def _run(self, argv: list[str]) -> subprocess.CompletedProcess:
        done = subprocess.run(self._as_owner(argv), capture_output=True, text=True)
        if done.returncode != 0:
            raise PostgresError(f"{Path(argv[0]).name} failed: {(done.stderr or done.stdout).strip()[-2000:]}")
        return done

    def pid(self) -> int | None:
        """The postmaster's pid if the cluster runs."""
        return process.read_pid(self.data / "postmaster.pid")

    def _prepare(self, bindir: Path) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            for path in (self.state, self.socket_dir, *([self.data] if self.data.exists() else [])):
                shutil.chown(path, owner.pw_uid, owner.pw_gid)
            self.logfile.touch()
            shutil.chown(self.logfile, owner.pw_uid, owner.pw_gid)
            if subprocess.run(self._as_owner(["test", "-w", str(self.state)])).returncode != 0:
                raise PostgresError(f"the postgres user cannot reach {self.state}: a parent folder is private; "
                                    "set FHIR_STATE_DIR to a folder under a path others may traverse")
        if not (self.data / "PG_VERSION").exists():
            self._run([str(bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                       "-E", "UTF8", "--no-locale"])

    def start(self, timeout: float = 60.0) -> None:
        """Install if needed, initialise the cluster once, start it and wait until it accepts connections."""
        bindir = ensure_installed()
        if self.pid() is not None:
            return
        self._prepare(bindir)
        options = f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=on"
        self._run([str(bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.logfile), "-o", options,
                   "-w", "-t", str(int(timeout)), "start"])

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run one SQL statement with psql (outside a transaction block); its unaligned output."""
        bindir = ensure_installed()
        psql = [str(bindir / "psql"), "-h", str(self.socket_dir), "-p", str(self.port), "-U", "postgres", "-tA",
                "-v", "ON_ERROR_STOP=1", "-d", database]
        return self._run([*psql, "-c", statement]).stdout

    def create_database(self, name: str) -> None:
        """Create database `name` unless it exists."""
        if self.sql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'").strip() != "1":
            self.sql(f'CREATE DATABASE "{name}"')

    def stop(self) -> None:
        """Stop the cluster if it runs (fast shutdown)."""
        bindir = _bindir()
        if bindir is None or self.pid() is None:
            return
        self._run([str(bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"])

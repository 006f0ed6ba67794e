"""Real processes for tests: a FerretDB on a free port with its own data folder, and the server under gunicorn."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from fhirserver.dbserver import FerretDB, build_ferretdb

REPO = Path(__file__).resolve().parent.parent
FERRETDB_BINARY = REPO / ".local" / "bin" / "ferretdb"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ferretdb_binary() -> Path:
    """The project's FerretDB build (built once, shared with `make run`)."""
    return build_ferretdb(FERRETDB_BINARY)


def start_ferretdb(state: Path, port: int | None = None) -> FerretDB:
    """A started FerretDB on SQLite with its files in `state`."""
    db = FerretDB(binary=ferretdb_binary(), state=state, port=port or free_port())
    db.start()
    return db


@dataclass
class ServerProcess:
    """`fhirserver serve` running as a real HTTP process; its stderr goes to `log`."""

    env: dict[str, str]
    log: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base(self) -> str:
        return f"{self.url}/fhir"

    def start(self, timeout: float = 90.0) -> ServerProcess:
        env = {**os.environ, **self.env, "FHIR_PORT": str(self.port), "FHIR_HOST": "127.0.0.1"}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "fhirserver.cli", "serve"], env=env,
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if requests.get(f"{self.url}/healthz", timeout=5).status_code == 200:
                    return self
            except requests.RequestException:
                time.sleep(0.1)
        raise RuntimeError("server did not answer /healthz in time")

    def kill(self) -> None:
        """SIGKILL the server and its workers at once, as a crash would."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def serve(db_uri: str, log: Path, **env: str) -> ServerProcess:
    """Start the server against the MongoDB at `db_uri`."""
    settings = {"MONGODB_URI": db_uri, "FHIR_DB_NAME": "fhirtest", "FHIR_WORKERS": "1", "FHIR_LOG_LEVEL": "INFO",
                "FHIR_DB_TIMEOUT": "5", "FHIR_AUTH": "off"}  # FHIR behaviour tests; SMART tests turn it on
    settings.update(env)
    return ServerProcess(env=settings, log=log).start()

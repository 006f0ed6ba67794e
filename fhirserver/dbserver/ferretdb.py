"""FerretDB v1: built from the Go module proxy into the project's state folder, run as a child process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fhirserver.dbserver import process
from fhirserver.store.connection import ping

FERRETDB_MODULE = "github.com/FerretDB/FerretDB"
FERRETDB_VERSION = "v1.24.2"


class DatabaseProcessError(RuntimeError):
    """The embedded database could not be built, started or stopped."""


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("GOTOOLCHAIN", "local")  # never fetch another toolchain: only the module proxy is reachable
    env.setdefault("CGO_ENABLED", "0")  # FerretDB's SQLite is pure Go
    return env


def _built_version(binary: Path) -> str | None:
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        if line.startswith("version:"):
            return line.split(":", 1)[1].strip()
    return None


def build_ferretdb(binary: Path, log=print) -> Path:
    """Build FerretDB into `binary` unless a working build of the pinned version is already there.

    `go install github.com/FerretDB/FerretDB/cmd/ferretdb@v1.24.2` fetches the right source but its binary panics at
    start: the module zip lacks the generated `build/version/version.txt`. So we download the same module with
    `go mod download`, copy it, write that file, and `go build ./cmd/ferretdb` from the copy.
    """
    if binary.exists() and _built_version(binary) == FERRETDB_VERSION:
        return binary
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        raise DatabaseProcessError("Go >= 1.24 is needed to build FerretDB and 'go' is not on PATH")
    log(f"building FerretDB {FERRETDB_VERSION} into {binary} (once) ...")
    env = _go_env()
    got = subprocess.run(
        [go, "mod", "download", "-json", f"{FERRETDB_MODULE}@{FERRETDB_VERSION}"],
        capture_output=True, text=True, env=env, cwd=tempfile.gettempdir(),
    )
    if got.returncode != 0:
        raise DatabaseProcessError(f"go mod download failed: {got.stderr.strip() or got.stdout.strip()}")
    source = Path(json.loads(got.stdout)["Dir"])
    binary.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=binary.parent) as tmp:
        work = Path(tmp) / "src"
        shutil.copytree(source, work)
        for path in work.rglob("*"):
            if path.is_dir():
                path.chmod(0o755)
        version_file = work / "build" / "version" / "version.txt"
        if version_file.exists():
            version_file.chmod(0o644)
        version_file.write_text(FERRETDB_VERSION + "\n")
        out = Path(tmp) / "ferretdb"
        built = subprocess.run(
            [go, "build", "-trimpath", "-buildvcs=false", "-o", str(out), "./cmd/ferretdb"],
            cwd=work, capture_output=True, text=True, env=env,
        )
        if built.returncode != 0:
            raise DatabaseProcessError(f"go build of FerretDB failed:\n{built.stderr[-3000:]}")
        os.replace(out, binary)
    if _built_version(binary) != FERRETDB_VERSION:
        raise DatabaseProcessError(f"the FerretDB built at {binary} does not report {FERRETDB_VERSION}")
    return binary


@dataclass(frozen=True)
class FerretDB:
    """One FerretDB server: binary, state folder (data, pid file, log), port and backend."""

    binary: Path
    state: Path
    port: int
    handler: str = "sqlite"
    postgresql_url: str = ""

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    @property
    def pidfile(self) -> Path:
        return self.state / "ferretdb.pid"

    @property
    def logfile(self) -> Path:
        return self.state / "ferretdb.log"

    def pid(self) -> int | None:
        """The pid of the running server, or None."""
        return process.read_pid(self.pidfile)

    def answers(self) -> bool:
        """True when the server answers `ping`."""
        return ping(self.uri, timeout=1.0)

    def argv(self) -> list[str]:
        """The command line that runs this server."""
        args = [
            str(self.binary), f"--handler={self.handler}", f"--listen-addr=127.0.0.1:{self.port}",
            f"--state-dir={self.state}", "--debug-addr=-", "--telemetry=disable", "--log-format=json",
            "--log-level=WARN",
            # Push equality on dotted paths (`idx.patient`) down to SQL too, not only top-level keys: the search
            # index lives under `idx`. FerretDB still applies the whole filter itself afterwards.
            "--test-enable-nested-pushdown",
        ]
        if self.handler == "sqlite":
            args.append(f"--sqlite-url=file:{self.state / 'data'}/")
        else:
            args.append(f"--postgresql-url={self.postgresql_url}")
        return args

    def start(self, timeout: float = 60.0) -> None:
        """Start the server unless it runs already, and wait until it answers `ping`."""
        if self.pid() is not None:
            if process.wait_until(self.answers, timeout):
                return
            raise DatabaseProcessError(f"FerretDB (pid {self.pid()}) runs but does not answer on {self.uri}")
        if ping(self.uri, timeout=0.5):
            raise DatabaseProcessError(f"port {self.port} is taken by another server; set FHIR_DB_PORT")
        (self.state / "data").mkdir(parents=True, exist_ok=True)
        pid = process.spawn(self.argv(), self.pidfile, self.logfile)
        if not process.wait_until(lambda: self.answers() or not process.alive(pid), timeout):
            process.terminate(pid)
            tail = process.log_tail(self.logfile)
            raise DatabaseProcessError(f"FerretDB did not answer within {timeout:.0f}s:\n{tail}")
        if not process.alive(pid):
            raise DatabaseProcessError(f"FerretDB exited at start:\n{process.log_tail(self.logfile)}")

    def stop(self) -> None:
        """Stop the server if it runs; the data stays."""
        pid = self.pid()
        if pid is not None:
            process.terminate(pid)
        self.pidfile.unlink(missing_ok=True)

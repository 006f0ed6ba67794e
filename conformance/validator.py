"""HAPI FHIR's validator and strict client, driven from Python.

The Java program lives in ``conformance/validator/`` (Maven, HAPI FHIR ``HAPI_VERSION``) and is built into the
git-ignored ``.local/validator/target/``: ``fhir-validator.jar`` plus its dependencies in ``lib/``. It has three
modes: ``serve`` (a long-lived validator listening on a loopback port), ``validate FILE...`` and
``client BASE_URL`` (the HAPI generic client with a strict parser run against a server).

- :func:`build` runs ``mvn -q -B package`` only when the Java sources changed or the jar is missing.
- :class:`Validator` starts the JVM once and validates bodies over HTTP on 127.0.0.1, from any number of threads.

Command line: ``python -m conformance.validator build | validate FILE... | client BASE_URL``.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import http.client
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
PROJECT = REPO / "conformance" / "validator"
OUT = REPO / ".local" / "validator"
TARGET = OUT / "target"
JAR = TARGET / "fhir-validator.jar"
LIB = TARGET / "lib"
RESOURCES_FIRST = TARGET / "resources-first"  # uncompressed copies of hot class-path resources (see pom.xml)
STAMP = OUT / "sources.sha256"
LOG = OUT / "validator.log"
MAIN_CLASS = "fhirserver.conformance.Main"
HAPI_VERSION = "8.8.0"  # keep equal to <hapi.version> in conformance/validator/pom.xml

Issue = dict[str, Any]
"""One validator message: ``severity`` (fatal, error, warning, information), ``code`` (HAPI's message id),
``message``, ``location`` (a FHIRPath-like location), ``line`` and ``col`` in the JSON text."""

ERROR_SEVERITIES = frozenset({"error", "fatal"})


@dataclass(frozen=True)
class Result:
    """One validation: the issues, and the JVM's wall and CPU milliseconds spent on it."""

    issues: list[Issue]
    ms: float
    cpu_ms: float


class ValidatorError(RuntimeError):
    """The harness could not be built, started or reached."""


class ValidatorTimeout(ValidatorError):
    """One validation took longer than allowed; the JVM thread doing it is still busy (restart to reclaim it)."""


def _sources() -> list[Path]:
    """Every file the build reads: the pom and the Java sources."""
    return [PROJECT / "pom.xml", *sorted(p for p in (PROJECT / "src").rglob("*") if p.is_file())]


def source_digest() -> str:
    """SHA-256 over the names and contents of the build's inputs."""
    h = hashlib.sha256()
    for path in _sources():
        h.update(str(path.relative_to(PROJECT)).encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


def is_built() -> bool:
    """True when the jar, its dependencies and the stamp of the current sources are all there."""
    return JAR.is_file() and LIB.is_dir() and STAMP.is_file() and STAMP.read_text().strip() == source_digest()


@contextmanager
def _build_lock() -> Iterator[None]:
    """One build at a time across processes (two pytest runs may start together)."""
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / ".build.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build(force: bool = False) -> Path:
    """Build the harness if its sources changed or the jar is missing; answer the jar's path.

    The first build downloads HAPI and its dependencies from Maven Central into ~/.m2 (about 190 MB).
    """
    if not force and is_built():
        return JAR
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ValidatorError("Maven (mvn) is not on PATH: it builds the HAPI validator harness")
    with _build_lock():
        if not force and is_built():
            return JAR
        digest = source_digest()
        proc = subprocess.run([mvn, "-q", "-B", "package"], cwd=PROJECT, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL)
        if proc.returncode != 0 or not JAR.is_file():
            raise ValidatorError(f"mvn package failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}")
        STAMP.write_text(digest + "\n")
    return JAR


def java_binary() -> str:
    """``$JAVA_HOME/bin/java`` when set, else ``java`` on PATH."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise ValidatorError("java is not on PATH (Java 17 or newer runs the HAPI validator harness)")
    return java


def java_command(*args: str, heap: str = "2g") -> list[str]:
    """The command line running the harness's Main with ``args``."""
    classpath = os.pathsep.join([str(RESOURCES_FIRST), str(JAR), str(LIB / "*")])
    return [java_binary(), f"-Xmx{heap}", "-Djava.awt.headless=true", "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
            "-cp", classpath, MAIN_CLASS, *args]


def client_command(base_url: str) -> list[str]:
    """The command running HAPI's generic client (strict parser) against the server at ``base_url``."""
    return java_command("client", base_url, heap="512m")


def _encode(body: bytes | str | dict) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return orjson.dumps(body)


class Validator:
    """HAPI's ``FhirInstanceValidator`` in a JVM started once, reached over HTTP on the loopback interface.

    ``validate`` is thread-safe: each call borrows a keep-alive connection from a small pool, and the JVM validates
    on as many threads as it was given. The first validation loads the R4 definitions (seconds); later ones take
    milliseconds. The JVM exits by itself when this process dies (it watches its standard input).
    """

    def __init__(self, *, threads: int | None = None, heap: str = "2g", log: Path = LOG,
                 start_timeout: float = 120.0, request_timeout: float = 300.0) -> None:
        self.threads = threads or max(1, os.cpu_count() or 1)
        self.heap = heap
        self.log = log
        self.start_timeout = start_timeout
        self.request_timeout = request_timeout
        self.port: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_seconds: float | None = None
        self._idle: queue.LifoQueue[http.client.HTTPConnection] = queue.LifoQueue()
        self._lock = threading.Lock()

    def __enter__(self) -> Validator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> float:
        """Build if needed, start the JVM and wait until it listens; answer the seconds the start took."""
        with self._lock:
            if self.proc is not None:
                return self.start_seconds or 0.0
            build()
            self.log.parent.mkdir(parents=True, exist_ok=True)
            began = time.monotonic()
            with open(self.log, "ab") as log:
                proc = subprocess.Popen(
                    java_command("serve", "--port", "0", "--threads", str(self.threads), heap=self.heap),
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, start_new_session=True)
            line: list[bytes] = []
            reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
            reader.start()
            reader.join(self.start_timeout)
            text = line[0].decode().strip() if line else ""
            if not text.startswith("LISTENING "):
                proc.kill()
                proc.wait()
                raise ValidatorError(f"validator did not start ({text!r}); see {self.log}:\n{self._log_tail()}")
            self.port = int(text.split()[1])
            self.proc = proc
            self.start_seconds = time.monotonic() - began
            return self.start_seconds

    def warm_up(self) -> float:
        """Validate a tiny Patient, which loads the R4 definitions; answer the seconds it took."""
        began = time.monotonic()
        self.check({"resourceType": "Patient", "gender": "female"}, timeout=max(self.request_timeout, 600.0))
        return time.monotonic() - began

    def validate(self, body: bytes | str | dict) -> list[Issue]:
        """The validator's issues for one FHIR JSON resource (any type, Bundles included)."""
        return self.check(body).issues

    def check(self, body: bytes | str | dict, timeout: float | None = None) -> Result:
        """Like :meth:`validate`, with the time the JVM spent; raises :class:`ValidatorTimeout` after ``timeout``
        seconds (default ``request_timeout``)."""
        if self.proc is None:
            self.start()
        data = _encode(body)
        limit = timeout or self.request_timeout
        for attempt in (1, 2):
            conn = self._borrow()
            try:
                if conn.sock is None:
                    conn.timeout = limit
                else:
                    conn.sock.settimeout(limit)
                conn.request("POST", "/validate", body=data, headers={"Content-Type": "application/fhir+json"})
                resp = conn.getresponse()
                payload = resp.read()
            except TimeoutError as exc:
                conn.close()
                raise ValidatorTimeout(f"no answer within {limit:.0f}s for a body of {len(data)} bytes") from exc
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if attempt == 2 or not self.alive():
                    raise ValidatorError(f"validator unreachable: {exc}; see {self.log}:\n{self._log_tail()}") from exc
                continue
            if resp.status != 200:
                conn.close()
                raise ValidatorError(f"validator answered {resp.status}: {payload[:500]!r}")
            self._idle.put(conn)
            answer = orjson.loads(payload)
            return Result(answer["issues"], answer["ms"], answer["cpuMs"])
        raise AssertionError("unreachable")

    def alive(self) -> bool:
        """True while the JVM runs."""
        return self.proc is not None and self.proc.poll() is None

    def close(self) -> None:
        """Stop the JVM (closing its standard input makes it exit, even mid-validation) and drop the connections."""
        with self._lock:
            while True:
                try:
                    self._idle.get_nowait().close()
                except queue.Empty:
                    break
            proc, self.proc = self.proc, None
            if proc is None:
                return
            try:
                if proc.stdin:
                    proc.stdin.close()
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            finally:
                if proc.stdout:
                    proc.stdout.close()

    def _borrow(self) -> http.client.HTTPConnection:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            return http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.request_timeout)

    def _log_tail(self, size: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-size:]
        except OSError:
            return ""


def has_errors(issues: Sequence[Issue]) -> bool:
    """True if any issue is an error or fatal."""
    return any(i.get("severity") in ERROR_SEVERITIES for i in issues)


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conformance.validator", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the Java harness if its sources changed")
    b.add_argument("--force", action="store_true", help="build even if up to date")
    v = sub.add_parser("validate", help="validate FHIR JSON files; exit 1 on any error")
    v.add_argument("files", nargs="+", type=Path)
    c = sub.add_parser("client", help="run HAPI's generic client (strict parser) against a running server")
    c.add_argument("base_url")
    args = parser.parse_args(argv)

    if args.command == "build":
        fresh = is_built() and not args.force
        began = time.monotonic()
        build(force=args.force)
        print("validator harness up to date" if fresh else
              f"validator harness built in {time.monotonic() - began:.1f}s: {JAR}")
        return 0
    if args.command == "client":
        build()
        return subprocess.run(client_command(args.base_url), stdin=subprocess.DEVNULL).returncode
    errors = 0
    with Validator() as validator:
        for path in args.files:
            for issue in validator.validate(path.read_bytes()):
                errors += issue["severity"] in ERROR_SEVERITIES
                print(f"{path}: {issue['severity']} {issue['location']}: {issue['message']} [{issue['code']}]")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(_main())

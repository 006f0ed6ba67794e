"""`fhirserver db start|status|stop` on SQLite and PostgreSQL, and data surviving a restart of everything."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from pymongo import MongoClient

from tests.servers import ferretdb_binary, free_port, serve


def _cli(state: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "FHIR_STATE_DIR": str(state), **env}
    full_env.pop("MONGODB_URI", None)
    return subprocess.run([sys.executable, "-m", "fhirserver.cli", "db", *args], env=full_env,
                          capture_output=True, text=True, timeout=300)


def _state_with_binary(tmp_path: Path) -> Path:
    """A state folder that reuses the project's FerretDB build instead of building again."""
    state = tmp_path / "state"
    (state / "bin").mkdir(parents=True)
    (state / "bin" / "ferretdb").symlink_to(ferretdb_binary())
    return state


def _status(state: Path, **env: str) -> tuple[int, dict]:
    done = _cli(state, "status", **env)
    return done.returncode, json.loads(done.stdout)


def test_start_status_stop_sqlite(tmp_path):
    state = _state_with_binary(tmp_path)
    port = str(free_port())
    started = _cli(state, "start", FHIR_DB_PORT=port)
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == f"mongodb://127.0.0.1:{port}/"
    try:
        code, info = _status(state, FHIR_DB_PORT=port)
        assert code == 0 and info["answers"] is True and info["backend"] == "sqlite"
        assert _cli(state, "start", FHIR_DB_PORT=port).returncode == 0  # idempotent
        with MongoClient(started.stdout.strip()) as client:
            client.fhirtest.probe.insert_one({"_id": "x"})
    finally:
        assert _cli(state, "stop", FHIR_DB_PORT=port).returncode == 0
    code, info = _status(state, FHIR_DB_PORT=port)
    assert code == 1 and info["answers"] is False and info["ferretdb_pid"] is None
    assert list((state / "ferretdb" / "sqlite" / "data").glob("*.sqlite")), "SQLite files are kept"


def test_data_survives_restart_of_server_and_database(tmp_path):
    state = _state_with_binary(tmp_path)
    port = str(free_port())
    uri = f"mongodb://127.0.0.1:{port}/"
    assert _cli(state, "start", FHIR_DB_PORT=port).returncode == 0
    server = serve(uri, tmp_path / "server.log")
    try:
        with MongoClient(uri) as client:
            client.fhirtest.probe.insert_one({"_id": "kept", "text": "6.30"})
    finally:
        server.stop()
        _cli(state, "stop", FHIR_DB_PORT=port)
    assert _cli(state, "start", FHIR_DB_PORT=port).returncode == 0
    server = serve(uri, tmp_path / "server2.log")
    try:
        with MongoClient(uri) as client:
            assert client.fhirtest.probe.find_one({"_id": "kept"}) == {"_id": "kept", "text": "6.30"}
    finally:
        server.stop()
        _cli(state, "stop", FHIR_DB_PORT=port)


def test_port_taken_by_another_server_is_a_clear_error(tmp_path, ferretdb):
    state = _state_with_binary(tmp_path)
    done = _cli(state, "start", FHIR_DB_PORT=str(ferretdb.port))
    assert done.returncode == 1
    assert "FHIR_DB_PORT" in done.stderr


@pytest.mark.skipif(os.geteuid() != 0 and not Path("/usr/lib/postgresql").exists(),
                    reason="PostgreSQL is installed by the tooling only as root")
def test_postgresql_backend(tmp_path):
    shared = Path(tempfile.mkdtemp(prefix="fhirserver-pg-"))  # PostgreSQL runs as its own user: no private parents
    shared.chmod(0o755)
    state = _state_with_binary(shared)
    env = {"FHIR_DB_BACKEND": "postgresql", "FHIR_DB_PORT": str(free_port()), "FHIR_PG_PORT": str(free_port())}
    started = _cli(state, "start", **env)
    assert started.returncode == 0, started.stderr
    try:
        code, info = _status(state, **env)
        assert code == 0 and info["backend"] == "postgresql" and info["postgresql_pid"]
        with MongoClient(started.stdout.strip()) as client:
            client.fhirtest.probe.insert_one({"_id": "pg", "n": 1})
            assert client.fhirtest.probe.find_one({"_id": "pg"})["n"] == 1
    finally:
        assert _cli(state, "stop", **env).returncode == 0
    code, info = _status(state, **env)
    assert code == 1 and info["postgresql_pid"] is None
    shutil.rmtree(shared, ignore_errors=True)

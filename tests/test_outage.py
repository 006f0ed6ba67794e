"""The database goes away under a running server: 503 OperationOutcomes, then recovery without a restart."""

from __future__ import annotations

import time

import requests

from tests.servers import serve, start_ferretdb


def _wait_status(url: str, status: int, timeout: float = 30.0) -> requests.Response:
    deadline = time.monotonic() + timeout
    while True:
        r = requests.get(url, timeout=10)
        if r.status_code == status or time.monotonic() > deadline:
            return r
        time.sleep(0.2)


def test_database_outage_gives_503_and_recovers(tmp_path):
    db = start_ferretdb(tmp_path / "db")
    server = serve(db.uri, tmp_path / "server.log", FHIR_DB_TIMEOUT="1")
    try:
        assert requests.get(f"{server.url}/readyz").status_code == 200
        db.stop()
        for url in (f"{server.url}/readyz", f"{server.base}/metadata"):
            r = _wait_status(url, 503)
            assert r.status_code == 503, url
            body = r.json()
            assert body["resourceType"] == "OperationOutcome"
            assert body["issue"][0]["code"] == "transient"
            assert "Traceback" not in r.text
            assert r.headers["Retry-After"]
        assert requests.get(f"{server.url}/healthz").status_code == 200  # alive, just not ready
        db.start()
        assert _wait_status(f"{server.url}/readyz", 200).status_code == 200
        assert requests.get(f"{server.base}/metadata").status_code == 200
    finally:
        server.stop()
        db.stop()


def test_server_starts_while_database_is_down_and_recovers(tmp_path):
    db = start_ferretdb(tmp_path / "db")
    db.stop()
    server = serve(db.uri, tmp_path / "server.log", FHIR_DB_TIMEOUT="1")
    try:
        assert requests.get(f"{server.url}/readyz").status_code == 503
        db.start()
        assert _wait_status(f"{server.url}/readyz", 200).status_code == 200
    finally:
        server.stop()
        db.stop()

"""Concurrent writers on a real server with several worker processes: none wins twice, none is lost."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.fhir import patient, post, put
from tests.servers import serve

WRITERS = 50


@pytest.fixture(scope="module")
def busy_server(ferretdb, tmp_path_factory):
    proc = serve(ferretdb.uri, tmp_path_factory.mktemp("busy") / "server.log", FHIR_WORKERS="4", FHIR_THREADS="8",
                 FHIR_DB_NAME="fhirrace")
    yield proc
    proc.stop()


def test_if_match_exactly_one_winner_per_version(busy_server):
    base = busy_server.base
    pid = post(base, "Patient", patient()).json()["id"]

    def write(n: int) -> int:
        return put(base, f"Patient/{pid}", patient(f"Writer{n}", id=pid), **{"If-Match": 'W/"1"'}).status_code

    with ThreadPoolExecutor(WRITERS) as pool:
        codes = list(pool.map(write, range(WRITERS)))
    assert codes.count(200) == 1, codes
    assert codes.count(412) == WRITERS - 1, codes
    assert requests.get(f"{base}/Patient/{pid}").json()["meta"]["versionId"] == "2"


def test_unconditional_writers_lose_nothing(busy_server):
    base = busy_server.base
    pid = post(base, "Patient", patient()).json()["id"]

    def write(n: int) -> int:
        return put(base, f"Patient/{pid}", patient(f"Writer{n}", id=pid)).status_code

    with ThreadPoolExecutor(WRITERS) as pool:
        codes = list(pool.map(write, range(WRITERS)))
    assert codes == [200] * WRITERS, codes
    current = requests.get(f"{base}/Patient/{pid}").json()
    assert current["meta"]["versionId"] == str(WRITERS + 1)
    hist = requests.get(f"{base}/Patient/{pid}/_history", params={"_count": 100}).json()
    versions = sorted(int(e["resource"]["meta"]["versionId"]) for e in hist["entry"])
    assert versions == list(range(1, WRITERS + 2))
    families = {e["resource"]["name"][0]["family"] for e in hist["entry"]}
    assert families == {f"Writer{n}" for n in range(WRITERS)} | {"Smith"}

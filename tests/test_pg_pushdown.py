"""Searches on FerretDB's PostgreSQL backend: equality filters reach SQL and use the GIN indexes kept beside FerretDB's.

A real PostgreSQL cluster, FerretDB on it (started as the server starts it, with nested pushdown) and the server.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from pymongo import MongoClient

from fhirserver.dbserver import FerretDB, PostgreSQL
from fhirserver.dbserver.pgindexes import index_name, mirror
from fhirserver.search.query import parse
from fhirserver.store.database import Store
from tests.fhir import post
from tests.servers import ServerProcess, ferretdb_binary, free_port, serve

DB = "pgpush"
LOINC = "http://loinc.org"


@pytest.fixture(scope="module")
def pg_world(tmp_path_factory) -> Iterator[tuple[PostgreSQL, FerretDB, ServerProcess]]:
    if not Path("/usr/lib/postgresql").exists():
        pytest.skip("PostgreSQL is not installed")
    shared = Path(tempfile.mkdtemp(prefix="fhirserver-pg-pushdown-"))  # PostgreSQL runs as its own user
    shared.chmod(0o755)
    pg = PostgreSQL(state=shared / "postgresql", port=free_port())
    ferret = FerretDB(binary=ferretdb_binary(), state=shared / "ferretdb", port=free_port(), handler="postgresql",
                      postgresql_url=pg.url("ferretdb"))
    server = None
    try:
        pg.start()
        pg.create_database("ferretdb")
        ferret.start()
        server = serve(ferret.uri, tmp_path_factory.mktemp("pg-server") / "server.log", FHIR_DB_NAME=DB)
        yield pg, ferret, server
    finally:
        if server is not None:
            server.stop()
        ferret.stop()
        pg.stop()
        shutil.rmtree(shared, ignore_errors=True)


def _observation(patient: str, code: str, day: int) -> dict:
    return {"resourceType": "Observation", "status": "final", "subject": {"reference": patient},
            "code": {"coding": [{"system": LOINC, "code": code}]}, "effectiveDateTime": f"2024-01-{day:02d}"}


def _load(base: str) -> dict[str, str]:
    patients = {}
    for name in ("Ames", "Baker", "Cole"):
        r = post(base, "Patient", {"resourceType": "Patient", "name": [{"family": name}]})
        assert r.status_code == 201, r.text
        patients[name] = r.json()["id"]
    entries = [{"resource": _observation(f"Patient/{pid}", code, day), "request": {"method": "POST",
                                                                                   "url": "Observation"}}
               for pid in patients.values() for code in ("718-7", "2345-7") for day in range(1, 11)]
    r = post(base, "", {"resourceType": "Bundle", "type": "transaction", "entry": entries})
    assert r.status_code == 200, r.text
    return patients


def test_reference_and_token_searches_compile_to_plain_equalities(pg_world):
    _, ferret, server = pg_world
    patients = _load(server.base)
    store = Store(ferret.uri, DB)
    try:
        parsed = parse("Observation", [("patient", patients["Ames"]), ("code", f"{LOINC}|718-7")], server.base,
                       finder=store.reader)
        # FerretDB pushes plain equalities down to SQL, never $in/$or/$and
        assert parsed.filter == {"del": False, "idx.patient": f"Patient/{patients['Ames']}",
                                 "idx.code": f"{LOINC}|718-7"}
    finally:
        store.close()
    r = requests.get(f"{server.base}/Observation", params={"patient": patients["Ames"], "code": f"{LOINC}|718-7",
                                                            "_sort": "-date"}, timeout=30)
    assert r.status_code == 200, r.text
    dates = [e["resource"]["effectiveDateTime"] for e in r.json()["entry"]]
    assert dates == [f"2024-01-{d:02d}" for d in range(10, 0, -1)]


def test_an_absolute_reference_brings_back_the_absolute_form(pg_world):
    _, ferret, server = pg_world
    r = post(server.base, "Patient", {"resourceType": "Patient", "name": [{"family": "Dunn"}]})
    pid = r.json()["id"]
    r = post(server.base, "Observation", _observation(f"{server.base}/Patient/{pid}", "718-7", 3))
    assert r.status_code == 201, r.text
    found = requests.get(f"{server.base}/Observation", params={"patient": f"Patient/{pid}"}, timeout=30).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [r.json()["id"]]
    store = Store(ferret.uri, DB)
    try:
        parsed = parse("Observation", [("patient", pid)], server.base, finder=store.reader)
        assert parsed.filter["idx.patient"] == {"$in": [f"Patient/{pid}", f"{server.base}/Patient/{pid}"]}
    finally:
        store.close()


def test_gin_indexes_mirror_ferretdb_indexes_and_serve_the_pushed_down_filter(pg_world):
    pg, ferret, server = pg_world
    if not requests.get(f"{server.base}/Observation", params={"_count": "1"}, timeout=30).json().get("entry"):
        _load(server.base)
    created = mirror(pg)
    assert mirror(pg) == []  # idempotent
    client = MongoClient(ferret.uri)
    try:
        tables = {line.split("|")[0]: line.split("|")[1] for line in pg.sql(
            f"SELECT _jsonb->>'_id', _jsonb->>'table' FROM {DB}._ferretdb_database_metadata", "ferretdb").split()}
        observation = tables["Observation"]
        assert index_name(observation, "_id") in created
        assert index_name(observation, "idx.patient") in created
        pg.sql(f"ANALYZE {DB}.{observation}", "ferretdb")
        pid = client[DB]["Patient"].find_one({}, {"_id": 1})["_id"]
        explain = client[DB].command("explain", {"find": "Observation",
                                                 "filter": {"del": False, "idx.patient": f"Patient/{pid}"}})
        assert explain.get("filterPushdown") is True, explain
        plan = pg.sql(f"SET enable_seqscan = off; EXPLAIN SELECT _jsonb FROM {DB}.{observation} "
                      f"WHERE _jsonb #> '{{idx,patient}}' @> '\"Patient/{pid}\"'", "ferretdb")
        assert index_name(observation, "idx.patient") in plan, plan
    finally:
        client.close()

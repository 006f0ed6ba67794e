"""The Synthea sample patients post as transactions and every resource reads back as it was sent."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from fhirserver import fhirjson
from tests.fhir import post
from tests.servers import REPO, serve

SYNTHEA = REPO.parent / "shared" / "data" / "synthea-r4"
FIRST = ["hospitalInformation1559319163815.json", "practitionerInformation1559319163815.json"]


def _bundles() -> list[Path]:
    if not SYNTHEA.exists():
        pytest.skip(f"sample data not found at {SYNTHEA}")
    patients = sorted(p for p in SYNTHEA.glob("*.json") if p.name not in FIRST)
    return [SYNTHEA / f for f in FIRST] + patients


def _rewrite(value, mapping: dict[str, str]):
    if isinstance(value, dict):
        return {k: _rewrite(v, mapping) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite(v, mapping) for v in value]
    return mapping.get(value, value) if isinstance(value, str) else value


def _strip(resource: dict) -> dict:
    return {k: v for k, v in resource.items() if k not in ("id", "meta")}


LOADED: dict[str, list[dict]] = {}  # resource type -> stored resources (set by the round-trip test)


@pytest.fixture(scope="module")
def server(ferretdb, tmp_path_factory):
    """A server on a database of its own: 2,351 resources would slow the shared one for every later test."""
    proc = serve(ferretdb.uri, tmp_path_factory.mktemp("synthea") / "server.log", FHIR_DB_NAME="synthea",
                 FHIR_DB_TIMEOUT="5")
    yield proc
    proc.stop()


def test_synthea_transactions_round_trip(server):
    files = _bundles()
    assert len(files) == 26
    total = 0
    started = time.perf_counter()
    for path in files:
        bundle = fhirjson.loads(path.read_bytes())
        r = post(server.base, "", path.read_bytes())
        assert r.status_code == 200, (path.name, r.text[:500])
        response = fhirjson.loads(r.content)
        assert response["type"] == "transaction-response"
        assert len(response["entry"]) == len(bundle["entry"])
        mapping: dict[str, str] = {}
        for sent, got in zip(bundle["entry"], response["entry"], strict=True):
            assert got["response"]["status"] == "201 Created"
            location = got["response"]["location"]
            rtype, rid = location.split("/fhir/", 1)[1].split("/")[:2]
            mapping[sent["fullUrl"]] = f"{rtype}/{rid}"
        for sent, got in zip(bundle["entry"], response["entry"], strict=True):
            location = got["response"]["location"].split("/_history/")[0]
            stored = fhirjson.loads(requests.get(location).content)
            assert stored["meta"]["versionId"] == "1"
            expected = _rewrite(_strip(sent["resource"]), mapping)
            assert _strip(stored) == expected, location
            LOADED.setdefault(stored["resourceType"], []).append(stored)
            total += 1
    elapsed = time.perf_counter() - started
    print(f"synthea: {total} resources in {len(files)} transactions, {elapsed:.1f}s including read-back")
    assert total == 2351


def _search_ids(server, rtype: str, **params) -> list[str]:
    """Every matching id in server order, following next links."""
    url, ids = f"{server.base}/{rtype}", []
    query: dict | None = {**params, "_count": "50"}
    while url:
        page = requests.get(url, params=query).json()
        ids += [e["resource"]["id"] for e in page.get("entry", []) if e["search"]["mode"] == "match"]
        url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
        query = None
    return ids


def _patient_of(resource: dict) -> str | None:
    ref = (resource.get("subject") or resource.get("patient") or {}).get("reference", "")
    return ref.split("/", 1)[1] if ref.startswith("Patient/") else None


def test_portal_searches_over_synthea(server):
    """The searches a portal makes, checked against the loaded data evaluated in plain Python."""
    if not LOADED:
        pytest.skip("needs the Synthea round trip")
    patients = [p["id"] for p in LOADED["Patient"]]
    observations = LOADED["Observation"]
    pid = max(patients, key=lambda p: sum(_patient_of(o) == p for o in observations))
    mine = [o for o in observations if _patient_of(o) == pid]
    loinc = max({c["code"] for o in mine for c in o["code"]["coding"]},
                key=lambda c: sum(any(x["code"] == c for x in o["code"]["coding"]) for o in mine))
    by_code = [o for o in mine if any(c["code"] == loinc and c["system"] == "http://loinc.org"
                                      for c in o["code"]["coding"])]
    got = _search_ids(server, "Observation", patient=pid, code=f"http://loinc.org|{loinc}", _sort="-date")
    dates = {o["id"]: o["effectiveDateTime"] for o in by_code}
    assert set(got) == set(dates) and len(got) == len(dates)
    assert [dates[i] for i in got] == sorted(dates.values(), reverse=True)

    labs = [o for o in mine if any(c.get("code") == "laboratory" for cat in o.get("category", [])
                                   for c in cat.get("coding", []))]
    years = sorted({o["effectiveDateTime"][:4] for o in labs})
    year = years[len(years) // 2]
    expected = {o["id"] for o in labs if o["effectiveDateTime"][:4] == year}
    got = _search_ids(server, "Observation", patient=pid, category="laboratory",
                      date=[f"ge{year}-01-01", f"lt{int(year) + 1}-01-01"])
    assert set(got) == expected

    encounters = [e for e in LOADED["Encounter"] if _patient_of(e) == pid]
    page = requests.get(f"{server.base}/Encounter", params={"patient": pid, "_include": "Encounter:practitioner",
                                                             "_count": "200"}).json()
    matched = {e["resource"]["id"] for e in page["entry"] if e["search"]["mode"] == "match"}
    included = {e["resource"]["id"] for e in page["entry"] if e["search"]["mode"] == "include"}
    assert matched == {e["id"] for e in encounters}
    wanted = {p["individual"]["reference"].split("/", 1)[1] for e in encounters for p in e.get("participant", [])
              if p.get("individual", {}).get("reference", "").startswith("Practitioner/")}
    assert included == wanted and wanted

    claims = [c for c in LOADED["Claim"] if _patient_of(c) == pid]
    cut = sorted(c["created"] for c in claims)[len(claims) // 2]
    got = _search_ids(server, "Claim", patient=pid, created=f"ge{cut}")
    assert set(got) == {c["id"] for c in claims if c["created"] >= cut}

    shots = [i for i in LOADED["Immunization"] if _patient_of(i) == pid]
    when = sorted(i["occurrenceDateTime"][:10] for i in shots)[0]
    got = _search_ids(server, "Immunization", patient=pid, date=when)
    assert set(got) == {i["id"] for i in shots if i["occurrenceDateTime"][:10] == when}

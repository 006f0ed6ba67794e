"""The Synthea sample patients post as transactions and every resource reads back as it was sent."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from fhirserver import fhirjson
from tests.fhir import post
from tests.servers import REPO

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
            total += 1
    elapsed = time.perf_counter() - started
    print(f"synthea: {total} resources in {len(files)} transactions, {elapsed:.1f}s including read-back")
    assert total == 2351

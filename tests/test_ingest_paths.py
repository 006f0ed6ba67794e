"""The shortcuts of the transaction ingest path give the same results as the long way.

- ``extract_index`` skips a parameter when the resource holds none of the top-level keys its expression starts
  from (``search/extract.py`` ``_plan``): checked against evaluating every parameter on the Synthea resources, and
  with those keys removed.
- ``_rewrite_strings`` (``interactions/transaction.py``) replaces fullUrls and conditional references everywhere
  in a copy and leaves the original alone.
- ``warm_up`` builds every supported type without a database.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fhirserver import fhirjson
from fhirserver.interactions.transaction import _rewrite_strings, warm_up
from fhirserver.search.extract import _plan, extract_index
from fhirserver.search.params import indexed_params

SYNTHEA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "synthea-r4"


@pytest.fixture(scope="module")
def resources() -> list[dict]:
    if not SYNTHEA.exists():
        pytest.skip(f"sample data not found at {SYNTHEA}")
    out = []
    for path in sorted(SYNTHEA.glob("*.json")):
        for n, entry in enumerate(fhirjson.loads(path.read_bytes())["entry"]):
            out.append({**entry["resource"], "id": f"r{n}", "meta": {"lastUpdated": "2024-01-02T03:04:05Z"}})
    return out


def _evaluate(param, resource: dict) -> list:
    try:
        return param.evaluate(resource, resource["resourceType"], resource)
    except Exception:  # noqa: BLE001 - extract_index skips such a parameter too
        return []


def test_skipped_parameters_have_no_values(resources):
    skipped = 0
    for resource in resources:
        rtype = resource["resourceType"]
        assert [p for p, _ in _plan(rtype)] == list(indexed_params(rtype))
        for param, keys in _plan(rtype):
            if keys is None:
                continue
            if keys.isdisjoint(resource):
                skipped += 1
                assert _evaluate(param, resource) == [], (rtype, param.code)
            else:  # without those keys the parameter finds nothing
                stripped = {k: v for k, v in resource.items() if k not in keys}
                assert _evaluate(param, stripped) == [], (rtype, param.code, sorted(keys))
    assert skipped > len(resources)  # the shortcut is taken: most resources skip several parameters


def test_index_unchanged_by_the_shortcut(resources, monkeypatch):
    with_shortcut = [extract_index(r) for r in resources[:400]]
    monkeypatch.setattr("fhirserver.search.extract._plan",
                        lambda rtype: tuple((p, None) for p in indexed_params(rtype)))
    assert [extract_index(r) for r in resources[:400]] == with_shortcut


def test_plan_keys_of_known_expressions():
    plan = {p.code: keys for p, keys in _plan("Observation")}
    assert plan["code"] == {"code"}
    assert plan["_id"] == {"id"}
    assert plan["date"] == {"effectiveDateTime", "effectivePeriod", "effectiveTiming", "effectiveInstant"}
    assert plan["combo-code"] == {"code", "component"}
    assert plan["gene-identifier"] == {"extension"}
    assert plan["code-value-quantity"] is None  # a composite on the resource itself is always evaluated
    patient = {p.code: keys for p, keys in _plan("Patient")}
    assert patient["deceased"] is None  # not a plain path: always evaluated


def test_rewrite_strings_copies_and_replaces_everywhere():
    original = {"subject": {"reference": "urn:uuid:1"}, "focus": [{"reference": "urn:uuid:2"}, "urn:uuid:1"],
                "note": [{"text": "urn:uuid:1 in text stays"}], "valueInteger": 3,
                "basedOn": [{"reference": "ServiceRequest?identifier=x"}], "url": "http://a?b=c"}
    asked: list[str] = []

    def conditional(value: str) -> str | None:
        asked.append(value)
        return "ServiceRequest/9" if value.startswith("ServiceRequest?") else None

    out = _rewrite_strings(original, {"urn:uuid:1": "Patient/a", "urn:uuid:2": "Group/b"}, conditional)
    assert out == {"subject": {"reference": "Patient/a"}, "focus": [{"reference": "Group/b"}, "Patient/a"],
                   "note": [{"text": "urn:uuid:1 in text stays"}], "valueInteger": 3,
                   "basedOn": [{"reference": "ServiceRequest/9"}], "url": "http://a?b=c"}
    assert original["subject"] == {"reference": "urn:uuid:1"}  # the Bundle's own resource is left as it was
    assert sorted(asked) == ["ServiceRequest?identifier=x", "http://a?b=c"]


def test_warm_up_needs_no_database():
    warm_up()
    assert extract_index({"resourceType": "Observation", "status": "final"})["status"] == ["final"]

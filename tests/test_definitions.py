"""Unit tests for conformance.definitions (official FHIR R4 definitions loader)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from conformance import definitions as defs

OBS_STATUS = "http://hl7.org/fhir/ValueSet/observation-status"
GENDER = "http://hl7.org/fhir/ValueSet/administrative-gender"


def _clear_caches() -> None:
    """Reset every functools cache of the loader module."""
    for value in vars(defs).values():
        if callable(getattr(value, "cache_clear", None)):
            value.cache_clear()


def test_observation_code_param() -> None:
    """Observation has a token ``code`` parameter on Observation.code."""
    param = defs.search_parameters_for("Observation")["code"]
    assert param["type"] == "token"
    assert "Observation.code" in param["expression"]


def test_resource_level_params_for_patient() -> None:
    """Resource-level parameters apply to Patient and are the official ones."""
    params = defs.search_parameters_for("Patient")
    assert params["_id"]["id"] == "Resource-id"
    assert params["_lastUpdated"]["type"] == "date"
    assert "gender" in params
    assert "part-agree" not in params  # spec example parameter is left out


def test_unknown_type_has_no_params() -> None:
    """An unknown type yields no parameters."""
    assert defs.search_parameters_for("NotAType") == {}


def test_search_parameters_all() -> None:
    """All 1,400 SearchParameters are available, without narrative."""
    params = defs.search_parameters()
    assert len(params) == 1400
    assert all("text" not in p for p in params)


def test_patient_compartment() -> None:
    """Patient compartment membership of Observation and Encounter."""
    obs = defs.compartment_params("Patient", "Observation")
    assert "subject" in obs and "performer" in obs
    assert defs.compartment_params("Patient", "Encounter")
    assert defs.compartment_params("Patient", "Bundle") == []
    assert defs.compartment_definition("Patient")["code"] == "Patient"


def test_unknown_compartment() -> None:
    """Unknown compartments raise KeyError."""
    with pytest.raises(KeyError):
        defs.compartment_definition("Nope")


def test_required_binding_observation_status() -> None:
    """Observation.status is bound (required) to observation-status."""
    assert defs.required_bindings("Observation")["Observation.status"] == OBS_STATUS
    assert defs.required_bindings("Quantity")["Quantity.comparator"].endswith("/quantity-comparator")
    assert defs.required_bindings("NotAType") == {}


def test_observation_status_codes() -> None:
    """observation-status enumerates from its CodeSystem, with or without version."""
    codes = defs.valueset_codes(OBS_STATUS)
    assert codes is not None
    assert ("http://hl7.org/fhir/observation-status", "final") in codes
    assert all(code != "banana" for _, code in codes)
    assert defs.valueset_codes(OBS_STATUS + "|4.0.1") == codes
    assert defs.valueset_contains(OBS_STATUS, "final") is True
    assert defs.valueset_contains(OBS_STATUS, "banana") is False
    assert defs.valueset_contains(OBS_STATUS, "final", "http://example.org/other") is False


def test_administrative_gender() -> None:
    """administrative-gender has exactly its four codes."""
    codes = defs.valueset_codes(GENDER)
    assert codes is not None
    assert {c for _, c in codes} == {"male", "female", "other", "unknown"}
    assert defs.valueset_contains(GENDER, "female", "http://hl7.org/fhir/administrative-gender") is True


def test_not_enumerable_value_sets() -> None:
    """Sets over external code systems (BCP-47, BCP-13, UCUM) give None."""
    for url in (
        "http://hl7.org/fhir/ValueSet/all-languages",
        "http://hl7.org/fhir/ValueSet/mimetypes",
        "http://hl7.org/fhir/ValueSet/ucum-units",
        "http://example.org/ValueSet/unknown",
    ):
        assert defs.valueset_codes(url) is None
        assert defs.valueset_contains(url, "en") is None


def test_resource_types() -> None:
    """146 concrete resource types, abstract ones excluded."""
    types = defs.resource_types()
    assert len(types) == 146
    assert "Patient" in types
    assert "Resource" not in types and "DomainResource" not in types


def test_all_required_bindings_resolve_or_are_known_gaps() -> None:
    """Every required-binding value set is enumerable except the documented gaps."""
    data = json.loads((defs.DATA_DIR / "required-bindings.json").read_text(encoding="utf-8"))
    urls = {url for per_type in data.values() for url in per_type.values()}
    missing = {url for url in urls if defs.valueset_codes(url) is None}
    assert missing == {
        "http://hl7.org/fhir/ValueSet/currencies",
        "http://hl7.org/fhir/ValueSet/mimetypes",
        "http://hl7.org/fhir/ValueSet/ucum-units",
        "http://loinc.org/vs/LL379-9",
    }


@pytest.fixture
def synthetic_terminology(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Point the loader at a small hand-made terminology bundle."""
    system = "http://example.org/cs"
    codesystem = {
        "resourceType": "CodeSystem", "id": "cs", "url": system, "content": "complete",
        "concept": [
            {"code": "a", "concept": [{"code": "a1", "concept": [{"code": "a11"}]}, {"code": "a2"}]},
            {"code": "b", "property": [{"code": "status", "valueCode": "retired"}]},
            {"code": "c", "property": [{"code": "parent", "valueCode": "b"}]},
        ],
    }

    def valueset(vid: str, compose: dict) -> dict:
        return {"resourceType": "ValueSet", "id": vid, "url": f"http://example.org/vs/{vid}",
                "compose": compose}

    resources = [
        codesystem,
        valueset("all", {"include": [{"system": system}]}),
        valueset("isa", {"include": [{"system": system, "filter": [
            {"property": "concept", "op": "is-a", "value": "a"}]}]}),
        valueset("desc", {"include": [{"system": system, "filter": [
            {"property": "concept", "op": "descendent-of", "value": "a"}]}]}),
        valueset("eq", {"include": [{"system": system, "filter": [
            {"property": "status", "op": "=", "value": "retired"}]}]}),
        valueset("nested", {"include": [{"valueSet": ["http://example.org/vs/all|1"]}],
                            "exclude": [{"system": system, "concept": [{"code": "a"}]}]}),
        valueset("prop-tree", {"include": [{"system": system, "filter": [
            {"property": "concept", "op": "is-a", "value": "b"}]}]}),
        valueset("bad", {"include": [{"system": "urn:ietf:bcp:47"}]}),
    ]
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}
    (tmp_path / "terminology.json").write_text(json.dumps(bundle), encoding="utf-8")
    monkeypatch.setattr(defs, "DATA_DIR", tmp_path)
    _clear_caches()
    yield
    _clear_caches()


@pytest.mark.usefixtures("synthetic_terminology")
def test_compose_features() -> None:
    """Filters, nested concepts, property hierarchy, include valueSet and exclude."""

    def codes(vid: str) -> set[str] | None:
        found = defs.valueset_codes(f"http://example.org/vs/{vid}")
        return None if found is None else {c for _, c in found}

    assert codes("all") == {"a", "a1", "a11", "a2", "b", "c"}
    assert codes("isa") == {"a", "a1", "a11", "a2"}
    assert codes("desc") == {"a1", "a11", "a2"}
    assert codes("eq") == {"b"}
    assert codes("nested") == {"a1", "a11", "a2", "b", "c"}
    assert codes("prop-tree") == {"b", "c"}
    assert codes("bad") is None

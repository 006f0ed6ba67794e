"""Unit tests for search index extraction (fhirserver.search.params / extract); no database needed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import fhirpathpy
import pytest
from fhirpathpy.models import models

from fhirserver.search.extract import (
    compartments,
    date_range,
    extract_index,
    normalize_string,
    number_range,
    variant_key,
)
from fhirserver.search.params import branches_for, params_for, resolve_stub, split_union
from fhirserver.store.variants import counts_in as variant_counts

SYNTHEA = Path(__file__).resolve().parents[2] / "shared" / "data" / "synthea-r4"


def _observation(**extra: Any) -> dict:
    """A small Observation; keyword arguments are added to it."""
    resource = {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {
            "coding": [{"system": "http://loinc.org", "code": "1234-5", "display": "Glucose"}],
            "text": "Glucose  Level",
        },
        "subject": {"reference": "Patient/x"},
        "encounter": {"reference": "Encounter/e1"},
        "performer": [{"reference": "Practitioner/dr1"}, {"reference": "#contained1"}],
        "effectiveDateTime": "2024-03-05T10:15:30+02:00",
        "valueQuantity": {
            "value": Decimal("1.50"),
            "unit": "mmol/L",
            "system": "http://unitsofmeasure.org",
            "code": "mmol/L",
        },
    }
    resource.update(extra)
    return resource


def _utc(*args: int) -> datetime:
    """A UTC datetime."""
    return datetime(*args, tzinfo=UTC)


# ---------------------------------------------------------------------------
# Registry


def test_split_union_respects_parentheses_and_strings() -> None:
    """``|`` inside where(...), brackets or a string literal does not split."""
    expr = "A.b.where(x = 'a|b') | (A.c as Quantity) | A.d.where(e.f | g)"
    assert split_union(expr) == ["A.b.where(x = 'a|b')", "(A.c as Quantity)", "A.d.where(e.f | g)"]


def test_branches_for_keeps_own_type_only() -> None:
    """Branches of other types are dropped; Resource-level and relative branches stay."""
    expr = "AllergyIntolerance.code | (Observation.effective as dateTime) | Condition.code"
    assert branches_for(expr, "Observation") == ["(Observation.effective as dateTime)"]
    assert branches_for("Resource.id", "Patient") == ["Resource.id"]
    assert branches_for("name | alias", "InsurancePlan") == ["name", "alias"]


def test_registry_types_and_skips() -> None:
    """Parameters carry their type, targets and components; special/no-expression ones are skipped."""
    obs = params_for("Observation")
    assert obs["code"].type == "token" and obs["code"].expression == "Observation.code"
    assert "Patient" in obs["patient"].targets
    assert obs["code"].fast and obs["patient"].fast and obs["date"].fast
    assert [c.code for c in obs["code-value-quantity"].components] == ["code", "value-quantity"]
    assert {"_text", "_content", "_query", "_filter", "_has", "_list"}.isdisjoint(obs)
    assert "near" not in params_for("Location")
    assert not params_for("Patient")["deceased"].fast  # fhirpathpy fallback


# ---------------------------------------------------------------------------
# Value helpers


def test_normalize_string() -> None:
    """Case and accents folded, whitespace collapsed."""
    assert normalize_string("Müller") == "muller"
    assert normalize_string("  José   MARÍA ") == "jose maria"
    assert normalize_string("Straße") == "strasse"


def test_date_range_precision_and_timezone() -> None:
    """Partial values cover their whole range; offsets are converted to UTC; no timezone means UTC."""
    assert date_range("2024") == (_utc(2024, 1, 1), _utc(2024, 12, 31, 23, 59, 59, 999999))
    assert date_range("2024-02") == (_utc(2024, 2, 1), _utc(2024, 2, 29, 23, 59, 59, 999999))
    assert date_range("2023-12-31") == (_utc(2023, 12, 31), _utc(2023, 12, 31, 23, 59, 59, 999999))
    assert date_range("2024-03-05T10:15:30+02:00") == (
        _utc(2024, 3, 5, 8, 15, 30),
        _utc(2024, 3, 5, 8, 15, 30, 999999),
    )
    assert date_range("2024-03-05T10:15:30.25Z") == (
        _utc(2024, 3, 5, 10, 15, 30, 250000),
        _utc(2024, 3, 5, 10, 15, 30, 259999),
    )
    assert date_range("9999-12-31")[1] == _utc(9999, 12, 31, 23, 59, 59, 999999)
    assert date_range("9999-12-31T23:00:00-05:00")[1] == _utc(9999, 12, 31, 23, 59, 59, 999999)
    assert date_range("0001-01-01T00:00:00+05:00")[0] == _utc(1, 1, 1)
    assert date_range("2024-02-30") is None
    assert date_range("yesterday") is None


def test_number_range() -> None:
    """The implicit precision range of the written value."""
    assert number_range(100) == (100.0, 99.5, 100.5)
    assert number_range(Decimal("1.50")) == (1.5, 1.495, 1.505)
    assert number_range(True) is None


# ---------------------------------------------------------------------------
# Extraction


def test_observation_code_tokens() -> None:
    """system|code, code and system| tokens; display and text for :text."""
    idx = extract_index(_observation())
    assert idx["code"] == ["1234-5", "http://loinc.org|", "http://loinc.org|1234-5"]
    assert idx["code:text"] == ["glucose", "glucose level"]
    assert idx["status"] == ["final"]
    assert idx["_id"] == ["o1"]


def test_token_without_system() -> None:
    """A coding without a system gives |code and code."""
    idx = extract_index(_observation(category=[{"coding": [{"code": "lab"}]}]))
    assert idx["category"] == ["lab", "|lab"]


def test_observation_references() -> None:
    """subject/patient as Type/id, contained references skipped, resolve() by the written type."""
    idx = extract_index(_observation())
    assert idx["subject"] == ["Patient/x"]
    assert idx["patient"] == ["Patient/x"]
    assert idx["performer"] == ["Practitioner/dr1"]
    assert idx["encounter"] == ["Encounter/e1"]
    group = extract_index(_observation(subject={"reference": "Group/g1"}))
    assert group["subject"] == ["Group/g1"] and "patient" not in group


def test_reference_forms() -> None:
    """Versions are dropped; absolute URLs are kept as written, never as a local Type/id (no compartment leak)."""
    obs = _observation(subject={"reference": "http://other.org/fhir/Patient/p2/_history/3"})
    idx = extract_index(obs)
    assert idx["subject"] == ["http://other.org/fhir/Patient/p2"]
    assert idx["patient"] == ["http://other.org/fhir/Patient/p2"]
    assert not [c for c in compartments("Observation", "o1", idx) if c.startswith("Patient/")]
    idx = extract_index(_observation(subject={"reference": "Patient/x/_history/2"}))
    assert idx["subject"] == ["Patient/x"]


def _values(idx: dict, code: str) -> list:
    """The values of a range or composite parameter, gathered from its variant keys (code, code~1, ...)."""
    out, n = [], 0
    while variant_key(code, n) in idx:
        out.append(idx[variant_key(code, n)])
        n += 1
    return out


def test_variant_keys_hold_one_value_each() -> None:
    """Several dates of one parameter spread over date, date~1, ...; their counts are reported."""
    timing = _observation(effectivePeriod={"start": "2024-01-01", "end": "2024-01-02"})
    del timing["effectiveDateTime"]
    idx = extract_index(timing)
    assert isinstance(idx["date"], dict) and variant_counts(idx) == {}
    two = {"resourceType": "Immunization", "id": "i", "status": "completed", "patient": {"reference": "Patient/x"},
           "vaccineCode": {"text": "x"}, "occurrenceDateTime": "2024-01-01",
           "reaction": [{"date": "2024-02-01"}, {"date": "2024-03-01"}]}
    idx = extract_index(two)
    assert variant_counts(idx) == {"reaction-date": 2}
    assert [v["lo"].month for v in _values(idx, "reaction-date")] == [2, 3]


def test_value_quantity() -> None:
    """value-quantity objects with the precision range, system, code and unit."""
    idx = extract_index(_observation())
    assert _values(idx, "value-quantity") == [
        {"v": 1.5, "lo": 1.495, "hi": 1.505, "s": "http://unitsofmeasure.org", "c": "mmol/L", "u": "mmol/L"}
    ]


def test_date_of_datetime_and_partial_date() -> None:
    """The date parameter of a dateTime with offset, and of a partial date."""
    idx = extract_index(_observation())
    assert _values(idx, "date") == [{"lo": _utc(2024, 3, 5, 8, 15, 30), "hi": _utc(2024, 3, 5, 8, 15, 30, 999999)}]
    idx = extract_index(_observation(effectiveDateTime="2024-03"))
    assert _values(idx, "date") == [{"lo": _utc(2024, 3, 1), "hi": _utc(2024, 3, 31, 23, 59, 59, 999999)}]


def test_effective_period_and_last_updated() -> None:
    """effectivePeriod as a range; meta.lastUpdated, tags and profiles as Resource-level parameters."""
    meta = {
        "lastUpdated": "2024-05-01T12:00:00.123Z",
        "tag": [{"system": "http://t", "code": "x"}],
        "profile": ["http://p/StructureDefinition/obs"],
        "source": "http://src#1",
    }
    resource = _observation(meta=meta, effectivePeriod={"start": "2024-01-01"})
    del resource["effectiveDateTime"]
    idx = extract_index(resource)
    assert _values(idx, "date") == [{"lo": _utc(2024, 1, 1), "hi": _utc(9999, 12, 31, 23, 59, 59, 999999)}]
    last_updated = {"lo": _utc(2024, 5, 1, 12, 0, 0, 123000), "hi": _utc(2024, 5, 1, 12, 0, 0, 123999)}
    assert _values(idx, "_lastUpdated") == [last_updated]
    assert idx["_tag"] == ["http://t|", "http://t|x", "x"]
    assert idx["_profile"] == ["http://p/StructureDefinition/obs"]
    assert idx["_source"] == ["http://src#1"]


def test_patient_name_birthdate_identifier() -> None:
    """Names normalized per part with exact originals; birthdate range; identifier :of-type and :text."""
    patient = {
        "resourceType": "Patient",
        "id": "p1",
        "name": [{"family": "Müller", "given": ["Zoë", "Anne"], "prefix": ["Dr."]}],
        "birthDate": "1980-07-14",
        "gender": "female",
        "active": True,
        "telecom": [{"system": "phone", "value": "555-1234"}, {"system": "email", "value": "z@example.org"}],
        "address": [{"line": ["1 Rue Île"], "city": "Zürich", "postalCode": "8000", "country": "CH"}],
        "identifier": [
            {
                "system": "http://hospital.example/mrn",
                "value": "MRN-7",
                "type": {
                    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}],
                    "text": "Medical Record Number",
                },
            }
        ],
    }
    idx = extract_index(patient)
    assert idx["family"] == ["muller"] and idx["family:exact"] == ["Müller"]
    assert idx["given"] == ["anne", "zoe"]
    assert idx["name"] == ["anne", "dr.", "muller", "zoe"]
    assert idx["address-city"] == ["zurich"]
    assert "1 rue ile" in idx["address"]
    assert _values(idx, "birthdate") == [{"lo": _utc(1980, 7, 14), "hi": _utc(1980, 7, 14, 23, 59, 59, 999999)}]
    assert idx["gender"] == ["female"] and idx["active"] == ["true"]
    assert idx["phone"] == ["555-1234"] and idx["email"] == ["z@example.org"]
    assert idx["identifier"] == ["MRN-7", "http://hospital.example/mrn|", "http://hospital.example/mrn|MRN-7"]
    assert idx["identifier:of-type"] == ["http://terminology.hl7.org/CodeSystem/v2-0203|MR|MRN-7"]
    assert idx["identifier:text"] == ["medical record number"]
    assert idx["deceased"] == ["false"]
    assert extract_index({**patient, "deceasedDateTime": "2020-01-01"})["deceased"] == ["true"]


def test_encounter_period() -> None:
    """Encounter date from its period; class (a Coding) as tokens."""
    encounter = {
        "resourceType": "Encounter",
        "id": "e1",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": "Patient/x"},
        "participant": [{"individual": {"reference": "Practitioner/dr1"}}],
        "period": {"start": "2024-01-02T09:00:00Z", "end": "2024-01-02T09:30:00Z"},
    }
    idx = extract_index(encounter)
    assert _values(idx, "date") == [{"lo": _utc(2024, 1, 2, 9), "hi": _utc(2024, 1, 2, 9, 30, 0, 999999)}]
    assert "http://terminology.hl7.org/CodeSystem/v3-ActCode|AMB" in idx["class"]
    assert idx["practitioner"] == ["Practitioner/dr1"]
    assert compartments("Encounter", "e1", idx) == ["Encounter/e1", "Patient/x", "Practitioner/dr1"]


def test_composite_code_value_quantity() -> None:
    """One object per element with each component's values in its own format."""
    idx = extract_index(_observation())
    assert _values(idx, "code-value-quantity") == [
        {
            "code": ["1234-5", "http://loinc.org|", "http://loinc.org|1234-5"],
            "value-quantity": {
                "v": 1.5, "lo": 1.495, "hi": 1.505, "s": "http://unitsofmeasure.org", "c": "mmol/L", "u": "mmol/L"
            },
        }
    ]
    assert "code-value-concept" not in idx


def test_composite_components_per_element() -> None:
    """Observation.component elements pair their own code and value; the value.as(DateTime) component works."""
    bp = _observation(
        component=[
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]}, "valueQuantity": {"value": 120}},
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]}, "valueQuantity": {"value": 80}},
            {"code": {"coding": [{"system": "http://loinc.org", "code": "x"}]}},
        ]
    )
    pairs = _values(extract_index(bp), "component-code-value-quantity")
    assert [(p["component-code"][0], p["component-value-quantity"]["v"]) for p in pairs] == [
        ("8480-6", 120.0),
        ("8462-4", 80.0),
    ]
    dated = _observation(valueDateTime="2024-01-01")
    del dated["valueQuantity"]
    assert extract_index(dated)["code-value-date"]["value-date"] == {
        "lo": _utc(2024, 1, 1), "hi": _utc(2024, 1, 1, 23, 59, 59, 999999)
    }


def test_money_and_timing() -> None:
    """Money as a quantity with the currency as code; Timing by its outer limits."""
    charge = {
        "resourceType": "ChargeItem",
        "id": "ch1",
        "priceOverride": {"value": Decimal("12.5"), "currency": "USD"},
        "factorOverride": Decimal("0.80"),
    }
    assert _values(extract_index(charge), "price-override") == [
        {"v": 12.5, "lo": 12.45, "hi": 12.55, "s": "urn:iso:std:iso:4217", "c": "USD", "u": ""}
    ]
    assert _values(extract_index(charge), "factor-override") == [{"v": 0.8, "lo": 0.795, "hi": 0.805}]
    timing = _observation(effectiveTiming={"event": ["2024-01-05", "2024-01-01T10:00:00Z"]})
    del timing["effectiveDateTime"]
    outer = {"lo": _utc(2024, 1, 1, 10), "hi": _utc(2024, 1, 5, 23, 59, 59, 999999)}
    assert _values(extract_index(timing), "date") == [outer]


def test_compartments_of_observation_and_patient() -> None:
    """Observation: its patient, performer and encounter; a Patient: itself."""
    idx = extract_index(_observation())
    assert compartments("Observation", "o1", idx) == ["Encounter/e1", "Patient/x", "Practitioner/dr1"]
    patient = {
        "resourceType": "Patient",
        "id": "p1",
        "link": [{"other": {"reference": "Patient/p0"}, "type": "seealso"}],
    }
    assert compartments("Patient", "p1", extract_index(patient)) == ["Patient/p0", "Patient/p1"]


def test_walker_matches_fhirpathpy() -> None:
    """The path walker gives what fhirpathpy gives for the same branches."""
    resource = _observation(
        component=[{"code": {"text": "c"}, "valueString": "s"}],
        category=[{"coding": [{"system": "http://x", "code": "lab"}]}],
    )
    options = {"userInvocationTable": {"resolve": {"fn": resolve_stub, "arity": {0: []}}}}
    for code, param in params_for("Observation").items():
        if param.type == "composite":
            continue
        mine = sorted(
            json.dumps(v, sort_keys=True, default=str) for v, _ in param.evaluate(resource, "Observation", resource)
        )
        if param.expression.startswith("Resource."):
            continue  # fhirpathpy does not treat Observation as a Resource
        ref = fhirpathpy.compile(param.expression, models["r4"], options)(resource, {"resource": resource})
        theirs = sorted(json.dumps(v, sort_keys=True, default=str) for v in ref)
        assert sorted(set(mine)) == sorted(set(theirs)), code


# ---------------------------------------------------------------------------
# Synthea: every resource, FerretDB-safe format


def _synthea_resources() -> Iterator[dict]:
    """Every resource of the sample bundles, numbers as Decimal."""
    for path in sorted(SYNTHEA.glob("*.json")):
        bundle = json.loads(path.read_text(encoding="utf-8"), parse_float=Decimal)
        for entry in bundle.get("entry", []):
            yield entry["resource"]


def _assert_storable(value: Any, where: str, in_array: bool = False) -> None:
    """No array directly in an array; keys without '.' or leading '$'; only BSON-friendly scalar types."""
    if isinstance(value, list):
        assert not in_array, f"array inside array at {where}"
        for i, item in enumerate(value):
            _assert_storable(item, f"{where}[{i}]", in_array=True)
    elif isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, str) and "." not in key and not key.startswith("$"), f"bad key {key!r} at {where}"
            _assert_storable(item, f"{where}.{key}")
    else:
        assert isinstance(value, str | float | datetime), f"{type(value).__name__} at {where}"
        if isinstance(value, datetime):
            assert value.tzinfo is not None


@pytest.mark.skipif(not SYNTHEA.is_dir(), reason="Synthea sample data not present")
def test_synthea_index_has_no_nested_arrays() -> None:
    """Every Synthea resource extracts without error into a storable index."""
    count = 0
    for resource in _synthea_resources():
        idx = extract_index(resource)
        assert idx["_id"] == [resource["id"]]
        _assert_storable(idx, f"{resource['resourceType']}/{resource['id']}")
        comps = compartments(resource["resourceType"], resource["id"], idx)
        assert comps == sorted(set(comps))
        count += 1
    assert count > 2000

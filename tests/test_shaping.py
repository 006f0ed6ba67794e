"""Unit tests for fhirserver.interactions.shaping (_summary and _elements); no database needed."""

from __future__ import annotations

import copy
from decimal import Decimal

import pytest

from conformance.definitions import element_definitions
from fhirserver.errors import BadRequest
from fhirserver.interactions.shaping import SUBSETTED, parse_elements, parse_summary, shape

NARRATIVE = {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'}


def patient() -> dict:
    """A Patient with summary and non-summary elements, a primitive extension and a backbone."""
    return {
        "resourceType": "Patient",
        "id": "p1",
        "meta": {"versionId": "2", "tag": [{"system": "http://example.org/tags", "code": "keep"}]},
        "text": NARRATIVE,
        "identifier": [{"system": "urn:oid:1.2.3", "value": "12345"}],
        "active": True,
        "name": [{"family": "Chalmers", "given": ["Peter", "James"]}],
        "gender": "male",
        "birthDate": "1974-12-25",
        "_birthDate": {"extension": [{"url": "http://example.org/birthTime", "valueDateTime": "1974-12-25T14:35:45"}]},
        "maritalStatus": {"text": "married"},
        "contact": [{"relationship": [{"text": "partner"}], "name": {"family": "du Marché"}}],
        "link": [{"id": "l1", "other": {"reference": "Patient/p2"}, "type": "seealso"}],
        "contained": [{"resourceType": "Organization", "id": "o1", "name": "Org"}],
        "extension": [{"url": "http://example.org/ext", "valueString": "x"}],
    }


def observation() -> dict:
    """An Observation with a Quantity value (Decimal), components, notes and a reference range."""
    return {
        "resourceType": "Observation",
        "id": "o1",
        "text": NARRATIVE,
        "status": "final",
        "category": [{"text": "vital-signs"}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2024-01-02T10:00:00Z",
        "valueQuantity": {"value": Decimal("120.50"), "unit": "mmHg"},
        "note": [{"text": "sitting"}],
        "interpretation": [{"text": "normal"}],
        "referenceRange": [{"low": {"value": Decimal("90")}}],
        "component": [
            {
                "code": {"text": "systolic"},
                "valueQuantity": {"value": Decimal("120.50")},
                "interpretation": [{"text": "normal"}],
                "extension": [{"url": "http://example.org/c", "valueBoolean": True}],
            }
        ],
    }


def tags(resource: dict) -> list[dict]:
    """The meta.tag list of a resource (empty if none)."""
    return resource.get("meta", {}).get("tag", [])


def test_flags_used_by_these_tests_are_the_official_ones() -> None:
    """The expectations below rest on these R4 isSummary/min flags."""
    pat, obs = element_definitions("Patient"), element_definitions("Observation")
    assert all(pat[n]["summary"] for n in ("identifier", "name", "gender", "birthDate", "link", "link.other"))
    assert not any(pat[n]["summary"] for n in ("text", "contact", "maritalStatus", "contained", "extension"))
    assert all(obs[n]["summary"] for n in ("status", "code", "subject", "effective[x]", "value[x]", "component"))
    assert not any(obs[n]["summary"] for n in ("note", "category", "interpretation", "referenceRange"))
    assert not obs["component.interpretation"]["summary"] and obs["component.code"]["summary"]
    assert obs["status"]["min"] == obs["code"]["min"] == 1
    assert obs["component.referenceRange"]["ref"] == "referenceRange"
    assert element_definitions("NoSuchType") == {}


def test_patient_summary_true() -> None:
    """Summary elements kept, the rest dropped, SUBSETTED added next to existing tags."""
    out = shape(patient(), "true")
    assert set(out) == {"resourceType", "id", "meta", "identifier", "active", "name", "gender", "birthDate",
                        "_birthDate", "link"}
    assert out["name"] == [{"family": "Chalmers", "given": ["Peter", "James"]}]  # datatypes kept whole
    assert out["link"] == [{"other": {"reference": "Patient/p2"}, "type": "seealso"}]  # link.id not summary
    assert tags(out) == [{"system": "http://example.org/tags", "code": "keep"}, SUBSETTED]
    assert out["meta"]["versionId"] == "2"


def test_observation_summary_true() -> None:
    """Observation keeps code/status/subject/effective/value; backbone children filtered by their flags."""
    out = shape(observation(), "true")
    assert set(out) == {"resourceType", "id", "meta", "status", "code", "subject", "effectiveDateTime",
                        "valueQuantity", "component"}
    assert out["valueQuantity"]["value"] == Decimal("120.50")
    assert isinstance(out["valueQuantity"]["value"], Decimal)
    assert out["component"] == [{"code": {"text": "systolic"}, "valueQuantity": {"value": Decimal("120.50")}}]
    assert SUBSETTED in tags(out)


def test_summary_text_keeps_text_and_mandatory() -> None:
    """text mode: text, id, meta and the mandatory status and code."""
    out = shape(observation(), "text")
    assert set(out) == {"resourceType", "id", "meta", "text", "status", "code"}
    assert out["text"] == NARRATIVE
    assert tags(out) == [SUBSETTED]


def test_summary_data_drops_only_text() -> None:
    """data mode: everything but text, tagged."""
    original = observation()
    out = shape(original, "data")
    expected = {k: v for k, v in original.items() if k != "text"}
    assert {k: v for k, v in out.items() if k != "meta"} == expected
    assert tags(out) == [SUBSETTED]


def test_summary_false_and_none_unchanged() -> None:
    """No subsetting mode returns the resource as it is."""
    original = patient()
    assert shape(original, "false") is original
    assert shape(original) is original
    assert shape(original, None, []) is original


def test_summary_count_is_not_shaping() -> None:
    """Counting is the caller's business."""
    with pytest.raises(ValueError):
        shape(patient(), "count")


def test_elements_status_code() -> None:
    """_elements=status,code on Observation keeps them plus resourceType/id/meta."""
    out = shape(observation(), elements=parse_elements("status,code"))
    assert set(out) == {"resourceType", "id", "meta", "status", "code"}
    assert tags(out) == [SUBSETTED]


def test_elements_mandatory_always_returned() -> None:
    """Mandatory top-level elements come back even when not asked for."""
    out = shape(observation(), elements=["subject"])
    assert set(out) == {"resourceType", "id", "meta", "status", "code", "subject"}


def test_elements_choice_name() -> None:
    """_elements=value keeps valueQuantity (and effective keeps effectiveDateTime)."""
    out = shape(observation(), elements=["value", "effective"])
    assert out["valueQuantity"] == {"value": Decimal("120.50"), "unit": "mmHg"}
    assert out["effectiveDateTime"] == "2024-01-02T10:00:00Z"
    assert "note" not in out and "component" not in out


def test_elements_unknown_names_ignored() -> None:
    """Names the type does not define change nothing beyond the always-kept elements."""
    out = shape(patient(), elements=["nonsense"])
    assert set(out) == {"resourceType", "id", "meta"}


def test_elements_wins_over_summary() -> None:
    """With both parameters, _elements decides."""
    out = shape(observation(), "text", ["note"])
    assert set(out) == {"resourceType", "id", "meta", "status", "code", "note"}


def test_primitive_extension_follows_element() -> None:
    """_birthDate is kept exactly when birthDate is."""
    assert "_birthDate" in shape(patient(), elements=["birthDate"])
    assert "_birthDate" not in shape(patient(), elements=["gender"])
    assert "_birthDate" not in shape(patient(), "text")
    assert "_birthDate" in shape(patient(), "true")


def test_input_not_mutated_and_tag_not_duplicated() -> None:
    """Shaping copies what it changes; an existing SUBSETTED tag is not repeated."""
    original = observation()
    original["meta"] = {"tag": [dict(SUBSETTED)]}
    before = copy.deepcopy(original)
    for mode in ("true", "text", "data"):
        out = shape(original, mode)
        assert tags(out) == [SUBSETTED]
    out = shape(original, elements=["status"])
    out["meta"]["tag"].append({"code": "more"})
    assert original == before
    assert isinstance(original["valueQuantity"]["value"], Decimal)


def test_backbone_content_reference_and_bundle() -> None:
    """Nested contentReference backbones are filtered; Bundle entries are left alone."""
    response = {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": [{"id": "x", "relation": "self", "url": "http://h/Patient"}],
        "entry": [{"id": "e", "fullUrl": "http://h/Patient/p1", "resource": patient()}],
    }
    out = shape(response, "true")
    assert out["link"] == [{"relation": "self", "url": "http://h/Patient"}]
    assert out["entry"] is response["entry"]
    questionnaire = {
        "resourceType": "Questionnaire",
        "status": "active",
        "item": [{"linkId": "1", "type": "group", "item": [{"linkId": "1.1", "type": "string"}]}],
    }
    assert "item" not in shape(questionnaire, "true")  # Questionnaire.item is not summary
    params = {
        "resourceType": "Parameters",
        "parameter": [{"name": "a", "part": [{"id": "p", "name": "b", "valueDecimal": Decimal("1.0"),
                                              "extension": [{"url": "http://example.org/e"}],
                                              "part": [{"id": "q", "name": "c"}]}]}],
    }
    out = shape(params, "true")  # Parameters.parameter.part refers back to Parameters.parameter
    assert out["parameter"] == [{"name": "a", "part": [{"name": "b", "valueDecimal": Decimal("1.0"),
                                                        "part": [{"name": "c"}]}]}]


def test_parse_summary() -> None:
    """Valid modes pass through, blank means absent, anything else is a 400 naming _summary."""
    for mode in ("true", "text", "data", "count", "false"):
        assert parse_summary(mode) == mode
    assert parse_summary(None) is None
    assert parse_summary("") is None
    with pytest.raises(BadRequest) as info:
        parse_summary("yes")
    assert info.value.status == 400
    assert "_summary" in str(info.value)
    with pytest.raises(BadRequest):
        parse_summary("TRUE")


def test_parse_elements() -> None:
    """Comma-separated identifiers, trimmed and de-duplicated; bad names are a 400."""
    assert parse_elements("status, code,status") == ["status", "code"]
    assert parse_elements(None) is None
    assert parse_elements(" , ") is None
    for bad in ("Observation.status", "va lue", "1abc", "_birthDate", "code;drop"):
        with pytest.raises(BadRequest) as info:
            parse_elements(bad)
        assert info.value.status == 400
        assert "_elements" in str(info.value)

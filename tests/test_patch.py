"""Unit tests for fhirserver.interactions.patch: JSON Patch (RFC 6902) and FHIRPath Patch (no database)."""

from __future__ import annotations

import copy
import json
import re
from decimal import Decimal
from typing import Any

import fhirpathpy
import pytest

from fhirserver.errors import BadRequest, FHIRError, Unprocessable
from fhirserver.interactions.patch import apply_fhirpath_patch, apply_json_patch

# ---------------------------------------------------------------------------------------------------------------
# JSON Patch: RFC 6902 appendix A
# ---------------------------------------------------------------------------------------------------------------

RFC_EXAMPLES = [
    ("A.1 add object member", {"foo": "bar"},
     [{"op": "add", "path": "/baz", "value": "qux"}],
     {"baz": "qux", "foo": "bar"}),
    ("A.2 add array element", {"foo": ["bar", "baz"]},
     [{"op": "add", "path": "/foo/1", "value": "qux"}],
     {"foo": ["bar", "qux", "baz"]}),
    ("A.3 remove object member", {"baz": "qux", "foo": "bar"},
     [{"op": "remove", "path": "/baz"}],
     {"foo": "bar"}),
    ("A.4 remove array element", {"foo": ["bar", "qux", "baz"]},
     [{"op": "remove", "path": "/foo/1"}],
     {"foo": ["bar", "baz"]}),
    ("A.5 replace a value", {"baz": "qux", "foo": "bar"},
     [{"op": "replace", "path": "/baz", "value": "boo"}],
     {"baz": "boo", "foo": "bar"}),
    ("A.6 move a value", {"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}},
     [{"op": "move", "from": "/foo/waldo", "path": "/qux/thud"}],
     {"foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}}),
    ("A.7 move an array element", {"foo": ["all", "grass", "cows", "eat"]},
     [{"op": "move", "from": "/foo/1", "path": "/foo/3"}],
     {"foo": ["all", "cows", "eat", "grass"]}),
    ("A.8 test success", {"baz": "qux", "foo": ["a", 2, "c"]},
     [{"op": "test", "path": "/baz", "value": "qux"}, {"op": "test", "path": "/foo/1", "value": 2}],
     {"baz": "qux", "foo": ["a", 2, "c"]}),
    ("A.10 add nested member object", {"foo": "bar"},
     [{"op": "add", "path": "/child", "value": {"grandchild": {}}}],
     {"foo": "bar", "child": {"grandchild": {}}}),
    ("A.11 ignore unrecognized elements", {"foo": "bar"},
     [{"op": "add", "path": "/baz", "value": "qux", "xyz": 123}],
     {"foo": "bar", "baz": "qux"}),
    ("A.14 ~ escape ordering", {"/": 9, "~1": 10},
     [{"op": "test", "path": "/~01", "value": 10}],
     {"/": 9, "~1": 10}),
    ("A.16 add an array value", {"foo": ["bar"]},
     [{"op": "add", "path": "/foo/-", "value": ["abc", "def"]}],
     {"foo": ["bar", ["abc", "def"]]}),
]


@pytest.mark.parametrize(("doc", "patch", "expected"), [e[1:] for e in RFC_EXAMPLES], ids=[e[0] for e in RFC_EXAMPLES])
def test_rfc6902_appendix_a(doc: dict, patch: list, expected: dict) -> None:
    assert apply_json_patch(doc, patch) == expected


def test_rfc6902_a9_test_error() -> None:
    with pytest.raises(Unprocessable) as info:
        apply_json_patch({"baz": "qux"}, [{"op": "test", "path": "/baz", "value": "bar"}])
    assert info.value.status == 422
    assert "JSON Patch operation 0 ('test')" in str(info.value)


def test_rfc6902_a12_add_to_nonexistent_target() -> None:
    with pytest.raises(Unprocessable, match="path '/baz/bat' does not exist"):
        apply_json_patch({"foo": "bar"}, [{"op": "add", "path": "/baz/bat", "value": "qux"}])


def test_rfc6902_a15_strings_and_numbers_differ() -> None:
    with pytest.raises(Unprocessable):
        apply_json_patch({"/": 9, "~1": 10}, [{"op": "test", "path": "/~01", "value": "10"}])


# ---------------------------------------------------------------------------------------------------------------
# JSON Patch: pointers, equality, copy, resources
# ---------------------------------------------------------------------------------------------------------------

def test_pointer_escapes() -> None:
    doc = {"a/b": 1, "m~n": 2, "": 3}
    out = apply_json_patch(doc, [
        {"op": "replace", "path": "/a~1b", "value": 10},
        {"op": "replace", "path": "/m~0n", "value": 20},
        {"op": "replace", "path": "/", "value": 30},
    ])
    assert out == {"a/b": 10, "m~n": 20, "": 30}


def test_copy_and_move_within_object() -> None:
    doc = {"a": {"b": [1, 2]}, "c": None}
    out = apply_json_patch(doc, [
        {"op": "copy", "from": "/a/b", "path": "/c"},
        {"op": "add", "path": "/c/-", "value": 3},
        {"op": "move", "from": "/a", "path": "/d"},
    ])
    assert out == {"c": [1, 2, 3], "d": {"b": [1, 2]}}


def test_add_at_array_end_index_and_replace_whole_document() -> None:
    assert apply_json_patch({"x": [1]}, [{"op": "add", "path": "/x/1", "value": 2}]) == {"x": [1, 2]}
    assert apply_json_patch({"x": 1}, [{"op": "replace", "path": "", "value": {"y": 2}}]) == {"y": 2}


def test_test_op_compares_numbers_by_value_and_keeps_decimal() -> None:
    doc = {"resourceType": "Observation", "valueQuantity": {"value": Decimal("1.0"), "unit": "mg"}}
    for expected in (1, 1.0, Decimal("1.00"), Decimal("1")):
        apply_json_patch(doc, [{"op": "test", "path": "/valueQuantity/value", "value": expected}])
    apply_json_patch(doc, [{"op": "test", "path": "/valueQuantity", "value": {"unit": "mg", "value": 1}}])
    with pytest.raises(Unprocessable):
        apply_json_patch(doc, [{"op": "test", "path": "/valueQuantity/value", "value": Decimal("1.5")}])
    with pytest.raises(Unprocessable):
        apply_json_patch({"v": 1}, [{"op": "test", "path": "/v", "value": True}])
    out = apply_json_patch(doc, [{"op": "replace", "path": "/valueQuantity/value", "value": Decimal("2.50")}])
    value = out["valueQuantity"]["value"]
    assert isinstance(value, Decimal) and str(value) == "2.50"


def test_json_patch_does_not_mutate_inputs() -> None:
    doc = {"resourceType": "Patient", "name": [{"given": ["A"]}], "telecom": [{"value": "1"}]}
    patch = [{"op": "add", "path": "/name/0/given/-", "value": "B"},
             {"op": "add", "path": "/extension", "value": [{"url": "u", "valueString": "x"}]},
             {"op": "remove", "path": "/telecom/0"}]
    before_doc, before_patch = copy.deepcopy(doc), copy.deepcopy(patch)
    out = apply_json_patch(doc, patch)
    assert doc == before_doc and patch == before_patch
    assert out["name"][0]["given"] == ["A", "B"]
    out["extension"][0]["valueString"] = "changed"
    assert patch == before_patch


def test_json_patch_cannot_change_resource_type() -> None:
    doc = {"resourceType": "Patient", "id": "p1"}
    for ops in ([{"op": "replace", "path": "/resourceType", "value": "Group"}],
                [{"op": "remove", "path": "/resourceType"}],
                [{"op": "replace", "path": "", "value": {"resourceType": "Group"}}]):
        with pytest.raises(Unprocessable, match="resourceType"):
            apply_json_patch(doc, ops)
    # id is the caller's concern
    assert apply_json_patch(doc, [{"op": "replace", "path": "/id", "value": "p2"}])["id"] == "p2"


@pytest.mark.parametrize(("patch", "message"), [
    ({"op": "add"}, "must be a JSON array"),
    (["add"], "JSON Patch operation 0: must be a JSON object"),
    ([{"path": "/a"}], "'op' is missing"),
    ([{"op": "append", "path": "/a"}], "'op' is 'append'"),
    ([{"op": "test", "path": "/a", "value": 1}, {"op": "remove"}], "operation 1 ('remove'): 'path' is missing"),
    ([{"op": "add", "path": "/a"}], "'value' is missing"),
    ([{"op": "replace", "path": "/a"}], "'value' is missing"),
    ([{"op": "copy", "path": "/a"}], "'from' is missing"),
    ([{"op": "move", "path": "/a", "from": 3}], "'from' is missing or not a string"),
    ([{"op": "remove", "path": "a"}], "must be empty or start with '/'"),
    ([{"op": "remove", "path": "/a~2"}], "'~' not followed by"),
    ([{"op": "move", "from": "/a", "path": "/a/b"}], "into its own child"),
])
def test_malformed_json_patch_is_400(patch: object, message: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(message)) as info:
        apply_json_patch({"a": {"x": 1}}, patch)
    assert info.value.status == 400


def test_malformed_operation_rejected_before_anything_applies() -> None:
    """A later malformed operation wins over an earlier unappliable one: the document is checked first."""
    with pytest.raises(BadRequest):
        apply_json_patch({}, [{"op": "remove", "path": "/missing"}, {"op": "nope", "path": "/x"}])


@pytest.mark.parametrize(("patch", "message"), [
    ([{"op": "replace", "path": "/foo", "value": 1}], "operation 0 ('replace'): path '/foo' does not exist"),
    ([{"op": "remove", "path": "/list/2"}], "out of range"),
    ([{"op": "remove", "path": "/list/-"}], "not a valid array index"),
    ([{"op": "add", "path": "/list/01", "value": 1}], "not a valid array index"),
    ([{"op": "add", "path": "/list/3", "value": 1}], "out of range"),
    ([{"op": "replace", "path": "/list/x", "value": 1}], "does not exist"),
    ([{"op": "move", "from": "/nope", "path": "/x"}], "path '/nope' does not exist"),
    ([{"op": "copy", "from": "/list/5", "path": "/x"}], "does not exist"),
    ([{"op": "add", "path": "/s/x", "value": 1}], "does not exist"),
    ([{"op": "remove", "path": ""}], "whole resource"),
    ([{"op": "test", "path": "/s", "value": "t"}, {"op": "test", "path": "/s", "value": "u"}],
     "operation 1 ('test'): test failed"),
])
def test_unappliable_json_patch_is_422(patch: list, message: str) -> None:
    with pytest.raises(Unprocessable, match=re.escape(message)) as info:
        apply_json_patch({"list": [1, 2], "s": "t"}, patch)
    assert info.value.status == 422
    assert info.value.issues[0].code == "processing"


def test_json_patch_error_message_format() -> None:
    ops = [{"op": "add", "path": "/a", "value": 1}, {"op": "test", "path": "/a", "value": 1},
           {"op": "replace", "path": "/foo", "value": 2}]
    with pytest.raises(Unprocessable) as info:
        apply_json_patch({}, ops)
    assert str(info.value) == "JSON Patch operation 2 ('replace'): path '/foo' does not exist"


# ---------------------------------------------------------------------------------------------------------------
# FHIRPath Patch
# ---------------------------------------------------------------------------------------------------------------

def _operation(op_type: str, path: str | None, **parts: Any) -> dict:
    """One ``operation`` parameter; keyword values are full part bodies (without the name)."""
    part = [{"name": "type", "valueCode": op_type}]
    if path is not None:
        part.append({"name": "path", "valueString": path})
    part += [{"name": name, **body} for name, body in parts.items()]
    return {"name": "operation", "part": part}


def _params(*operations: dict) -> dict:
    """A Parameters resource holding ``operations``."""
    return {"resourceType": "Parameters", "parameter": list(operations)}


def _patient() -> dict:
    return {
        "resourceType": "Patient",
        "id": "p1",
        "birthDate": "1970-01-01",
        "name": [{"family": "Smith", "given": ["Ann"]}],
        "telecom": [
            {"system": "phone", "value": "555-1000", "use": "home"},
            {"system": "email", "value": "ann@example.org"},
            {"system": "phone", "value": "555-2000", "use": "work"},
        ],
        "identifier": [{"system": "urn:mrn", "value": "42", "type": {"coding": [{"code": "MR"}]}}],
    }


def _observation() -> dict:
    return {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
        "valueQuantity": {"value": Decimal("72.5"), "unit": "kg"},
        "component": [
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
             "valueQuantity": {"value": 120}},
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
             "valueQuantity": {"value": 80}},
        ],
    }


def test_replace_birth_date() -> None:
    patient = _patient()
    out = apply_fhirpath_patch(patient, _params(
        _operation("replace", "Patient.birthDate", value={"valueDate": "1980-02-03"})))
    assert out["birthDate"] == "1980-02-03"
    assert patient["birthDate"] == "1970-01-01"


def test_add_singleton_uses_name() -> None:
    patient = _patient()
    del patient["birthDate"]
    out = apply_fhirpath_patch(patient, _params(
        _operation("add", "Patient", name={"valueString": "birthDate"}, value={"valueDate": "2001-05-06"}),
        _operation("add", "Patient", name={"valueString": "deceased"}, value={"valueBoolean": False})))
    assert out["birthDate"] == "2001-05-06"
    assert out["deceasedBoolean"] is False


def test_add_telecom_appends() -> None:
    out = apply_fhirpath_patch(_patient(), _params(_operation(
        "add", "Patient", name={"valueString": "telecom"},
        value={"valueContactPoint": {"system": "email", "value": "work@example.org"}})))
    assert len(out["telecom"]) == 4
    assert out["telecom"][-1] == {"system": "email", "value": "work@example.org"}


def test_add_repeating_element_when_absent_creates_a_list() -> None:
    patient = {"resourceType": "Patient", "id": "p"}
    out = apply_fhirpath_patch(patient, _params(
        _operation("add", "Patient", name={"valueString": "telecom"},
                   value={"valueContactPoint": {"system": "phone", "value": "1"}}),
        _operation("add", "Patient", name={"valueString": "contact"},
                   value={"part": [{"name": "name", "valueHumanName": {"family": "Doe"}},
                                   {"name": "telecom", "valueContactPoint": {"value": "2"}}]})))
    assert out["telecom"] == [{"system": "phone", "value": "1"}]
    # contact is a backbone element built from parts; contact.telecom repeats, contact.name does not
    assert out["contact"] == [{"name": {"family": "Doe"}, "telecom": [{"value": "2"}]}]


def test_add_to_nested_element() -> None:
    out = apply_fhirpath_patch(_patient(), _params(_operation(
        "add", "Patient.name[0]", name={"valueString": "given"}, value={"valueString": "Beth"})))
    assert out["name"][0]["given"] == ["Ann", "Beth"]


def test_parts_follow_element_definitions() -> None:
    """Nested parts: repeating children become lists, choice names take the value's type (Extension.value[x])."""
    patient = {"resourceType": "Patient", "extension": [{"url": "u1", "valueString": "a"}]}
    out = apply_fhirpath_patch(patient, _params(
        _operation("add", "Patient", name={"valueString": "extension"},
                   value={"part": [{"name": "url", "valueUri": "u2"},
                                   {"name": "value", "valueDecimal": Decimal("1.5")}]}),
        _operation("add", "Patient", name={"valueString": "maritalStatus"},
                   value={"part": [{"name": "coding", "part": [{"name": "code", "valueCode": "M"}]}]}),
        _operation("replace", "Patient.extension.where(url = 'u1').value", value={"valueInteger": 3})))
    assert out["extension"] == [{"url": "u1", "valueInteger": 3}, {"url": "u2", "valueDecimal": Decimal("1.5")}]
    assert out["maritalStatus"] == {"coding": [{"code": "M"}]}


def test_choice_base_is_not_a_prefix_match() -> None:
    """``Patient.birth`` is not an element: it must not match ``birthDate``."""
    patient = _patient()
    assert apply_fhirpath_patch(patient, _params(_operation("delete", "Patient.birth"))) == patient


def test_contained_resources_use_their_own_type() -> None:
    patient = {"resourceType": "Patient", "contained": [{"resourceType": "Practitioner", "id": "d"}]}
    out = apply_fhirpath_patch(patient, _params(_operation(
        "add", "Patient.contained.where(id = 'd')", name={"valueString": "telecom"},
        value={"valueContactPoint": {"value": "1"}})))
    assert out["contained"][0]["telecom"] == [{"value": "1"}]


def test_insert_name_at_index_0() -> None:
    out = apply_fhirpath_patch(_patient(), _params(_operation(
        "insert", "Patient.name", index={"valueInteger": 0},
        value={"valueHumanName": {"family": "Jones", "use": "official"}})))
    assert [n["family"] for n in out["name"]] == ["Jones", "Smith"]


def test_insert_into_absent_list_at_0() -> None:
    out = apply_fhirpath_patch({"resourceType": "Patient"}, _params(_operation(
        "insert", "Patient.name", index={"valueInteger": 0}, value={"valueHumanName": {"text": "X"}})))
    assert out["name"] == [{"text": "X"}]


def test_delete_where_single_match() -> None:
    out = apply_fhirpath_patch(_patient(), _params(
        _operation("delete", "Patient.telecom.where(system='phone' and use='work')")))
    assert [t["value"] for t in out["telecom"]] == ["555-1000", "ann@example.org"]


def test_delete_where_phone_with_several_matches_is_422() -> None:
    with pytest.raises(Unprocessable, match="matched 2 elements") as info:
        apply_fhirpath_patch(_patient(), _params(_operation("delete", "Patient.telecom.where(system='phone')")))
    assert info.value.issues[0].expression == ["Parameters.parameter[0]"]


def test_delete_where_phone_when_single() -> None:
    patient = _patient()
    del patient["telecom"][2]
    out = apply_fhirpath_patch(patient, _params(_operation("delete", "Patient.telecom.where(system='phone')")))
    assert out["telecom"] == [{"system": "email", "value": "ann@example.org"}]


def test_delete_no_match_is_noop_and_last_item_removes_key() -> None:
    patient = _patient()
    out = apply_fhirpath_patch(patient, _params(_operation("delete", "Patient.telecom.where(system='fax')")))
    assert out == patient
    out = apply_fhirpath_patch(patient, _params(
        _operation("delete", "Patient.identifier.type.coding"),
        _operation("delete", "Patient.name.given"),
    ))
    # identifier.type had only that coding: the emptied type object is removed too
    assert out["identifier"] == [{"system": "urn:mrn", "value": "42"}]
    assert out["name"] == [{"family": "Smith"}]
    out = apply_fhirpath_patch(out, _params(_operation("delete", "Patient.name.family")))
    assert "name" not in out


def test_delete_primitive_list_item_keeps_extension_array_aligned() -> None:
    patient = {"resourceType": "Patient", "name": [{"given": ["A", "B"], "_given": [None, {"id": "b"}]}]}
    out = apply_fhirpath_patch(patient, _params(_operation("delete", "Patient.name.given.where($this = 'A')")))
    assert out["name"] == [{"given": ["B"], "_given": [{"id": "b"}]}]


def test_replace_choice_value_with_quantity_from_parts() -> None:
    obs = _observation()
    quantity = {"part": [
        {"name": "value", "valueDecimal": Decimal("80.25")},
        {"name": "unit", "valueString": "kg"},
        {"name": "system", "valueUri": "http://unitsofmeasure.org"},
        {"name": "code", "valueCode": "kg"},
    ]}
    out = apply_fhirpath_patch(obs, _params(_operation("replace", "Observation.value", value=quantity)))
    assert out["valueQuantity"] == {"value": Decimal("80.25"), "unit": "kg",
                                    "system": "http://unitsofmeasure.org", "code": "kg"}
    assert isinstance(out["valueQuantity"]["value"], Decimal)
    assert obs["valueQuantity"] == {"value": Decimal("72.5"), "unit": "kg"}


def test_replace_choice_value_with_other_type_renames_key() -> None:
    out = apply_fhirpath_patch(_observation(), _params(
        _operation("replace", "Observation.value", value={"valueString": "heavy"})))
    assert out["valueString"] == "heavy" and "valueQuantity" not in out


def test_replace_where_on_nested_path_and_number_literal() -> None:
    out = apply_fhirpath_patch(_observation(), _params(
        _operation("replace", "Observation.component.where(code.coding.code = '8462-4').value.value",
                   value={"valueDecimal": Decimal("85")}),
        _operation("replace", "Observation.component.value.where(value = 120).value",
                   value={"valueDecimal": Decimal("121")})))
    assert [c["valueQuantity"]["value"] for c in out["component"]] == [Decimal("121"), Decimal("85")]


def test_replace_with_first_last_and_index() -> None:
    out = apply_fhirpath_patch(_patient(), _params(
        _operation("replace", "Patient.telecom.first().value", value={"valueString": "first"}),
        _operation("replace", "Patient.telecom.last().value", value={"valueString": "last"}),
        _operation("replace", "Patient.telecom[1].value", value={"valueString": "middle"}),
        _operation("replace", "Patient.telecom.where(system = 'phone')[1].use", value={"valueCode": "mobile"})))
    assert [t["value"] for t in out["telecom"]] == ["first", "middle", "last"]
    assert out["telecom"][2]["use"] == "mobile"


def test_where_with_two_conditions_and_boolean_literal() -> None:
    patient = _patient()
    patient["address"] = [{"city": "A", "use": "home", "period": {"start": "2000"}},
                          {"city": "B", "use": "home"}]
    patient["communication"] = [{"language": {"text": "en"}, "preferred": True},
                                {"language": {"text": "fr"}, "preferred": False}]
    out = apply_fhirpath_patch(patient, _params(
        _operation("replace", "Patient.address.where(use = 'home' and city = 'B').city", value={"valueString": "C"}),
        _operation("delete", "Patient.communication.where(preferred = false)"),
        _operation("replace", "Patient.telecom.where(system='phone' and use='home').value",
                   value={"valueString": "555-9999"})))
    assert [a["city"] for a in out["address"]] == ["A", "C"]
    assert out["communication"] == [{"language": {"text": "en"}, "preferred": True}]
    assert out["telecom"][0]["value"] == "555-9999"


def test_move() -> None:
    out = apply_fhirpath_patch(_patient(), _params(_operation(
        "move", "Patient.telecom", source={"valueInteger": 0}, destination={"valueInteger": 2})))
    assert [t["value"] for t in out["telecom"]] == ["ann@example.org", "555-2000", "555-1000"]


def test_fhirpath_patch_does_not_mutate_inputs_and_keeps_decimals() -> None:
    obs = _observation()
    params = _params(_operation("add", "Observation", name={"valueString": "note"},
                                value={"valueAnnotation": {"text": "n"}}),
                     _operation("delete", "Observation.component[0]"))
    before_obs, before_params = copy.deepcopy(obs), copy.deepcopy(params)
    out = apply_fhirpath_patch(obs, params)
    assert obs == before_obs and params == before_params
    out["note"][0]["text"] = "changed"
    assert params == before_params
    assert isinstance(out["valueQuantity"]["value"], Decimal)


def test_navigator_agrees_with_fhirpathpy() -> None:
    """The location navigator selects the same items that fhirpathpy evaluates to (on JSON-native data)."""
    patient = json.loads(json.dumps(_patient()))
    from fhirserver.interactions import patch as module

    expressions = ["Patient.telecom.where(system='phone')", "Patient.telecom.where(system='phone' and use='work')",
                   "Patient.name.given", "Patient.telecom[1]", "Patient.telecom.last().value",
                   "Patient.identifier.where(type.coding.code = 'MR').value", "telecom.first().system"]
    root = module._Loc(None, "", None, None, module._model("Patient"), node=patient)
    for expr in expressions:
        locs = module._resolve(module._parse_fhirpath(expr), root)
        assert [loc.value for loc in locs] == fhirpathpy.evaluate(patient, expr), expr


# --- FHIRPath Patch errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("params", "message"), [
    ({"resourceType": "Bundle"}, "must be a Parameters resource"),
    ([], "must be a Parameters resource"),
    ({"resourceType": "Parameters", "parameter": {}}, "must be a list"),
    (_params({"name": "op", "part": []}), "operation 0: each parameter must be named 'operation'"),
    (_params({"name": "operation"}), "no 'part' list"),
    (_params(_operation("delete", "Patient.id"), _operation("frobnicate", "Patient.id")),
     "operation 1: unknown type 'frobnicate'"),
    (_params({"name": "operation", "part": [{"name": "path", "valueString": "Patient"}]}), "'type' part"),
    (_params(_operation("delete", None)), "operation 0 ('delete'): the 'path' part is missing"),
    (_params(_operation("delete", "")), "non-empty valueString"),
    (_params(_operation("add", "Patient", value={"valueString": "x"})), "the 'name' part is missing"),
    (_params(_operation("add", "Patient", name={"valueString": "x"})), "the 'value' part is missing"),
    (_params(_operation("add", "Patient", name={"valueString": "a.b"}, value={"valueString": "x"})),
     "element name"),
    (_params(_operation("replace", "Patient.id")), "the 'value' part is missing"),
    (_params(_operation("replace", "Patient.id", value={"valueString": "a", "valueCode": "b"})), "exactly one of"),
    (_params(_operation("replace", "Patient.id", value={"part": []})), "non-empty list"),
    (_params(_operation("replace", "Patient.id", value={"part": [{"valueString": "a"}]})), "must be an object"),
    (_params(_operation("insert", "Patient.name", value={"valueString": "x"})), "the 'index' part is missing"),
    (_params(_operation("insert", "Patient.name", value={"valueString": "x"}, index={"valueInteger": -1})),
     "non-negative valueInteger"),
    (_params(_operation("insert", "Patient.name.first()", value={"valueString": "x"}, index={"valueInteger": 0})),
     "must end with the name of a list element"),
    (_params(_operation("move", "Patient.name", source={"valueInteger": 0})), "the 'destination' part is missing"),
    (_params(_operation("delete", "Patient.id", bogus={"valueString": "x"})), "unknown name 'bogus'"),
    (_params({"name": "operation", "part": [{"name": "type", "valueCode": "delete"},
                                            {"name": "path", "valueString": "Patient.id"},
                                            {"name": "path", "valueString": "Patient.id"}]}),
     "part 'path' is repeated"),
])
def test_malformed_parameters_is_400(params: object, message: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(message)) as info:
        apply_fhirpath_patch(_patient(), params)
    assert info.value.status == 400


@pytest.mark.parametrize("path", [
    "Patient.name.select(given)",
    "Patient.telecom.where(system='phone' or use='home')",
    "Patient.name | Patient.telecom",
    "Patient.telecom.where(system.exists())",
    "Patient.name[0.5]",
    "Patient.name[",
    "Patient.name.where(use = 'a' or use = 'b')",
    "Patient.telecom.where(system = phone)",
    "Patient.#name",
])
def test_unsupported_expression_is_400(path: str) -> None:
    with pytest.raises(BadRequest) as info:
        apply_fhirpath_patch(_patient(), _params(_operation("delete", path)))
    message = str(info.value)
    assert message.startswith("FHIRPath Patch operation 0 ('delete'): unsupported FHIRPath expression")
    assert f"'{path}'" in message


@pytest.mark.parametrize(("operation", "message"), [
    (_operation("replace", "Patient.gender", value={"valueCode": "male"}), "matched 0 elements; replace needs"),
    (_operation("replace", "Patient.telecom.value", value={"valueString": "x"}), "matched 3 elements"),
    (_operation("add", "Patient", name={"valueString": "birthDate"}, value={"valueDate": "2000-01-01"}),
     "'birthDate' already has a value"),
    (_operation("add", "Patient.telecom", name={"valueString": "rank"}, value={"valuePositiveInt": 1}),
     "matched 3 elements; add needs exactly one"),
    (_operation("add", "Patient.birthDate", name={"valueString": "x"}, value={"valueString": "y"}), "primitive"),
    (_operation("insert", "Patient.name", index={"valueInteger": 2}, value={"valueHumanName": {}}), "out of range"),
    (_operation("insert", "Patient.birthDate", index={"valueInteger": 0}, value={"valueDate": "2000"}),
     "single-valued"),
    (_operation("insert", "Patient.gender", index={"valueInteger": 0}, value={"valueCode": "male"}),
     "not a repeating element"),
    (_operation("move", "Patient.telecom", source={"valueInteger": 3}, destination={"valueInteger": 0}),
     "source 3 is out of range"),
    (_operation("move", "Patient.telecom", source={"valueInteger": 0}, destination={"valueInteger": 5}),
     "destination 5 is out of range"),
    (_operation("delete", "Patient.telecom"), "matched 3 elements; delete needs exactly one"),
    (_operation("delete", "Patient"), "cannot delete the resource itself"),
    (_operation("replace", "Patient", value={"valueString": "x"}), "cannot replace the resource itself"),
    (_operation("delete", "Observation.value"), "starts with 'Observation' but the resource is a Patient"),
])
def test_unappliable_fhirpath_patch_is_422(operation: dict, message: str) -> None:
    with pytest.raises(Unprocessable, match=re.escape(message)) as info:
        apply_fhirpath_patch(_patient(), _params(_operation("delete", "Patient.active"), operation))
    assert info.value.status == 422
    assert str(info.value).startswith("FHIRPath Patch operation 1 (")
    assert info.value.issues[0].expression == ["Parameters.parameter[1]"]


def test_add_conflicting_choice_type_is_422() -> None:
    with pytest.raises(Unprocessable, match=r"'value\[x\]' already has a value"):
        apply_fhirpath_patch(_observation(), _params(
            _operation("add", "Observation", name={"valueString": "value"}, value={"valueString": "x"})))


def test_error_message_exact() -> None:
    with pytest.raises(FHIRError) as info:
        apply_fhirpath_patch(_patient(), _params(
            _operation("replace", "Patient.gender", value={"valueCode": "other"})))
    assert str(info.value) == ("FHIRPath Patch operation 0 ('replace'): path 'Patient.gender' matched 0 elements; "
                               "replace needs exactly one")


def test_empty_parameters_is_a_noop() -> None:
    patient = _patient()
    assert apply_fhirpath_patch(patient, {"resourceType": "Parameters"}) == patient
    assert apply_json_patch(patient, []) == patient

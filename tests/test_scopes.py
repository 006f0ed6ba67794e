"""SMART scopes and the access decision object: pure logic, no server, no database."""

from __future__ import annotations

import json

import pytest

from smart_auth.access import Access
from smart_auth.scopes import (
    INTERACTION_LETTERS,
    Scope,
    ScopeError,
    ScopeKind,
    covers_all,
    grant,
    narrow,
    parse_scope,
    parse_scopes,
)

LAB = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"
VITALS = "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs"
LAB_SCOPE = f"patient/Observation.rs?category={LAB}"
VITALS_SCOPE = f"patient/Observation.rs?category={VITALS}"


def access(scope: str, **kw) -> Access:
    kw.setdefault("grant_type", "authorization_code")
    return Access(client_id="app", scopes=parse_scopes(scope), **kw)


# -- parsing: v1 and v2 --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,context,rtype,letters,v1", [
    ("patient/Observation.read", "patient", "Observation", "rs", True),
    ("patient/Observation.write", "patient", "Observation", "cud", True),
    ("user/*.*", "user", "*", "cruds", True),
    ("system/*.write", "system", "*", "cud", True),
    ("patient/Observation.rs", "patient", "Observation", "rs", False),
    ("user/Encounter.cruds", "user", "Encounter", "cruds", False),
    ("system/*.rs", "system", "*", "rs", False),
    ("patient/Patient.r", "patient", "Patient", "r", False),
    ("user/Appointment.cu", "user", "Appointment", "cu", False),
    ("system/Encounter.d", "system", "Encounter", "d", False),
])
def test_parse_resource_scopes(text, context, rtype, letters, v1):
    s = parse_scope(text)
    assert s.kind is ScopeKind.RESOURCE and s.is_resource
    assert (s.context, s.resource_type, s.permissions, s.v1) == (context, rtype, letters, v1)
    assert s.params == () and s.constraint is None


@pytest.mark.parametrize("v1,v2", [
    ("patient/Observation.read", "patient/Observation.rs"),
    ("patient/Observation.write", "patient/Observation.cud"),
    ("user/*.*", "user/*.cruds"),
])
def test_v1_equals_v2(v1, v2):
    assert parse_scope(v1) == parse_scope(v2)
    assert hash(parse_scope(v1)) == hash(parse_scope(v2))


@pytest.mark.parametrize("text,kind,launch_context", [
    ("openid", ScopeKind.IDENTITY, None),
    ("fhirUser", ScopeKind.IDENTITY, None),
    ("profile", ScopeKind.IDENTITY, None),
    ("launch", ScopeKind.LAUNCH, None),
    ("launch/patient", ScopeKind.LAUNCH, "patient"),
    ("launch/encounter", ScopeKind.LAUNCH, "encounter"),
    ("launch/diagnosticreport", ScopeKind.LAUNCH, "diagnosticreport"),
    ("offline_access", ScopeKind.REFRESH, None),
    ("online_access", ScopeKind.REFRESH, None),
])
def test_parse_non_resource_scopes(text, kind, launch_context):
    s = parse_scope(text)
    assert s.kind is kind and not s.is_resource
    assert s.launch_context == launch_context
    assert s.to_string() == text


@pytest.mark.parametrize("text", [
    "__custom", "http://example.com/scope-name", "http://smarthealthit.org/fhir/scopes/patient/*.r",
    "launch/Patient", "Patient/Observation.rs", "email", "patient",
])
def test_unknown_scopes_are_kept_as_other(text):
    s = parse_scope(text)
    assert s.kind is ScopeKind.OTHER and s.to_string() == text


def test_parse_scope_string_keeps_order_and_drops_duplicates():
    scopes = parse_scopes("  openid fhirUser\tpatient/*.rs patient/*.read launch/patient openid  ")
    assert [s.to_string() for s in scopes] == ["openid", "fhirUser", "patient/*.rs", "launch/patient"]
    assert parse_scopes("") == ()


# -- parsing: granular constraints ---------------------------------------------------------------------------------


def test_granular_category_scope():
    s = parse_scope(LAB_SCOPE)
    assert s.permissions == "rs" and s.params == (("category", LAB),)
    assert s.constraint == {"category": [LAB]}
    assert s.to_string() == LAB_SCOPE


def test_granular_several_params_and_repeats():
    s = parse_scope("user/Observation.rs?category=vital-signs&code=http://loinc.org|8867-4&category=survey")
    assert s.constraint == {"category": ["vital-signs", "survey"], "code": ["http://loinc.org|8867-4"]}
    assert s.to_string() == "user/Observation.rs?category=vital-signs&code=http://loinc.org|8867-4&category=survey"


def test_granular_url_encoded_values_are_decoded():
    encoded = ("patient/Observation.rs?category="
               "http%3A%2F%2Fterminology.hl7.org%2FCodeSystem%2Fobservation-category%7Claboratory")
    s = parse_scope(encoded)
    assert s == parse_scope(LAB_SCOPE)
    assert s.to_string() == LAB_SCOPE


def test_granular_encoded_space_and_ampersand_round_trip():
    s = parse_scope("patient/Condition.rs?code:text=heart%20attack%26stroke&_tag=a+b")
    assert s.constraint == {"code:text": ["heart attack&stroke"], "_tag": ["a+b"]}
    assert parse_scope(s.to_string()) == s
    assert " " not in s.to_string()


def test_granular_param_order_does_not_matter():
    a = parse_scope("patient/Observation.rs?category=laboratory&status=final")
    b = parse_scope("patient/Observation.rs?status=final&category=laboratory")
    assert a == b and a.to_string() != b.to_string()


def test_granular_modifiers_and_chains_parse():
    s = parse_scope("patient/Observation.rs?code:in=http://valueset.example.org/ValueSet/diabetes-codes")
    assert s.constraint == {"code:in": ["http://valueset.example.org/ValueSet/diabetes-codes"]}
    assert parse_scope("patient/Observation.rs?patient.birthdate=1990").constraint == {"patient.birthdate": ["1990"]}


# -- malformed scopes ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,fragment", [
    ("patient/Obs ervation.rs", "token"),
    ("patient/Observation.xyz", "cruds"),
    ("patient/Observation.dus", "cruds"),
    ("patient/Observation.rr", "cruds"),
    ("patient/Observation.readrs", "mixes"),
    ("patient/Observation.rs*", "mixes"),
    ("patient/Observation.cudwrite", "mixes"),
    ("patient/Observation.read?category=laboratory", "v1"),
    ("patient/Observation.", "no permissions"),
    ("patient/Observation", "expected"),
    ("patient/observation.rs", "resource type"),
    ("user/.rs", "resource type"),
    ("system/Obs-ervation.rs", "resource type"),
    ("patient/Observation.rs?", "param=value"),
    ("patient/Observation.rs?category", "param=value"),
    ("patient/Observation.rs?category=", "param=value"),
    ("patient/Observation.rs?category=a&&b=c", "param=value"),
    ("patient/Observation.rs?=laboratory", "param=value"),
    ("patient/Observation.rs?cat%20egory=x", "search parameter name"),
    ("patient/Observation.rs?category=%FF", "UTF-8"),
])
def test_malformed_resource_scopes_raise(text, fragment):
    with pytest.raises(ScopeError) as info:
        parse_scope(text)
    assert fragment in str(info.value)


def test_malformed_scope_inside_a_string_raises_unless_lenient():
    with pytest.raises(ScopeError):
        parse_scopes("openid patient/Obs ervation.rs")
    assert [s.to_string() for s in parse_scopes("openid patient/Observation.dus patient/Patient.r", strict=False)] == [
        "openid", "patient/Patient.r"]


def test_scope_error_is_a_value_error_with_details():
    with pytest.raises(ValueError) as info:
        parse_scope("user/Observation.xyz")
    assert isinstance(info.value, ScopeError) and info.value.scope == "user/Observation.xyz"


# -- canonical strings and coverage ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "patient/Observation.read", "user/*.*", "system/*.write", "patient/*.rs", "user/Encounter.cruds", LAB_SCOPE,
])
def test_to_string_round_trip(text):
    assert parse_scope(text).to_string() == text
    assert parse_scope(parse_scope(text).to_string()) == parse_scope(text)


@pytest.mark.parametrize("broad,narrow_scope,expected", [
    ("user/*.rs", "user/Observation.r", True),
    ("user/*.read", "user/Observation.rs", True),
    ("patient/Observation.rs", LAB_SCOPE, True),
    (LAB_SCOPE, "patient/Observation.rs", False),
    ("patient/Observation.rs", "patient/*.rs", False),
    ("user/*.cruds", "patient/Observation.r", False),
    ("patient/Observation.r", "patient/Observation.rs", False),
    ("openid", "openid", True),
])
def test_covers(broad, narrow_scope, expected):
    assert parse_scope(broad).covers(parse_scope(narrow_scope)) is expected


def test_interaction_letters_follow_the_spec():
    assert INTERACTION_LETTERS["history-instance"] == "r"
    assert INTERACTION_LETTERS["history-type"] == INTERACTION_LETTERS["history-system"] == "s"
    assert INTERACTION_LETTERS["patch"] == INTERACTION_LETTERS["update"] == "u"


# -- grant and narrow -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("requested,allowed,expected", [
    # identical and wildcard-covered requests come back as requested
    ("openid fhirUser patient/Observation.rs", "openid fhirUser patient/*.rs",
     "openid fhirUser patient/Observation.rs"),
    ("user/Observation.r", "user/*.rs", "user/Observation.r"),
    # intersection of letters
    ("patient/Observation.cruds", "patient/*.rs", "patient/Observation.rs"),
    # a wildcard request narrows to the allowed types
    ("patient/*.rs", "patient/Observation.rs patient/Condition.cruds", "patient/Observation.rs patient/Condition.rs"),
    # not allowed at all
    ("patient/Observation.rs offline_access", "patient/Condition.rs", ""),
    ("user/Observation.rs", "patient/*.rs", ""),
    # v1 stays v1 when still expressible, else v2
    ("patient/*.read", "patient/*.rs", "patient/*.read"),
    ("patient/*.*", "patient/*.rs", "patient/*.read"),
    ("patient/Observation.read", "patient/Observation.r", "patient/Observation.r"),
    # mixed v1 and v2
    ("patient/Patient.read patient/Observation.rs", "patient/*.read", "patient/Patient.read patient/Observation.rs"),
    # granular: a narrower request is fine; a resource-level request narrows to the allowed granular scope
    (LAB_SCOPE, "patient/Observation.rs", LAB_SCOPE),
    ("patient/Observation.rs", LAB_SCOPE, LAB_SCOPE),
    ("patient/*.rs", LAB_SCOPE, LAB_SCOPE),
    # two unrelated constraints grant nothing rather than an invented combination
    (LAB_SCOPE, VITALS_SCOPE, ""),
    # unknown scopes only verbatim
    ("__custom launch/patient", "__custom launch", "__custom"),
])
def test_grant(requested, allowed, expected):
    assert grant(requested, allowed) == expected


def test_grant_drops_parts_covered_by_another_part():
    assert grant("patient/Observation.cruds", "patient/*.rs patient/Observation.r") == "patient/Observation.rs"


def test_grant_only_granular_requested_never_grants_resource_level():
    requested = f"launch/patient openid fhirUser {LAB_SCOPE} {VITALS_SCOPE} patient/Patient.rs"
    granted = grant(requested, "launch/patient openid fhirUser patient/*.cruds")
    assert granted == requested
    assert "patient/Observation.rs " not in granted + " "


def test_grant_raises_on_malformed_request():
    with pytest.raises(ScopeError):
        grant("patient/Observation.dus", "patient/*.cruds")


def test_narrow_consent_unticks_scopes():
    requested = "openid fhirUser offline_access patient/Observation.rs patient/Condition.rs"
    assert narrow(requested, "openid fhirUser patient/Condition.rs") == "openid fhirUser patient/Condition.rs"


def test_narrow_expands_wildcard_to_ticked_types_and_ignores_tampering():
    approved = "patient/Observation.rs patient/Immunization.rs system/*.cruds user/*.rs"
    assert narrow("patient/*.rs", approved) == "patient/Observation.rs patient/Immunization.rs"


def test_narrow_never_widens():
    assert narrow("patient/Observation.r", "patient/Observation.cruds") == "patient/Observation.r"
    assert narrow(LAB_SCOPE, "patient/Observation.rs") == LAB_SCOPE


def test_covers_all_for_refresh_subset():
    original = "openid patient/*.rs offline_access"
    assert covers_all(original, "patient/Observation.rs offline_access")
    assert covers_all(original, LAB_SCOPE)
    assert not covers_all(original, "patient/Observation.cruds")
    assert not covers_all(original, "fhirUser")


# -- Access.allows --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("letters,interaction,allowed", [
    ("c", "create", True), ("c", "read", False), ("c", "search", False),
    ("r", "read", True), ("r", "vread", True), ("r", "history-instance", True),
    ("r", "search", False), ("r", "history-type", False), ("r", "update", False),
    ("u", "update", True), ("u", "patch", True), ("u", "create", False), ("u", "delete", False),
    ("d", "delete", True), ("d", "update", False),
    ("s", "search", True), ("s", "history-type", True), ("s", "history-system", True), ("s", "read", False),
    ("rs", "operation", True), ("r", "operation", False), ("s", "operation", False),
    ("cud", "read", False),  # "write access does not imply read access"
])
def test_allows_each_interaction_letter(letters, interaction, allowed):
    for context in ("patient", "user", "system"):
        a = access(f"{context}/Observation.{letters}", patient="1", fhir_user="Practitioner/9")
        assert a.allows(interaction, "Observation") is allowed, (context, letters, interaction)


def test_allows_wildcards_and_types():
    a = access("patient/*.rs user/Practitioner.read", patient="1", fhir_user="Patient/1", proxied_patients=("1",))
    assert a.allows("read", "Observation") and a.allows("search", "MedicationRequest")
    assert a.allows("read", "Practitioner") and not a.allows("create", "Observation")
    assert not access("patient/Observation.rs", patient="1").allows("read", "Condition")


def test_allows_all_types_only_with_wildcard():
    assert access("system/*.rs").allows("history-system", "*")
    assert not access("system/Observation.rs").allows("history-system", "*")


def test_non_resource_scopes_allow_nothing():
    a = access("openid fhirUser launch/patient offline_access __x", patient="1")
    assert not a.allows("read", "Patient")
    assert a.has_scope("offline_access") and not a.has_scope("online_access")


def test_patient_scope_without_patient_context_allows_nothing():
    a = access("patient/*.rs")
    assert not a.allows("read", "Observation")
    assert a.compartments("read", "Observation") == []
    assert "no patient is in context" in a.deny_reason("read", "Observation")


def test_unknown_interaction_is_a_programming_error():
    with pytest.raises(ValueError):
        access("system/*.cruds").allows("destroy", "Observation")


def test_unrestricted_allows_everything():
    a = Access.open()
    assert a.allows("delete", "Observation") and a.allows("history-system", "*")
    assert a.compartments("read", "Observation") is None and a.constraints("search", "Observation") is None
    assert a.deny_reason("create", "Patient") is None


# -- Access.compartments --------------------------------------------------------------------------------------------


def test_compartments_patient_scope_is_the_launch_patient():
    a = access("patient/*.rs", patient="123")
    assert a.compartments("search", "Observation") == ["Patient/123"]


def test_compartments_system_scope_is_not_confined():
    assert access("system/*.rs", grant_type="client_credentials").compartments("search", "Observation") is None


def test_compartments_practitioner_user_is_not_confined():
    a = access("user/*.cruds", fhir_user="Practitioner/9", user_id="u9")
    assert a.compartments("read", "Observation") is None
    assert access("user/*.rs", fhir_user="https://ehr.example/fhir/PractitionerRole/7").compartments(
        "read", "Observation") is None


def test_compartments_patient_user_is_confined_to_own_record():
    a = access("user/*.rs", fhir_user="Patient/1", user_id="u1", proxied_patients=("Patient/1",))
    assert a.compartments("search", "Observation") == ["Patient/1"]
    # the own record is there even if the token-time list forgot it
    assert access("user/*.rs", fhir_user="Patient/1").compartments("search", "Observation") == ["Patient/1"]


def test_compartments_related_person_proxy_with_two_patients():
    a = access("user/*.rs user/Appointment.cu", fhir_user="RelatedPerson/5", user_id="mum",
               proxied_patients=("Patient/11", "12"))
    assert a.compartments("search", "Observation") == ["Patient/11", "Patient/12"]
    assert a.compartments("create", "Appointment") == ["Patient/11", "Patient/12"]
    assert not a.allows("delete", "Appointment")


def test_compartments_user_without_patients_allows_nothing():
    a = access("user/*.rs", fhir_user="RelatedPerson/5")
    assert not a.allows("read", "Observation")
    assert "act for no patient" in a.deny_reason("read", "Observation")


def test_compartments_user_without_fhir_user_fails_closed():
    a = access("user/*.rs", user_id="u", proxied_patients=("Patient/3",))
    assert a.compartments("read", "Observation") == ["Patient/3"]


def test_most_permissive_wins_system_over_patient():
    a = access("patient/*.rs system/Observation.rs", patient="1")
    assert a.compartments("search", "Observation") is None
    assert a.compartments("search", "Condition") == ["Patient/1"]


def test_most_permissive_wins_user_list_over_patient():
    a = access("patient/*.rs user/*.rs", patient="11", fhir_user="RelatedPerson/5",
               proxied_patients=("Patient/11", "Patient/12"))
    assert a.compartments("read", "Observation") == ["Patient/11", "Patient/12"]


def test_compartments_apply_to_the_interaction_asked():
    a = access("patient/Observation.rs system/Observation.c", patient="1")
    assert a.compartments("create", "Observation") is None
    assert a.compartments("read", "Observation") == ["Patient/1"]


# -- Access.constraints ----------------------------------------------------------------------------------------------


def test_constraints_none_without_granular_scopes():
    assert access("patient/Observation.rs", patient="1").constraints("search", "Observation") is None


def test_constraints_alternatives_over_scopes():
    a = access(f"{LAB_SCOPE} {VITALS_SCOPE}", patient="1")
    assert a.constraints("search", "Observation") == [{"category": [LAB]}, {"category": [VITALS]}]
    assert a.constraints("read", "Observation") == [{"category": [LAB]}, {"category": [VITALS]}]
    assert a.compartments("search", "Observation") == ["Patient/1"]


def test_constraints_and_within_one_scope():
    a = access("patient/Observation.rs?category=laboratory&status=final", patient="1")
    assert a.constraints("search", "Observation") == [{"category": ["laboratory"], "status": ["final"]}]


def test_constraints_unconstrained_scope_wins():
    a = access(f"{LAB_SCOPE} patient/Observation.r", patient="1")
    assert a.constraints("read", "Observation") is None
    assert a.constraints("search", "Observation") == [{"category": [LAB]}]


def test_constraints_do_not_apply_to_other_types():
    a = access(f"{LAB_SCOPE} patient/Condition.rs", patient="1")
    assert a.constraints("search", "Condition") is None
    assert not a.allows("create", "Observation")


def test_mixed_contexts_and_constraints_never_widen():
    # system/ lab observations anywhere OR any observation of Patient/1: the projections keep the system rule
    a = access(f"patient/Observation.rs system/Observation.rs?category={LAB}", patient="1")
    assert a.compartments("search", "Observation") is None
    assert a.constraints("search", "Observation") == [{"category": [LAB]}]
    rules = a.rules("search", "Observation")
    assert {(r.compartments, r.constraint) for r in rules} == {(("Patient/1",), ()), (None, (("category", LAB),))}


def test_dominated_rules_are_dropped():
    a = access(f"{LAB_SCOPE} system/Observation.rs", patient="1")
    assert len(a.rules("search", "Observation")) == 1
    assert a.compartments("search", "Observation") is None and a.constraints("search", "Observation") is None


# -- deny_reason and claims ------------------------------------------------------------------------------------------


def test_deny_reason_names_the_missing_permission():
    a = access("patient/Observation.rs", patient="1")
    assert a.deny_reason("read", "Observation") is None
    reason = a.deny_reason("create", "Observation")
    assert "create" in reason and "Observation" in reason and "'c'" in reason


def test_claims_round_trip_through_json():
    a = Access(client_id="app", scopes=parse_scopes(f"openid fhirUser launch/patient patient/*.read {LAB_SCOPE}"),
               grant_type="authorization_code", user_id="u1", fhir_user="RelatedPerson/5", patient="11",
               encounter="e1", proxied_patients=("Patient/11", "Patient/12"))
    claims = json.loads(json.dumps(a.to_claims()))
    assert claims["scope"] == f"openid fhirUser launch/patient patient/*.read {LAB_SCOPE}"
    b = Access.from_token_claims(claims)
    assert b == a and b.scope == a.scope
    assert b.compartments("read", "Observation") == ["Patient/11"]


def test_claims_round_trip_unrestricted_and_defaults():
    a = Access.open("dev")
    assert Access.from_token_claims(a.to_claims()) == a
    b = Access.from_token_claims({"client_id": "bulk", "scope": "system/*.rs", "grant_type": "client_credentials"})
    assert b.compartments("search", "Patient") is None and b.proxied_patients == ()


def test_decisions_are_cached_and_parsing_is_shared():
    assert parse_scopes("patient/*.rs openid") is parse_scopes("patient/*.rs openid")
    a = access("patient/*.rs", patient="1")
    assert a.rules("read", "Observation") == a.rules("read", "Observation")
    assert a._rules("read", "Observation") is a._rules("read", "Observation")


def test_scope_repr_is_readable():
    assert repr(parse_scope("user/*.*")) == "Scope('user/*.*')"
    assert isinstance(parse_scope("openid"), Scope)

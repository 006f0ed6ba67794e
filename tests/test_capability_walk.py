"""CapabilityStatement accuracy: walk `GET [base]/metadata` and call everything it declares, and probe what it does not.

One dedicated server (2 workers) is walked once per module by a pool of 8 client threads; the tests below only judge
the findings of that walk. For every R4 resource type:

- declared: one real call per declared interaction on an instance created first (a minimal valid R4 instance derived
  from the official element definitions: required elements, codes of required bindings), the `conditional*`,
  `updateCreate`, `readHistory` and `versioning` flags, every `patchFormat`, every declared operation, every
  `searchInclude` and every distinct `searchRevInclude` source parameter (`Prefer: handling=strict`);
- every declared `searchParam`: a second, "rich" instance with a value in every element is created (that create
  must work too), the parameter's official FHIRPath expression is evaluated on it (fhirpathpy) to get a value it
  holds, and the strict search `name=value&_id=<it>` must find it while a value it does not hold must not; when the
  instance holds no value for the parameter, a strict search with a value of the parameter's type must answer 200;
- and the reverse: official search parameters and `_include` targets not declared must be refused under strict
  handling (400), official operations not declared must not answer 2xx, types not declared must not be served.

At system level: the declared interactions, search parameters, operations, formats and compartments (a compartment
search on each member type), and the undeclared ones; `rest.security` against a second server with authorization on.

A finding is "declared but failing", "working but not declared" or "statement is wrong" (e.g. a declared parameter
whose definition is not the official one). Known server bugs are listed in `KNOWN_BUGS` (finding key ->
"SERVER BUG: ..."): a test whose findings are all known is marked xfail; a known bug that no longer shows makes the
test fail, so that the list stays true.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from json import dumps
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
from fhirpathpy import evaluate as fhirpath
from fhirpathpy.models import models as fhirpath_models

from conformance.definitions import (
    compartment_definition,
    element_definitions,
    required_bindings,
    resource_types,
    search_parameters,
    search_parameters_for,
    valueset_codes,
)
from tests.servers import ServerProcess, serve

FHIR_JSON = "application/fhir+json"
JSON_PATCH = "application/json-patch+json"
STRICT = {"Prefer": "handling=strict"}
R4_TYPES: list[str] = sorted(resource_types())
COMPARTMENTS = ("Patient", "Encounter", "RelatedPerson", "Practitioner", "Device")
NOT_A_TYPE = "NotAResourceType"
THREADS = 8

# Known server bugs: finding key -> reason. Keys are "<category>/<scope>/<what>", as printed in a failure.
_R4B_EVIDENCE = ("validation uses the fhir.resources R4B model, whose {t} was redesigned: the R4 elements are refused "
                 "as unknown (422), though the statement declares FHIR 4.0.1 and the R4 profile of {t}")
KNOWN_BUGS: dict[str, str] = {
    "interactions/Evidence/create": "SERVER BUG: a valid R4 Evidence (status + exposureBackground) is refused with "
                                    "422 'Unknown element exposureBackground', 'Missing required element "
                                    "variableDefinition': " + _R4B_EVIDENCE.format(t="Evidence"),
    "interactions/Evidence/create (an instance with a value in every element)":
        "SERVER BUG: R4 Evidence elements (name, copyright, effectivePeriod, exposureBackground, exposureVariant, "
        "jurisdiction, ...) are refused: " + _R4B_EVIDENCE.format(t="Evidence"),
    "interactions/EvidenceVariable/create (an instance with a value in every element)":
        "SERVER BUG: R4 EvidenceVariable elements (approvalDate, characteristic.participantEffective[x], "
        "characteristic.timeFromStart as Duration, ...) are refused: " + _R4B_EVIDENCE.format(t="EvidenceVariable"),
}

# ----------------------------------------------------------------------------------------------------------------
# Minimal valid resources, derived from the official element definitions (conformance/r4/elements.json)

XHTML = '<div xmlns="http://www.w3.org/1999/xhtml">a</div>'
PRIMITIVE_VALUES: dict[str, Any] = {
    "boolean": True, "integer": 1, "positiveInt": 1, "unsignedInt": 0, "decimal": 1, "string": "a", "markdown": "a",
    "code": "a", "id": "a", "uri": "http://example.org/a", "url": "http://example.org/a",
    "canonical": "http://example.org/a", "oid": "urn:oid:1.2.3",
    "uuid": "urn:uuid:6f2b9d3e-1c4a-4b8e-9f1d-2a3b4c5d6e7f",
    "date": "2020-01-01", "dateTime": "2020-01-01", "instant": "2020-01-01T00:00:00Z", "time": "10:00:00",
    "base64Binary": "AAAA", "xhtml": XHTML,
}
# Datatypes whose smallest valid value is better written by hand than derived (no required children, or invariants).
FIXED_VALUES: dict[str, Any] = {
    "Reference": {"display": "a"}, "CodeableConcept": {"text": "a"},
    "Coding": {"system": "http://example.org", "code": "a"},
    "Extension": {"url": "http://example.org/extension", "valueString": "a"},
    "Narrative": {"status": "generated", "div": XHTML},
    "Resource": {"resourceType": "Basic", "code": {"text": "a"}},
    "Expression": {"language": "text/fhirpath", "expression": "true"},  # exp-1; language from expression-language
}
# fhir.resources R4B (the server's validation models) redesigned Evidence; this R4B-shaped instance only serves to
# keep walking the other interactions of the type when the R4 instance is refused (which is itself a finding).
R4B_FALLBACK: dict[str, dict] = {
    "Evidence": {"resourceType": "Evidence", "status": "active",
                 "variableDefinition": [{"variableRole": {"text": "a"}}]},
}


def _bound(owner: str, path: str) -> tuple[str, str] | None:
    """The (system, code) of the required binding on `owner.path` first in sort order; None when unbound."""
    url = required_bindings(owner).get(f"{owner}.{path}")
    codes = valueset_codes(url) if url else None
    return min(codes, key=lambda pair: (pair[1], pair[0])) if codes else None


def _code(owner: str, path: str) -> str:
    """A code of the required binding on `owner.path` (the first in sort order), else "a"."""
    bound = _bound(owner, path)
    return bound[1] if bound else "a"


def _datatype(type_name: str) -> dict:
    """The smallest non-empty value of a complex datatype: its required children, or one primitive child."""
    value = _required_children(type_name, element_definitions(type_name), "")
    if value:
        return value
    children = [(path, e) for path, e in sorted(element_definitions(type_name).items())
                if "." not in path and path != "id" and e["types"][0] in PRIMITIVE_VALUES]
    if not children:  # only complex children: an extension is the smallest valid content (ele-1)
        return {"extension": [FIXED_VALUES["Extension"]]}
    path, element = sorted(children, key=lambda c: c[1]["types"][0] == "code")[0]  # a code may be bound
    value = PRIMITIVE_VALUES[element["types"][0]]
    return {path: value if element["max"] == "1" else [value]}


# Values the server's scheduling rules need (a slot ends after it starts and is busy only through a booked
# appointment; an Appointment that occupies slots needs slots that exist): a free slot and a proposed appointment.
SCHEDULING_VALUES: dict[str, Any] = {"Slot.end": "2020-01-01T00:30:00Z", "Slot.status": "free",
                                     "Appointment.status": "proposed"}


def _value(owner: str, defs: dict[str, dict], path: str, type_name: str) -> Any:
    """A value for the element `path` of `owner` of type `type_name`."""
    if f"{owner}.{path}" in SCHEDULING_VALUES:
        return SCHEDULING_VALUES[f"{owner}.{path}"]
    if type_name == "code":
        return _code(owner, path)
    if type_name in PRIMITIVE_VALUES:
        return PRIMITIVE_VALUES[type_name]
    if type_name in FIXED_VALUES:
        return FIXED_VALUES[type_name]
    if type_name in ("BackboneElement", "Element"):
        return _required_children(owner, defs, defs[path].get("ref", path))
    return _datatype(type_name)


def _required_children(owner: str, defs: dict[str, dict], prefix: str) -> dict:
    """The required (min >= 1) children of the element `prefix` ("" = the root), each with a value."""
    out: dict[str, Any] = {}
    for path, element in sorted(defs.items()):
        parent, _, name = path.rpartition(".")
        if parent != prefix or element["min"] < 1:
            continue
        type_name = element["types"][0]
        key = name[:-3] + type_name[0].upper() + type_name[1:] if name.endswith("[x]") else name
        value = _value(owner, defs, path, type_name)
        out[key] = value if element["max"] == "1" else [value]
    return out


def minimal_resource(rtype: str) -> dict:
    """A minimal valid R4 instance of `rtype`: required elements only, codes from their required bindings."""
    return {"resourceType": rtype, **_required_children(rtype, element_definitions(rtype), "")}


# ----------------------------------------------------------------------------------------------------------------
# Rich resources: a value in every element (backbone elements to a few levels), for checking what searches find

UCUM = "http://unitsofmeasure.org"
WALK_SYSTEM = "http://example.org/walk"


def _quantity(code: str) -> dict:
    """A UCUM Quantity of 1 `code`."""
    return {"value": 1, "unit": code, "system": UCUM, "code": code}


_CONCEPT = {"coding": [{"system": WALK_SYSTEM, "code": "walk"}], "text": "walk"}
RICH_DATATYPES: dict[str, Any] = {
    "Identifier": {"system": WALK_SYSTEM, "value": "walk"}, "CodeableConcept": _CONCEPT,
    "Coding": _CONCEPT["coding"][0], "Quantity": _quantity("mg"), "Age": _quantity("a"), "Duration": _quantity("min"),
    "Count": _quantity("1"), "Distance": _quantity("m"), "Money": {"value": 1, "currency": "USD"},
    "Range": {"low": _quantity("mg"), "high": _quantity("mg")},
    "Ratio": {"numerator": _quantity("mg"), "denominator": _quantity("mg")},
    "Period": {"start": "2020-01-01", "end": "2020-01-01"},
    "HumanName": {"family": "walk", "given": ["walk"], "text": "walk"},
    "Address": {"use": "home", "text": "walk", "line": ["walk"], "city": "walk", "district": "walk", "state": "walk",
                "postalCode": "walk", "country": "walk"},
    "ContactPoint": {"system": "phone", "value": "walk", "use": "home"},
    "Attachment": {"contentType": "text/plain", "url": "http://example.org/walk", "title": "walk"},
    "Timing": {"event": ["2020-01-01"]}, "Annotation": {"text": "walk"}, "Dosage": {"text": "walk"},
    "Expression": FIXED_VALUES["Expression"],
    "UsageContext": {"code": {"system": "http://terminology.hl7.org/CodeSystem/usage-context-type", "code": "focus"},
                     "valueCodeableConcept": _CONCEPT},
}
RICH_PRIMITIVES: dict[str, Any] = {
    **PRIMITIVE_VALUES, "unsignedInt": 1, "string": "walk", "markdown": "walk", "id": "walk",
    "uri": "http://example.org/walk", "url": "http://example.org/walk", "canonical": "http://example.org/walk",
}
RICH_META = {"tag": [{"system": WALK_SYSTEM, "code": "walk"}], "security": [{"system": WALK_SYSTEM, "code": "walk"}],
             "profile": ["http://example.org/walk"], "source": "http://example.org/walk"}
# Resource-level elements left out of rich resources (meta is set apart; the others are not searched).
RICH_SKIPPED = {"id", "extension", "modifierExtension", "contained", "meta", "implicitRules", "language", "text"}
# Elements whose value set HAPI's validator checks although the binding is not required (languages: BCP-47 only;
# UCUM units), or whose required value set the server cannot enumerate (LOINC answer list LL379-9): real codes.
_LANGUAGE = {"coding": [{"system": "urn:ietf:bcp:47", "code": "en"}], "text": "English"}
_UCUM_CONCEPT = {"coding": [{"system": UCUM, "code": "mg"}], "text": "mg"}
RICH_BOUND: dict[str, Any] = {
    "ClaimResponse.processNote.language": _LANGUAGE, "ExplanationOfBenefit.processNote.language": _LANGUAGE,
    "Patient.communication.language": _LANGUAGE, "RelatedPerson.communication.language": _LANGUAGE,
    "Practitioner.communication": _LANGUAGE, "HealthcareService.communication": _LANGUAGE,
    "CodeSystem.concept.designation.language": "en", "ValueSet.compose.include.concept.designation.language": "en",
    "ValueSet.expansion.contains.designation.language": "en",
    "ObservationDefinition.quantitativeDetails.customaryUnit": _UCUM_CONCEPT,
    "ObservationDefinition.quantitativeDetails.unit": _UCUM_CONCEPT,
    "ResearchElementDefinition.characteristic.unitOfMeasure": _UCUM_CONCEPT,
    "MolecularSequence.structureVariant.variantType": {"coding": [{"system": "http://loinc.org", "code": "LA6692-3"}],
                                                       "text": "Deletion"},
}
RICH_DEPTH = 3
_SIMPLE_PATH = re.compile(r"\(?([A-Za-z]+(?:\.[A-Za-z]+)+)(?: as \w+\)?|\.where\(resolve\(\) is (\w+)\))?")


@cache
def _reference_targets() -> dict[str, set[str]]:
    """Element path ("Observation.subject") -> the types official reference parameters on it may point to."""
    out: dict[str, set[str]] = {}
    for param in search_parameters():
        if param["type"] != "reference":
            continue
        for part in (param.get("expression") or "").split("|"):
            match = _SIMPLE_PATH.fullmatch(part.strip())
            if match:
                out.setdefault(match.group(1), set()).update([match.group(2)] if match.group(2)
                                                             else param.get("target", []))
    return out


def _rich_reference(owner: str, path: str) -> dict:
    """A reference to a type the element's search parameters accept (Patient when one does)."""
    targets = _reference_targets().get(f"{owner}.{path.removesuffix('[x]')}", set()) - {"Resource"}
    target = "Patient" if "Patient" in targets or not targets else sorted(targets)[0]
    return {"reference": f"{target}/walk"}


def _rich_value(owner: str, defs: dict[str, dict], path: str, type_name: str, depth: int) -> Any:
    """A value for the element `path` of `owner`; None to leave it out."""
    if f"{owner}.{path}" in RICH_BOUND:
        return RICH_BOUND[f"{owner}.{path}"]
    if f"{owner}.{path}" in SCHEDULING_VALUES:
        return SCHEDULING_VALUES[f"{owner}.{path}"]
    if type_name == "code":
        return _code(owner, path)
    if type_name in RICH_PRIMITIVES:
        return RICH_PRIMITIVES[type_name]
    if type_name == "Reference":
        return _rich_reference(owner, path)
    if type_name == "CodeableConcept" and (bound := _bound(owner, path)):  # a required binding wants its coding
        return {"coding": [{"system": bound[0], "code": bound[1]}], "text": "walk"}
    if type_name in RICH_DATATYPES:
        return RICH_DATATYPES[type_name]
    if type_name in ("BackboneElement", "Element"):
        if "ref" in defs[path] or depth >= RICH_DEPTH:  # recursive structures: only what they require
            return _required_children(owner, defs, defs[path].get("ref", path)) if defs[path]["min"] else None
        return _rich_children(owner, defs, path, depth + 1)
    if type_name in ("Resource", "Extension", "Meta", "Narrative"):
        return None
    return _datatype(type_name)


def _rich_children(owner: str, defs: dict[str, dict], prefix: str, depth: int = 0) -> dict:
    """Every child of the element `prefix` ("" = the root) with a value (the first type of a choice)."""
    out: dict[str, Any] = {}
    for path, element in sorted(defs.items()):
        parent, _, name = path.rpartition(".")
        if parent != prefix or (not prefix and name in RICH_SKIPPED):
            continue
        if name == "id":  # an element id, unique in the resource as R4 wants it (one instance per path here)
            out["id"] = "walk-" + prefix.replace(".", "-")
            continue
        type_name = element["types"][0]
        key = name[:-3] + type_name[0].upper() + type_name[1:] if name.endswith("[x]") else name
        value = _rich_value(owner, defs, path, type_name, depth)
        if value not in (None, {}):
            out[key] = value if element["max"] == "1" else [value]
    return out


def rich_resource(rtype: str) -> dict:
    """An R4 instance of `rtype` with a value in every element: R4 elements, cardinalities and required codes
    respected, invariants not considered."""
    return {"resourceType": rtype, "meta": RICH_META, **_rich_children(rtype, element_definitions(rtype), "")}


# ----------------------------------------------------------------------------------------------------------------
# Search values: of each parameter type that match nothing, and those that match a given resource

SEARCH_PARAMETERS_BY_URL: dict[str, dict] = {p["url"]: p for p in search_parameters()}
NO_MATCH: dict[str, list[str]] = {
    "token": ["nomatch", "false"], "string": ["zzz"], "date": ["1901", "ge1901-01-01"], "number": ["99999"],
    "quantity": ["99999", "99999||mg"], "uri": ["http://nomatch.example.org"], "special": ["x"],
}
_RESOLVE_IS = re.compile(r"where\(resolve\(\) is (\w+)\)")
_RESOURCE_PATH = re.compile(r"(?<![A-Za-z])(?:Domain)?Resource\.")


def no_match_values(param: dict) -> list[str]:
    """Values of the parameter's type that no walked resource holds, best first."""
    kind = param["type"]
    if kind == "reference":
        targets = param.get("target") or []
        return [f"{targets[0]}/nomatch", "nomatch"] if targets else ["nomatch"]
    if kind == "composite":
        parts = []
        for component in param.get("component", []):
            inner = SEARCH_PARAMETERS_BY_URL.get(component["definition"])
            parts.append(no_match_values(inner)[0] if inner else "nomatch")
        return ["$".join(parts)]
    return NO_MATCH.get(kind, ["nomatch"])


def _token(node: Any) -> str | None:
    """A token search value for a FHIRPath result (Coding, CodeableConcept, Identifier, ContactPoint, primitive)."""
    if isinstance(node, bool):
        return str(node).lower()
    if isinstance(node, str):
        return node
    if not isinstance(node, dict):
        return None
    if node.get("coding"):
        coding = node["coding"][0]
        return f"{coding.get('system', '')}|{coding['code']}"
    if "code" in node:
        return f"{node['system']}|{node['code']}" if node.get("system") else node["code"]
    if "value" in node:  # Identifier: system|value; ContactPoint (whose system is a code, not a URI): value
        system = node.get("system") or ""
        return f"{system}|{node['value']}" if system.startswith(("http:", "https:", "urn:")) else str(node["value"])
    return None


def _string(node: Any) -> str | None:
    """A string (or uri) search value for a FHIRPath result (primitive, HumanName, Address)."""
    if isinstance(node, str):
        return node
    if isinstance(node, dict):
        return next((node[k] for k in ("family", "city", "text", "value", "display") if isinstance(node.get(k), str)),
                    None)
    return None


def _date(node: Any) -> str | None:
    """A date search value (the day) for a FHIRPath result (date, dateTime, instant, Period, Timing)."""
    if isinstance(node, str):
        return node[:10]
    if isinstance(node, dict):
        if node.get("start"):
            return node["start"][:10]
        if node.get("event"):
            return node["event"][0][:10]
    return None


def _quantity_value(node: Any) -> str | None:
    """A quantity search value (the number alone) for a FHIRPath result (Quantity, Money, Range, Ratio)."""
    if isinstance(node, dict):
        for key in ("value", "low", "numerator"):
            if key in node:
                return str(node[key]) if key == "value" else _quantity_value(node[key])
    return None


_MATCHERS: dict[str, Callable[[Any], str | None]] = {
    "token": _token, "string": _string, "date": _date, "quantity": _quantity_value, "uri": _string,
    "reference": lambda n: n if isinstance(n, str) else (n.get("reference") if isinstance(n, dict) else None),
    "number": lambda n: str(n) if isinstance(n, int | float) and not isinstance(n, bool) else None,
}


def matching_value(resource: dict, param: dict) -> str | None:
    """A search value that must find `resource`, from the parameter's official FHIRPath expression evaluated on it
    (`resolve() is X` read as "the reference is to an X"); None when it holds no value for the parameter."""
    matcher = _MATCHERS.get(param["type"])
    expression = _RESOLVE_IS.sub(lambda m: f"where(reference.startsWith('{m.group(1)}/'))",
                                 param.get("expression") or "")
    expression = _RESOURCE_PATH.sub(f"{resource['resourceType']}.", expression)  # fhirpathpy: no type inheritance
    if matcher is None or not expression:
        return None
    try:
        nodes = fhirpath(resource, expression, {}, fhirpath_models["r4"])
    except Exception:  # an expression fhirpathpy cannot evaluate: no oracle for this parameter
        return None
    return next((value for value in map(matcher, nodes) if value), None)


# Official R4 operations (https://hl7.org/fhir/R4/operationslist.html) and those this project plans
# (Bulk Data $export, scheduling $find/$hold/$book): where each is defined, by level.
OFFICIAL_OPERATIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "Resource": {"meta": ("type", "instance"), "meta-add": ("instance",), "meta-delete": ("instance",),
                 "validate": ("type", "instance"), "graphql": ("instance",)},
    "Patient": {"everything": ("type", "instance"), "match": ("type",), "export": ("type",)},
    "Group": {"export": ("instance",)},
    "Encounter": {"everything": ("instance",)},
    "Observation": {"lastn": ("type",), "stats": ("type",)},
    "Composition": {"document": ("type", "instance")},
    "CodeSystem": {"lookup": ("type",), "subsumes": ("type", "instance"), "validate-code": ("type", "instance"),
                   "find-matches": ("type", "instance")},
    "ValueSet": {"expand": ("type", "instance"), "validate-code": ("type", "instance")},
    "ConceptMap": {"translate": ("type", "instance"), "closure": ("type",)},
    "Measure": {"evaluate-measure": ("type", "instance"), "care-gaps": ("type",), "collect-data": ("type", "instance"),
                "data-requirements": ("instance",), "submit-data": ("type", "instance")},
    "Library": {"data-requirements": ("instance",)},
    "ActivityDefinition": {"apply": ("instance",), "data-requirements": ("instance",)},
    "PlanDefinition": {"apply": ("instance",), "data-requirements": ("instance",)},
    "StructureDefinition": {"snapshot": ("type", "instance"), "questionnaire": ("type", "instance")},
    "StructureMap": {"transform": ("type", "instance")},
    "CapabilityStatement": {"conforms": ("type",), "implements": ("instance",), "subset": ("instance",)},
    "NamingSystem": {"preferred-id": ("type",)},
    "Claim": {"submit": ("type",)},
    "Appointment": {"find": ("type",), "hold": ("type", "instance"), "book": ("type", "instance"),
                    "reschedule": ("instance",), "cancel": ("instance",), "noshow": ("instance",)},
}
# Operations that cannot succeed on empty Parameters (a period, a slot, a hold, an appointment in another state):
# when declared, an OperationOutcome 400/409/422 shows they are there (test_scheduling.py covers them in full).
NEEDS_INPUT = {("Appointment", name) for name in ("find", "hold", "book", "reschedule", "cancel", "noshow")}
SYSTEM_OPERATIONS = ("meta", "convert", "graphql", "process-message", "closure", "versions", "export", "reindex",
                     "expunge", "diff", "lastn")


def operations_of(rtype: str) -> dict[str, tuple[str, ...]]:
    """Official (and planned) operations on `rtype` with their levels."""
    return {**OFFICIAL_OPERATIONS["Resource"], **OFFICIAL_OPERATIONS.get(rtype, {})}


# ----------------------------------------------------------------------------------------------------------------
# The walker


@dataclass(frozen=True)
class Finding:
    """One mismatch between the statement and the server."""

    key: str  # "<category>/<scope>/<what>"
    problem: str  # "declared but failing" | "working but not declared" | "statement is wrong"
    exchange: str  # the request and the response that show it

    def __str__(self) -> str:
        return f"{self.key}: {self.problem}\n    {self.exchange}"


def describe(r: requests.Response) -> str:
    """A request and its response, short enough for a report."""
    req = r.request
    head = {k: v for k, v in req.headers.items() if k in ("Content-Type", "Prefer", "If-None-Exist", "If-Match",
                                                           "If-None-Match", "If-Modified-Since", "Accept")
            and v != "*/*"}
    body = req.body.decode() if isinstance(req.body, bytes) else (req.body or "")
    text = f"{req.method} {req.url}"
    if head:
        text += f" {head}"
    if body:
        text += f" body={body[:300]}"
    return f"{text} -> {r.status_code} {r.text[:400]}"


class Walker:
    """HTTP calls to one server (a keep-alive session per thread) and the findings they produce."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.calls = 0
        self.findings: dict[tuple[str, str], list[Finding]] = defaultdict(list)
        self._lock = threading.Lock()
        self._local = threading.local()

    def call(self, method: str, path: str, *, json: Any = None, data: Any = None, params: Any = None,
             headers: dict[str, str] | None = None) -> requests.Response:
        """One HTTP request to `[base]/path` (JSON bodies as FHIR JSON)."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        headers = dict(headers or {})
        if json is not None:
            headers.setdefault("Content-Type", FHIR_JSON)
        url = f"{self.base}/{path}" if path else self.base
        with self._lock:
            self.calls += 1
        return session.request(method, url, json=json, data=data, params=params, headers=headers, timeout=60)

    def add(self, category: str, scope: str, what: str, problem: str, exchange: str) -> None:
        """Record a finding of the test item (category, scope)."""
        with self._lock:
            self.findings[(category, scope)].append(Finding(f"{category}/{scope}/{what}", problem, exchange))

    def judge(self, category: str, scope: str, what: str, declared: bool, works: bool,
              r: requests.Response | None, note: str = "") -> None:
        """Compare what the statement declares with what the server does."""
        if declared == works:
            return
        problem = "declared but failing" if declared else "working but not declared"
        exchange = (describe(r) if r is not None else "no request could be made") + (f" ({note})" if note else "")
        self.add(category, scope, what, problem, exchange)


def ok(r: requests.Response, status: int | tuple[int, ...] = 200) -> bool:
    """The response has one of the statuses."""
    return r.status_code in ((status,) if isinstance(status, int) else status)


def body(r: requests.Response) -> dict:
    """The JSON body, or {} when there is none."""
    try:
        value = r.json()
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def is_bundle(r: requests.Response, kind: str) -> bool:
    """A 200 Bundle of `kind`."""
    b = body(r)
    return r.status_code == 200 and b.get("resourceType") == "Bundle" and b.get("type") == kind


def version_of(r: requests.Response) -> str | None:
    """meta.versionId of a resource body."""
    return (body(r).get("meta") or {}).get("versionId")


def self_link_params(r: requests.Response) -> set[str]:
    """Parameter names of a searchset's self link (the parameters the server applied)."""
    for link in body(r).get("link", []):
        if link.get("relation") == "self":
            return {name for name, _ in parse_qsl(urlsplit(link["url"]).query, keep_blank_values=True)}
    return set()


def parameters(**resources: dict) -> dict:
    """A Parameters resource carrying resources by name."""
    return {"resourceType": "Parameters", "parameter": [{"name": k, "resource": v} for k, v in resources.items()]}


def without_errors(r: requests.Response) -> bool:
    """A 200 OperationOutcome with no error or fatal issue."""
    b = body(r)
    return (r.status_code == 200 and b.get("resourceType") == "OperationOutcome"
            and not any(i.get("severity") in ("error", "fatal") for i in b.get("issue", [])))


# -- one declared resource type: interactions and operations -----------------------------------------------------


def walk_type(w: Walker, entry: dict, patch_formats: list[str]) -> None:
    """Create an instance and call every interaction and operation on it; compare with the statement."""
    rtype = entry["type"]
    declared = {i["code"] for i in entry.get("interaction", [])}

    def judge(what: str, is_declared: bool, works: bool, r: requests.Response | None, note: str = "") -> None:
        w.judge("interactions", rtype, what, is_declared, works, r, note)

    resource = minimal_resource(rtype)
    r = w.call("POST", rtype, json=resource)
    location = r.headers.get("Location", "")
    works = ok(r, 201) and body(r).get("resourceType") == rtype and f"/{rtype}/" in location
    judge("create", "create" in declared, works, r, "a minimal valid R4 instance from the official definitions")
    if not ok(r, 201) and rtype in R4B_FALLBACK:
        resource = R4B_FALLBACK[rtype]
        r = w.call("POST", rtype, json=resource)
    rid = body(r).get("id") or location.split(f"/{rtype}/")[-1].split("/")[0]
    if not ok(r, 201) or not rid:
        rid = f"{rtype}-walk"
        r = w.call("PUT", f"{rtype}/{rid}", json={**resource, "id": rid})
        if not ok(r, (200, 201)):
            w.add("interactions", rtype, "instance", "declared but failing",
                  f"no instance of {rtype} could be written: {describe(r)}")
            return
    resource = {**resource, "id": rid}

    r = w.call("GET", f"{rtype}/{rid}")
    judge("read", "read" in declared, ok(r) and body(r).get("id") == rid, r)
    etag, modified = r.headers.get("ETag"), r.headers.get("Last-Modified")
    judge("versioning (meta.versionId, ETag)", entry.get("versioning", "no-version") != "no-version",
          version_of(r) == "1" and etag == 'W/"1"', r)
    conditional_read = entry.get("conditionalRead", "not-supported")
    r = w.call("GET", f"{rtype}/{rid}", headers={"If-None-Match": etag or 'W/"1"'})
    judge("conditionalRead If-None-Match", conditional_read in ("full-support", "not-match"), ok(r, 304), r)
    r = w.call("GET", f"{rtype}/{rid}", headers={"If-Modified-Since": modified or "Wed, 01 Jan 2020 00:00:00 GMT"})
    judge("conditionalRead If-Modified-Since", conditional_read in ("full-support", "modified-since"), ok(r, 304), r)

    r = w.call("PUT", f"{rtype}/{rid}", json=resource)
    judge("update", "update" in declared, ok(r) and version_of(r) == "2", r)
    r = w.call("GET", f"{rtype}/{rid}/_history/2")
    judge("vread", "vread" in declared, ok(r) and version_of(r) == "2", r)
    r = w.call("GET", f"{rtype}/{rid}/_history/1")
    judge("readHistory (vread of an older version)", bool(entry.get("readHistory")), ok(r) and version_of(r) == "1", r)

    json_patch = [{"op": "add", "path": "/implicitRules", "value": "http://example.org/rules"}]
    r = w.call("PATCH", f"{rtype}/{rid}", data=dumps(json_patch),
               headers={"Content-Type": JSON_PATCH})
    judge(f"patch {JSON_PATCH}", "patch" in declared and JSON_PATCH in patch_formats,
          ok(r) and version_of(r) == "3" and body(r).get("implicitRules") == "http://example.org/rules", r)
    fhirpath_patch = {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": f"{rtype}.implicitRules"},
        {"name": "value", "valueUri": "http://example.org/rules2"}]}]}
    r = w.call("PATCH", f"{rtype}/{rid}", json=fhirpath_patch)
    judge(f"patch {FHIR_JSON} (FHIRPath Patch)", "patch" in declared and FHIR_JSON in patch_formats,
          ok(r) and body(r).get("implicitRules") == "http://example.org/rules2", r)

    r = w.call("GET", f"{rtype}/{rid}/_history")
    judge("history-instance", "history-instance" in declared,
          is_bundle(r, "history") and len(body(r).get("entry", [])) >= 3, r)
    r = w.call("GET", f"{rtype}/_history")
    judge("history-type", "history-type" in declared, is_bundle(r, "history") and any(
        e.get("fullUrl", "").endswith(f"/{rtype}/{rid}") for e in body(r).get("entry", [])), r)

    r = w.call("GET", rtype, params={"_id": rid})
    judge("search-type (GET)", "search-type" in declared, is_bundle(r, "searchset") and body(r).get("total") == 1, r)
    r = w.call("POST", f"{rtype}/_search", data={"_id": rid})
    judge("search-type (POST _search)", "search-type" in declared,
          is_bundle(r, "searchset") and body(r).get("total") == 1, r)

    r = w.call("POST", rtype, json=resource, headers={"If-None-Exist": f"_id={rid}"})
    judge("conditionalCreate (If-None-Exist matching one)", bool(entry.get("conditionalCreate")),
          ok(r) and f"/{rtype}/{rid}/" in r.headers.get("Location", ""), r)
    r = w.call("PUT", rtype, params={"_id": rid}, json=resource)
    judge("conditionalUpdate", bool(entry.get("conditionalUpdate")), ok(r) and body(r).get("id") == rid, r)

    other = f"{rtype[:40]}-{uuid.uuid4().hex[:12]}"
    r = w.call("PUT", f"{rtype}/{other}", json={**resource, "id": other})
    judge("updateCreate (PUT of a new id)", bool(entry.get("updateCreate")), ok(r, 201), r)
    conditional_delete = entry.get("conditionalDelete", "not-supported")
    r = w.call("DELETE", rtype, params={"_id": f"{rid},{other}"})
    multiple_works = ok(r, (200, 204))
    judge("conditionalDelete matching several (multiple)", conditional_delete == "multiple", multiple_works, r)
    if conditional_delete == "single":
        judge("conditionalDelete single: several matches refused with 412", True, ok(r, 412), r)
    if not multiple_works:
        r = w.call("DELETE", rtype, params={"_id": other})
        gone = w.call("GET", f"{rtype}/{other}")
        judge("conditionalDelete matching one (single)", conditional_delete in ("single", "multiple"),
              ok(r, (200, 204)) and ok(gone, 410), r)

    walk_type_operations(w, entry, resource)
    if entry.get("versioning") == "versioned-update":
        r = w.call("PUT", f"{rtype}/{rid}", json=resource)
        judge("versioning versioned-update (update without If-Match refused)", True, ok(r, (409, 412)), r)

    r = w.call("DELETE", f"{rtype}/{rid}")
    gone = w.call("GET", f"{rtype}/{rid}")
    judge("delete", "delete" in declared, ok(r, (200, 204)) and ok(gone, 410), r if not ok(r, (200, 204)) else gone)


def walk_type_operations(w: Walker, entry: dict, resource: dict) -> None:
    """Every declared operation once; every official operation not declared must not answer 2xx."""
    rtype, rid = entry["type"], resource["id"]
    declared = {op["name"]: op.get("definition", "") for op in entry.get("operation", [])}

    def judge(what: str, is_declared: bool, works: bool, r: requests.Response | None) -> None:
        w.judge("operations", rtype, what, is_declared, works, r)

    if "validate" in declared:
        fresh = {k: v for k, v in resource.items() if k != "id"}
        r = w.call("POST", f"{rtype}/$validate", json=parameters(resource=fresh))
        judge("$validate (type level, valid resource)", True, without_errors(r), r)
        r = w.call("POST", f"{rtype}/$validate", json=parameters(resource={"resourceType": rtype, "bogus": 1}))
        judge("$validate (type level, invalid resource reported)", True,
              ok(r) and not without_errors(r) and body(r).get("resourceType") == "OperationOutcome", r)
        r = w.call("POST", f"{rtype}/{rid}/$validate", params={"mode": "update"}, json=parameters(resource=resource))
        judge("$validate (instance level, mode=update)", True, without_errors(r), r)
        judge("$validate definition", True,
              declared["validate"] == "http://hl7.org/fhir/OperationDefinition/Resource-validate", None)
    for name in sorted(set(operations_of(rtype)) | set(declared)):
        if name == "validate" and name in declared:
            continue
        levels = operations_of(rtype).get(name, ("type", "instance"))
        # Every operation may be invoked with POST (https://hl7.org/fhir/R4/operations.html#executing).
        responses = [w.call("POST", f"{rtype}/${name}" if level == "type" else f"{rtype}/{rid}/${name}",
                            json={"resourceType": "Parameters"}) for level in levels or ("type",)]
        working = [r for r in responses if 200 <= r.status_code < 300 or (
            (rtype, name) in NEEDS_INPUT and r.status_code in (400, 409, 422)
            and body(r).get("resourceType") == "OperationOutcome")]
        judge(f"${name}", name in declared, bool(working), (working or responses)[0])


# -- one declared resource type: search ----------------------------------------------------------------------


def search_works(w: Walker, path: str, name: str, values: list[str], also: list[tuple[str, str]] | None = None
                 ) -> tuple[bool, requests.Response]:
    """Whether a strict search with `name` and one of `values` (and `also`) answers a searchset that applied `name`;
    a value refused with 400 makes way for the next one."""
    r = None
    for value in values:
        r = w.call("GET", path, params=[(name, value), *(also or [])], headers=STRICT)
        if is_bundle(r, "searchset") and name.split(":")[0] in {n.split(":")[0] for n in self_link_params(r)}:
            return True, r
        if r.status_code != 400:
            break
    assert r is not None
    return False, r


def create_rich(w: Walker, rtype: str) -> dict | None:
    """Create the rich instance of `rtype` (a refusal is a finding of `create`); the stored resource or None."""
    resource = rich_resource(rtype)
    r = w.call("POST", rtype, json=resource)
    if ok(r, 201) and body(r).get("id"):
        return body(r)
    w.add("interactions", rtype, "create (an instance with a value in every element)", "declared but failing",
          describe(r))
    return None


def walk_type_search(w: Walker, entry: dict, declared_types: set[str]) -> None:
    """Each declared search parameter once (it must find a resource holding a matching value and not find it with
    another value), each _include and _revinclude; the official ones not declared must be refused."""
    rtype = entry["type"]
    official = search_parameters_for(rtype)
    declared = {p["name"]: p for p in entry.get("searchParam", [])}
    rich = create_rich(w, rtype) if "create" in {i["code"] for i in entry.get("interaction", [])} else None

    for name, param in sorted(declared.items()):
        definition = SEARCH_PARAMETERS_BY_URL.get(param.get("definition", ""))
        if definition is None or definition["code"] != name or definition["type"] != param.get("type") or not (
                {rtype, "Resource", "DomainResource"} & set(definition.get("base", []))):
            w.add("search", rtype, name, "statement is wrong",
                  f"declared {param}; the official definition is "
                  f"{definition and {k: definition[k] for k in ('url', 'code', 'type', 'base')}}")
        definition = definition or official.get(name) or {"type": param.get("type", "special")}
        value = matching_value(rich, definition) if rich else None
        if value is None:
            works, r = search_works(w, rtype, name, no_match_values(definition))
            w.judge("search", rtype, name, True, works, r)
            continue
        only = [("_id", rich["id"])] if name != "_id" else []
        found, r = search_works(w, rtype, name, [value], only)
        w.judge("search", rtype, name, True, found and body(r).get("total") == 1, r,
                f"{rtype}/{rich['id']} holds {value!r} for {name} ({definition.get('expression')}) but was not found")
        if found and body(r).get("total") == 1:
            works, r = search_works(w, rtype, name, no_match_values(definition), [("_id", rich["id"])])
            w.judge("search", rtype, name, True, works and body(r).get("total") == 0, r,
                    f"a value that {rtype}/{rich['id']} does not hold found it: the parameter does not filter")
    for name in sorted(set(official) - set(declared)):
        works, r = search_works(w, rtype, name, no_match_values(official[name])[:1])
        w.judge("search", rtype, name, False, works, r)

    includes = set(entry.get("searchInclude", []))
    references = {f"{rtype}:{code}" for code, p in official.items() if p["type"] == "reference"}
    for include in sorted(includes | references):
        r = w.call("GET", rtype, params={"_include": include}, headers=STRICT)
        w.judge("search", rtype, f"_include={include}", include in includes, is_bundle(r, "searchset"), r)

    revincludes = set(entry.get("searchRevInclude", []))
    expected = {f"{source}:{code}" for source in declared_types for code, p in search_parameters_for(source).items()
                if p["type"] == "reference" and rtype in p.get("target", [])}
    for missing in sorted(expected - revincludes):
        w.add("search", rtype, f"_revinclude={missing}", "statement is wrong",
              f"{missing} is an official reference parameter that can point to {rtype}, not in searchRevInclude")
    for extra in sorted(revincludes - expected):
        w.add("search", rtype, f"_revinclude={extra}", "statement is wrong",
              f"{extra} cannot point to {rtype} by its official definition, yet is in searchRevInclude")


def walk_revincludes(w: Walker, entries: list[dict]) -> None:
    """Every distinct `Source:param` of the declared searchRevInclude lists, once, on one type it may point to."""
    seen: dict[str, str] = {}
    for entry in entries:
        for revinclude in entry.get("searchRevInclude", []):
            seen.setdefault(revinclude, entry["type"])
    for revinclude, rtype in sorted(seen.items()):
        r = w.call("GET", rtype, params={"_revinclude": revinclude}, headers=STRICT)
        w.judge("search", rtype, f"_revinclude={revinclude}", True, is_bundle(r, "searchset"), r)


# -- types that are not declared ------------------------------------------------------------------------------


def walk_undeclared_type(w: Walker, rtype: str) -> None:
    """Nothing of an undeclared type is served: every interaction, search and $validate fails."""
    resource = minimal_resource(rtype) if rtype in R4_TYPES else {"resourceType": rtype}
    probes = {
        "interactions": [("create", "POST", rtype, resource), ("read", "GET", f"{rtype}/x", None),
                         ("vread", "GET", f"{rtype}/x/_history/1", None),
                         ("update", "PUT", f"{rtype}/x", {**resource, "id": "x"}),
                         ("delete", "DELETE", f"{rtype}/x", None), ("history-type", "GET", f"{rtype}/_history", None),
                         ("history-instance", "GET", f"{rtype}/x/_history", None)],
        "search": [("search-type", "GET", rtype, None),
                   ("search-type (POST _search)", "POST", f"{rtype}/_search", None),
                   ("compartment search", "GET", f"Patient/x/{rtype}", None)],
        "operations": [("$validate", "POST", f"{rtype}/$validate", parameters(resource=resource))],
    }
    for category, calls in probes.items():
        for what, method, path, payload in calls:
            r = w.call(method, path, json=payload)
            w.judge(category, rtype, what, False, 200 <= r.status_code < 300, r)


# -- system level ---------------------------------------------------------------------------------------------


def walk_system(w: Walker, rest: dict) -> None:
    """The system interactions, search parameters and operations, declared and not."""
    declared = {i["code"] for i in rest.get("interaction", [])}
    marker = "walk-system"
    tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:0c3a4c58-8a76-4c6b-9d3f-5e0f3c1a2b7d", "request": {"method": "POST", "url": "Patient"},
         "resource": {"resourceType": "Patient", "name": [{"family": marker}]}},
        {"request": {"method": "POST", "url": "Observation"},
         "resource": {"resourceType": "Observation", "status": "final", "code": {"text": marker},
                      "subject": {"reference": "urn:uuid:0c3a4c58-8a76-4c6b-9d3f-5e0f3c1a2b7d"}}}]}
    r = w.call("POST", "", json=tx)
    statuses = [e.get("response", {}).get("status", "") for e in body(r).get("entry", [])]
    w.judge("system", "interactions", "transaction", "transaction" in declared,
            is_bundle(r, "transaction-response") and all(s.startswith("201") for s in statuses), r)
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"Patient?family={marker}"}},
        {"request": {"method": "POST", "url": "Basic"}, "resource": minimal_resource("Basic")}]}
    r = w.call("POST", "", json=batch)
    statuses = [e.get("response", {}).get("status", "") for e in body(r).get("entry", [])]
    w.judge("system", "interactions", "batch", "batch" in declared,
            is_bundle(r, "batch-response") and statuses[:1] == ["200 OK"] and statuses[1:2] == ["201 Created"], r)
    r = w.call("GET", "_history")
    w.judge("system", "interactions", "history-system", "history-system" in declared,
            is_bundle(r, "history") and bool(body(r).get("entry")), r)
    r = w.call("GET", "", params={"_type": "Patient,Observation", "_count": "5"})
    w.judge("system", "interactions", "search-system", "search-system" in declared,
            is_bundle(r, "searchset") and (body(r).get("total") or 0) >= 2, r)

    declared_params = {p["name"]: p for p in rest.get("searchParam", [])}
    official = {**search_parameters_for("Resource"), **search_parameters_for("DomainResource")}
    for name in sorted(set(declared_params) | set(official)):
        definition = official.get(name) or SEARCH_PARAMETERS_BY_URL.get(declared_params[name].get("definition", ""))
        values = no_match_values(definition) if definition else ["x"]
        works, r = search_works(w, "", name, values if name in declared_params else values[:1])
        w.judge("system", "search", name, name in declared_params, works, r)

    declared_ops = {op["name"] for op in rest.get("operation", [])}
    for name in sorted(set(SYSTEM_OPERATIONS) | declared_ops):
        responses = [w.call("POST", f"${name}", json={"resourceType": "Parameters"})]
        working = [r for r in responses if 200 <= r.status_code < 300]
        w.judge("system", "operations", f"${name}", name in declared_ops, bool(working), (working or responses)[0])


def walk_formats(w: Walker, statement: dict) -> None:
    """Declared formats answer; the other FHIR formats are refused (406), as are undeclared patch formats."""
    declared = set(statement.get("format", []))
    for fmt in ("json", "application/fhir+json", "xml", "application/fhir+xml", "ttl", "application/fhir+turtle"):
        r = w.call("GET", "metadata", params={"_format": fmt})
        w.judge("system", "formats", f"_format={fmt}", fmt in declared, ok(r), r)
    r = w.call("GET", "metadata", headers={"Accept": "application/fhir+xml"})
    w.judge("system", "formats", "Accept: application/fhir+xml", "application/fhir+xml" in declared, ok(r), r)
    patch_formats = set(statement.get("patchFormat", []))
    created = w.call("POST", "Basic", json=minimal_resource("Basic"))
    rid = body(created).get("id", "x")
    xml_patch = '<diff><add sel="Basic"><implicitRules value="http://example.org/x"/></add></diff>'
    r = w.call("PATCH", f"Basic/{rid}", data=xml_patch, headers={"Content-Type": "application/xml-patch+xml"})
    w.judge("system", "formats", "patchFormat application/xml-patch+xml",
            "application/xml-patch+xml" in patch_formats, ok(r), r)


def walk_compartment(w: Walker, code: str, rest: dict, declared_types: set[str]) -> None:
    """Compartment search on every member type of a declared compartment; an undeclared one is not served."""
    url = f"http://hl7.org/fhir/CompartmentDefinition/{code[0].lower() + code[1:]}"
    declared = url in rest.get("compartment", [])
    members = [r["code"] for r in compartment_definition(code).get("resource", []) if r.get("param")]
    for member in sorted(m for m in members if m in declared_types):
        r = w.call("GET", f"{code}/x/{member}", headers=STRICT)
        w.judge("compartments", code, member, declared, is_bundle(r, "searchset"), r)


@dataclass
class Walk:
    """The result of walking one server."""

    statement: dict
    findings: dict[tuple[str, str], list[Finding]]
    calls: int
    seconds: float
    declared_types: set[str] = field(default_factory=set)


def run_walk(base: str) -> Walk:
    """Fetch the statement and walk everything it declares and what it does not, with a pool of threads."""
    started = time.monotonic()
    w = Walker(base)
    r = w.call("GET", "metadata")
    assert r.status_code == 200, describe(r)
    statement = r.json()
    rest = next(x for x in statement.get("rest", []) if x.get("mode") == "server")
    entries = rest.get("resource", [])
    declared_types = {e["type"] for e in entries}
    patch_formats = statement.get("patchFormat", [])
    # System searches visit every type one after the other: the longest single calls, so they go first.
    jobs: list[Callable[[], None]] = [lambda: walk_system(w, rest), lambda: walk_formats(w, statement),
                                      lambda: walk_revincludes(w, entries)]
    for entry in entries:
        if entry["type"] not in R4_TYPES:
            w.add("interactions", entry["type"], "type", "statement is wrong", "not an R4 resource type")
            continue
        jobs.append(lambda e=entry: walk_type(w, e, patch_formats))
        jobs.append(lambda e=entry: walk_type_search(w, e, declared_types))
    for rtype in [*(t for t in R4_TYPES if t not in declared_types), NOT_A_TYPE]:
        jobs.append(lambda t=rtype: walk_undeclared_type(w, t))
    for code in COMPARTMENTS:
        jobs.append(lambda c=code: walk_compartment(w, c, rest, declared_types))
    with ThreadPoolExecutor(THREADS) as pool:
        for future in [pool.submit(job) for job in jobs]:
            future.result()
    return Walk(statement, dict(w.findings), w.calls, time.monotonic() - started, declared_types)


# ----------------------------------------------------------------------------------------------------------------
# The tests


@pytest.fixture(scope="module")
def walk_server(ferretdb, tmp_path_factory) -> Iterator[ServerProcess]:
    """A server of its own for the walk: 2 workers, its own database."""
    proc = serve(ferretdb.uri, tmp_path_factory.mktemp("capwalk") / "server.log", FHIR_DB_NAME="capability_walk",
                 FHIR_WORKERS="2", FHIR_THREADS="4", FHIR_LOG_LEVEL="WARNING")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def walk(walk_server: ServerProcess) -> Walk:
    """The findings of one walk of the statement (run once for all the tests here)."""
    return run_walk(walk_server.base)


def judge(walk: Walk, category: str, scope: str) -> None:
    """Fail on unknown findings of (category, scope); xfail when all are known bugs; fail when a known one is gone."""
    findings = walk.findings.get((category, scope), [])
    prefix = f"{category}/{scope}/"
    unknown = [f for f in findings if f.key not in KNOWN_BUGS]
    gone = [k for k in KNOWN_BUGS if k.startswith(prefix) and k not in {f.key for f in findings}]
    problems = [*map(str, unknown), *(f"{k}: listed in KNOWN_BUGS but no longer found; remove it" for k in gone)]
    assert not problems, f"{len(problems)} mismatches between the CapabilityStatement and the server:\n" + \
        "\n".join(problems)
    if findings:
        pytest.xfail("; ".join(sorted({KNOWN_BUGS[f.key] for f in findings})))


@pytest.fixture(scope="module")
def secured_server(ferretdb, tmp_path_factory) -> Iterator[ServerProcess]:
    """A server with authorization on, to check what the statement says about security."""
    proc = serve(ferretdb.uri, tmp_path_factory.mktemp("capwalk-auth") / "server.log",
                 FHIR_DB_NAME="capability_walk_auth", FHIR_AUTH="on", FHIR_LOG_LEVEL="WARNING")
    yield proc
    proc.stop()


def test_security_declared_when_authorization_is_on(secured_server: ServerProcess) -> None:
    """With authorization on: the statement is public and declares SMART-on-FHIR with endpoints that answer, which
    the SMART configuration repeats; FHIR calls without a token are refused."""
    base = secured_server.base
    r = requests.get(f"{base}/metadata", timeout=60)
    assert r.status_code == 200, describe(r)
    security = r.json()["rest"][0].get("security")
    assert security, "authorization is on but rest.security declares nothing"
    codes = {(c.get("system"), c.get("code")) for s in security.get("service", []) for c in s.get("coding", [])}
    assert ("http://terminology.hl7.org/CodeSystem/restful-security-service", "SMART-on-FHIR") in codes
    oauth = next(e for e in security.get("extension", [])
                 if e["url"] == "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris")
    endpoints = {e["url"]: e["valueUri"] for e in oauth["extension"]}
    assert {"authorize", "token"} <= set(endpoints)
    for name, url in endpoints.items():
        answers = [requests.get(url, timeout=60, allow_redirects=False),
                   requests.post(url, data={}, timeout=60, allow_redirects=False)]
        assert any(a.status_code not in (404, 405, 501) and a.status_code < 500 for a in answers), \
            f"declared {name} endpoint does not answer: " + "; ".join(describe(a) for a in answers)
    smart = requests.get(f"{base}/.well-known/smart-configuration", timeout=60).json()
    assert smart["token_endpoint"] == endpoints["token"]
    assert smart["authorization_endpoint"] == endpoints["authorize"]
    refused = requests.get(f"{base}/Patient", timeout=60)
    assert refused.status_code == 401 and "Bearer" in refused.headers.get("WWW-Authenticate", ""), describe(refused)


def test_no_security_declared_when_authorization_is_off(walk: Walk) -> None:
    """The walked server has authorization off (every call above went without a token): nothing declared."""
    rest = next(x for x in walk.statement["rest"] if x.get("mode") == "server")
    assert "security" not in rest, rest.get("security")


@pytest.mark.parametrize("rtype", R4_TYPES)
def test_type_interactions(walk: Walk, rtype: str) -> None:
    """Declared interactions and conditional flags work; an undeclared type is not served at all."""
    judge(walk, "interactions", rtype)


@pytest.mark.parametrize("rtype", R4_TYPES)
def test_type_search(walk: Walk, rtype: str) -> None:
    """Declared search parameters and includes work under strict handling; official undeclared ones are refused."""
    judge(walk, "search", rtype)


@pytest.mark.parametrize("rtype", R4_TYPES)
def test_type_operations(walk: Walk, rtype: str) -> None:
    """Declared operations work; official operations not declared do not answer 2xx."""
    judge(walk, "operations", rtype)


def test_undeclared_name_is_not_a_type(walk: Walk) -> None:
    """A name that is no resource type at all is served by nothing."""
    for category in ("interactions", "search", "operations"):
        judge(walk, category, NOT_A_TYPE)


def test_declared_types_are_r4_types(walk: Walk) -> None:
    """Every declared type is an R4 resource type (others are reported under interactions)."""
    assert walk.declared_types <= set(R4_TYPES), sorted(walk.declared_types - set(R4_TYPES))


@pytest.mark.parametrize("scope", ["interactions", "search", "operations", "formats"])
def test_system(walk: Walk, scope: str) -> None:
    """System interactions, search parameters, operations and formats: declared ones work, others do not."""
    judge(walk, "system", scope)


@pytest.mark.parametrize("code", COMPARTMENTS)
def test_compartment(walk: Walk, code: str) -> None:
    """Compartment search on each member type of each declared compartment."""
    judge(walk, "compartments", code)


def test_walk_made_thousands_of_calls(walk: Walk, capsys: pytest.CaptureFixture[str]) -> None:
    """The walk really called the server (a statement that declares nothing would make every test above pass)."""
    count = sum(len(f) for f in walk.findings.values())
    with capsys.disabled():
        print(f"\ncapability walk: {walk.calls} calls in {walk.seconds:.1f} s, {count} findings "
              f"({len(KNOWN_BUGS)} known server bugs)")
    assert len(walk.declared_types) >= 100
    assert walk.calls > 3000, walk.calls

"""The CapabilityStatement builder: describes what the server really supports, from the same registries the
server runs on (supported types, indexed search parameters, compartments, operations)."""

from __future__ import annotations

from functools import cache

import fhirserver
from fhirserver.resources.validation import SUPPORTED_TYPES
from fhirserver.search.extract import COMPARTMENTS
from fhirserver.search.params import params_for
from smart_auth.discovery import capability_security_extension

SOFTWARE_NAME = "fhirserver"
# A fixed publication date of this statement's shape; bumped when what it declares changes.
STATEMENT_DATE = "2026-11-29"
TYPE_INTERACTIONS = ("read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create",
                     "search-type")
SYSTEM_INTERACTIONS = ("transaction", "batch", "history-system", "search-system")
PATCH_FORMATS = ["application/json-patch+json", "application/fhir+json"]
VALIDATE = "http://hl7.org/fhir/OperationDefinition/Resource-validate"
SYSTEM_SEARCH_PARAMS = ("_id", "_lastUpdated", "_tag", "_profile", "_security", "_source")


def _search_params(rtype: str) -> list[dict]:
    params = params_for(rtype)
    return [{"name": code, "definition": p.url, "type": p.type} for code, p in sorted(params.items())]


def _references(rtype: str) -> list[str]:
    return [f"{rtype}:{code}" for code, p in sorted(params_for(rtype).items()) if p.type == "reference"]


def _revincludes(rtype: str) -> list[str]:
    return sorted(f"{source}:{code}" for source in SUPPORTED_TYPES for code, p in params_for(source).items()
                  if p.type == "reference" and rtype in p.targets)


def _resource_entry(rtype: str) -> dict:
    return {
        "type": rtype,
        "profile": f"http://hl7.org/fhir/StructureDefinition/{rtype}",
        "interaction": [{"code": code} for code in TYPE_INTERACTIONS],
        "versioning": "versioned",
        "readHistory": True,
        "updateCreate": True,
        "conditionalCreate": True,
        "conditionalRead": "full-support",
        "conditionalUpdate": True,
        "conditionalDelete": "single",
        "referencePolicy": ["literal", "logical", "local"],
        "searchInclude": ["*", *_references(rtype)],
        "searchRevInclude": _revincludes(rtype),
        "searchParam": _search_params(rtype),
        "operation": [{"name": "validate", "definition": VALIDATE}, *TYPE_OPERATIONS.get(rtype, [])],
    }


ARGONAUT = "http://fhir.org/guides/argonaut-scheduling/OperationDefinition"
SERVER_OPERATIONS = "urn:fhirserver:OperationDefinition"
# Operations beyond $validate, per type (fhirserver/operations/, README "Scheduling").
TYPE_OPERATIONS: dict[str, list[dict]] = {
    "Appointment": [
        {"name": "find", "definition": f"{ARGONAUT}/appointment-find"},
        {"name": "hold", "definition": f"{ARGONAUT}/appointment-hold"},
        {"name": "book", "definition": f"{ARGONAUT}/appointment-book"},
        {"name": "reschedule", "definition": f"{SERVER_OPERATIONS}/Appointment-reschedule"},
        {"name": "cancel", "definition": f"{SERVER_OPERATIONS}/Appointment-cancel"},
        {"name": "noshow", "definition": f"{SERVER_OPERATIONS}/Appointment-noshow"},
    ],
}


@cache
def capability_statement(base_url: str, oauth_endpoints: tuple[tuple[str, str], ...] = ()) -> dict:
    """The CapabilityStatement served at `[base]/metadata` for a server at `base_url`. `oauth_endpoints` (name, URL)
    pairs of the SMART authorization server, when authorization is on, become `rest.security`: the SMART-on-FHIR
    service coding and the `oauth-uris` extension (where SMART 1.0 clients such as Python fhirclient look)."""
    types = sorted(SUPPORTED_TYPES)
    any_params = params_for("Patient")
    rest: dict = {
        "mode": "server",
        "documentation": "FHIR R4 REST API over JSON. Chained parameters, _has, _include/_revinclude (:iterate), "
                         "_sort, _total, _summary and _elements are supported on every type.",
        "resource": [_resource_entry(t) for t in types],
        "interaction": [{"code": code} for code in SYSTEM_INTERACTIONS],
        "searchParam": [{"name": code, "definition": any_params[code].url, "type": any_params[code].type}
                        for code in SYSTEM_SEARCH_PARAMS if code in any_params],
        "compartment": [f"http://hl7.org/fhir/CompartmentDefinition/{c[0].lower() + c[1:]}" for c in COMPARTMENTS],
    }
    if oauth_endpoints:
        rest["security"] = capability_security_extension(dict(oauth_endpoints), base_url)
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": STATEMENT_DATE,
        "publisher": "fhirserver project",
        "kind": "instance",
        "software": {"name": SOFTWARE_NAME, "version": fhirserver.__version__},
        "implementation": {"description": "FHIR R4 health data server", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["json", "application/fhir+json"],
        "patchFormat": PATCH_FORMATS,
        "rest": [rest],
    }

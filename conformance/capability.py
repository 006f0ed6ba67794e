"""The CapabilityStatement builder: describes what the server really supports (it grows with each feature)."""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache

import fhirserver

SOFTWARE_NAME = "fhirserver"
# A fixed publication date of this statement's shape; bumped when what it declares changes.
STATEMENT_DATE = "2026-11-29"
TYPE_INTERACTIONS = ("read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create")
SYSTEM_INTERACTIONS = ("transaction", "batch", "history-system")
PATCH_FORMATS = ["application/json-patch+json", "application/fhir+json"]
VALIDATE = "http://hl7.org/fhir/OperationDefinition/Resource-validate"


def _resource_entry(rtype: str, search: Iterable[dict]) -> dict:
    entry: dict = {
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
        "referencePolicy": ["literal", "logical", "resolves", "local"],
        "operation": [{"name": "validate", "definition": VALIDATE}],
    }
    params = list(search)
    if params:
        entry["interaction"].append({"code": "search-type"})
        entry["searchParam"] = params
    return entry


@cache
def capability_statement(base_url: str, resource_types: tuple[str, ...] = (),
                         search_params: tuple[tuple[str, tuple[dict, ...]], ...] = ()) -> dict:
    """The CapabilityStatement served at `[base]/metadata` for a server at `base_url`.

    `resource_types` are the types served with every REST interaction; `search_params` maps a type to the
    `searchParam` entries it supports.
    """
    search = dict(search_params)
    rest: dict = {"mode": "server", "documentation": "FHIR R4 REST API over JSON."}
    if resource_types:
        rest["resource"] = [_resource_entry(t, search.get(t, ())) for t in resource_types]
        rest["interaction"] = [{"code": code} for code in SYSTEM_INTERACTIONS]
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

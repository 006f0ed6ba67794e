"""The CapabilityStatement builder: describes what the server really supports (it grows with each feature)."""

from __future__ import annotations

from functools import cache

import fhirserver

SOFTWARE_NAME = "fhirserver"
# A fixed publication date of this statement's shape; bumped when what it declares changes.
STATEMENT_DATE = "2026-11-29"


@cache
def capability_statement(base_url: str) -> dict:
    """The CapabilityStatement served at `[base]/metadata` for a server at `base_url`."""
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
        "rest": [{"mode": "server", "documentation": "FHIR R4 REST API over JSON."}],
    }

"""What a request handler may reach of the app: its settings and its store."""

from __future__ import annotations

from flask import current_app, g

from fhirserver.config import Settings
from fhirserver.interactions.guard import Guard
from fhirserver.store.database import Store


def settings() -> Settings:
    return current_app.extensions["fhir.settings"]


def store() -> Store:
    return current_app.extensions["fhir.store"]


def guard() -> Guard:
    """The access rules of this request's token (computed once per request by the authentication hook)."""
    found = g.get("fhir_guard")
    if found is None:
        found = g.fhir_guard = current_app.extensions["fhir.authenticate"]()
    return found

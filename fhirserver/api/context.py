"""What a request handler may reach of the app: its settings and its store."""

from __future__ import annotations

from flask import current_app

from fhirserver.config import Settings
from fhirserver.store.database import Store


def settings() -> Settings:
    return current_app.extensions["fhir.settings"]


def store() -> Store:
    return current_app.extensions["fhir.store"]

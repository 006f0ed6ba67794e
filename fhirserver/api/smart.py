"""GET [base]/.well-known/smart-configuration: SMART App Launch 2.2 discovery.

A blueprint of its own (not the `fhir` one): "the response SHALL be JSON regardless of Accept", so the FHIR content
negotiation (406 for Accept: text/html) must not apply, and it needs no token. Open to any origin (SMART: discovery
is open to any origin).
"""

from __future__ import annotations

from functools import cache

from flask import Blueprint, Response, jsonify

from fhirserver.api import context
from smart_auth import discovery_document

discovery = Blueprint("smart_discovery", __name__, url_prefix="/fhir")


@cache
def _document(base_url: str) -> dict:
    return discovery_document(base_url)


@discovery.get("/.well-known/smart-configuration")
def smart_configuration() -> Response:
    """The authorization server's endpoints and capabilities, `Content-Type: application/json`."""
    response = jsonify(_document(context.settings().base_url))
    response.headers["Access-Control-Allow-Origin"] = "*"
    response.headers["Cache-Control"] = "public, max-age=300"
    return response

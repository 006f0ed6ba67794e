"""GET [base]/metadata: the CapabilityStatement."""

from __future__ import annotations

from werkzeug.exceptions import MethodNotAllowed

from conformance.capability import capability_statement
from fhirserver.api import context, fhir
from fhirserver.api.responses import fhir_response
from fhirserver.config import Settings
from smart_auth import security_endpoints


def oauth_endpoints(settings: Settings) -> tuple[tuple[str, str], ...]:
    """The SMART endpoints for `rest.security` when authorization is on; none when it is off."""
    return tuple(sorted(security_endpoints(settings.base_url).items())) if settings.auth == "on" else ()


@fhir.get("/metadata")
def metadata():
    """The statement of what this server supports; 503 while the database is unreachable."""
    context.store().ready()
    settings = context.settings()
    return fhir_response(capability_statement(settings.base_url, oauth_endpoints(settings)))


@fhir.route("/metadata", methods=["POST", "PUT", "PATCH", "DELETE"])
def metadata_other_methods():
    """The statement is read-only (the generic [type] routes would otherwise take these)."""
    raise MethodNotAllowed(valid_methods=["GET", "HEAD", "OPTIONS"])

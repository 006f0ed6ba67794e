"""GET [base]/metadata: the CapabilityStatement."""

from __future__ import annotations

from werkzeug.exceptions import MethodNotAllowed

from conformance.capability import capability_statement
from fhirserver.api import context, fhir
from fhirserver.api.responses import fhir_response


@fhir.get("/metadata")
def metadata():
    """The statement of what this server supports; 503 while the database is unreachable."""
    context.store().ready()
    return fhir_response(capability_statement(context.settings().base_url))


@fhir.route("/metadata", methods=["POST", "PUT", "PATCH", "DELETE"])
def metadata_other_methods():
    """The statement is read-only (the generic [type] routes would otherwise take these)."""
    raise MethodNotAllowed(valid_methods=["GET", "HEAD", "OPTIONS"])

"""HTTP only: routes, content negotiation, headers and errors -> OperationOutcome. No storage or business logic."""

from __future__ import annotations

from flask import Blueprint

fhir = Blueprint("fhir", __name__, url_prefix="/fhir")
ops = Blueprint("ops", __name__)

from fhirserver.api.cors import add_cors_headers  # noqa: E402
from fhirserver.api.negotiation import check_accept  # noqa: E402

fhir.before_request(check_accept)
fhir.after_request(add_cors_headers)

from fhirserver.api import health, metadata, resources  # noqa: E402,F401  (registers routes on the blueprints)

"""Turning an interaction's Result into an HTTP response: body per Prefer and _summary/_elements, headers."""

from __future__ import annotations

from flask import Response, request

from fhirserver import fhirjson
from fhirserver.api.responses import fhir_response, operation_outcome
from fhirserver.errors import BadRequest
from fhirserver.interactions.result import Result
from fhirserver.interactions.shaping import parse_elements, parse_summary, shape

MESSAGES = {200: "The request succeeded.", 201: "The resource was created.", 204: "The resource was deleted."}


def shaping() -> tuple[str | None, list[str] | None]:
    """The `_summary` and `_elements` of the request (validated)."""
    return parse_summary(request.args.get("_summary")), parse_elements(request.args.get("_elements"))


def render(result: Result, prefer: str = "representation") -> Response:
    """The response for `result`: stored text as is unless shaping or Prefer asks otherwise."""
    headers = result.version_headers()
    if prefer == "minimal" or (result.stored is None and result.body is None):
        return Response(status=result.status, headers=headers)
    if prefer == "OperationOutcome":
        issue = {"severity": "information", "code": "informational",
                 "diagnostics": MESSAGES.get(result.status, "Done.")}
        return fhir_response(operation_outcome([issue]), result.status, headers)
    if result.stored is not None and result.stored.text is not None:
        summary, elements = shaping()
        if summary == "count":
            raise BadRequest("_summary=count applies to searches, not to reading one resource",
                             expression=["_summary"])
        if summary in (None, "false") and not elements:
            return fhir_response(result.stored.text.encode(), result.status, headers)
        shaped = shape(fhirjson.loads(result.stored.text), summary, elements)
        return fhir_response(fhirjson.dumps(shaped), result.status, headers)
    return fhir_response(fhirjson.dumps(result.body), result.status, headers)

"""FHIR JSON responses: orjson bodies, the FHIR media type, `_pretty`, and OperationOutcome bodies."""

from __future__ import annotations

from typing import Any

import orjson
from flask import Response, request

FHIR_JSON = "application/fhir+json; charset=utf-8"


def _pretty() -> bool:
    return request.args.get("_pretty", "").lower() == "true"


def fhir_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A response whose body is `body` (a dict, or bytes already serialized) as FHIR JSON."""
    if isinstance(body, bytes | bytearray):
        data = bytes(body)
        if _pretty():
            data = orjson.dumps(orjson.loads(data), option=orjson.OPT_INDENT_2)
    else:
        data = orjson.dumps(body, option=orjson.OPT_INDENT_2 if _pretty() else 0)
    response = Response(data, status=status, content_type=FHIR_JSON)
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def operation_outcome(issues: list[dict]) -> dict:
    """An OperationOutcome resource holding `issues`."""
    return {"resourceType": "OperationOutcome", "issue": issues}

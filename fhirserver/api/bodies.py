"""Request bodies and request headers: FHIR JSON parsing, If-Match / If-None-Match ETags, Prefer."""

from __future__ import annotations

from typing import Any

from flask import request

from fhirserver import fhirjson
from fhirserver.api.negotiation import check_body_type
from fhirserver.errors import BadRequest

JSON_PATCH = "application/json-patch+json"


def json_body(extra_types: tuple[str, ...] = ()) -> Any:
    """The request body parsed as FHIR JSON (decimals kept exact); 415 for other types, 400 for broken JSON."""
    check_body_type(extra_types)
    data = request.get_data(cache=True)
    if not data.strip():
        raise BadRequest("the request has no body")
    try:
        return fhirjson.loads(data)
    except fhirjson.JSONSyntaxError as exc:
        raise BadRequest(str(exc), issues=None) from None


def body_media_type() -> str:
    return request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()


def etag_version(header: str) -> int | None:
    """The version number in an If-Match header (`W/"3"`), None when absent; 400 when malformed."""
    value = request.headers.get(header)
    if value is None:
        return None
    text = value.strip()
    text = text[2:] if text.startswith("W/") else text
    text = text.strip('"')
    if not text.isdigit():
        raise BadRequest(f"{header}: {value!r} is not an ETag such as W/\"3\"")
    return int(text)


def prefer_return() -> str:
    """The `return` preference: minimal, representation (default) or OperationOutcome."""
    for part in request.headers.get("Prefer", "").split(","):
        key, _, value = part.strip().partition("=")
        if key.strip().lower() == "return":
            value = value.strip().strip('"')
            if value in ("minimal", "representation", "OperationOutcome"):
                return value
    return "representation"

"""Content negotiation: JSON is the only format; XML or anything else asked for is 406, other bodies 415."""

from __future__ import annotations

from flask import request

from fhirserver.errors import NotAcceptable, UnsupportedMediaType

JSON_TYPES = ("application/fhir+json", "application/json", "application/json+fhir", "json", "text/json")
WILDCARDS = ("*/*", "application/*")


def _media(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


def check_accept() -> None:
    """`_format` wins over `Accept`; either must allow JSON, else 406."""
    fmt = request.args.get("_format")
    if fmt is not None:
        if _media(fmt) not in JSON_TYPES:
            raise NotAcceptable(f"_format={fmt} is not supported; this server speaks application/fhir+json",
                                expression=["_format"])
        return
    accept = request.headers.get("Accept", "")
    if not accept.strip():
        return
    offered = [_media(part) for part in accept.split(",")]
    if not any(m in JSON_TYPES or m in WILDCARDS for m in offered):
        raise NotAcceptable(f"Accept: {accept} is not supported; this server speaks application/fhir+json")


def check_body_type(extra: tuple[str, ...] = ()) -> None:
    """A request body must be FHIR JSON (or one of `extra`, e.g. JSON Patch), else 415."""
    ctype = _media(request.headers.get("Content-Type", ""))
    if ctype not in JSON_TYPES + extra:
        raise UnsupportedMediaType(
            f"Content-Type {ctype or '(none)'} is not supported; send application/fhir+json"
        )

"""FHIR JSON text in and out, keeping decimals exactly as written (`6.30` stays `6.30`)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import orjson


class JSONSyntaxError(ValueError):
    """The text is not JSON (or not UTF-8)."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in FHIR JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate property {key!r}")
        out[key] = value
    return out


def loads(data: bytes | str) -> Any:
    """Parse JSON; numbers with a fraction or exponent become Decimal so their text survives."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes | bytearray) else data
        return json.loads(text, parse_float=Decimal, parse_constant=_reject_constant,
                          object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError as exc:
        raise JSONSyntaxError(f"body is not UTF-8: {exc.reason} at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise JSONSyntaxError(f"body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:
        raise JSONSyntaxError(f"body is not valid FHIR JSON: {exc}") from None


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value).encode())
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(value: Any) -> bytes:
    """Serialize compactly; Decimal values are written with their original digits."""
    return orjson.dumps(value, default=_default)

"""Searches behind conditional interactions (If-None-Exist, conditional update/delete/patch, conditional references).

These are strict: an unknown parameter would widen the match to everything, so it is a 400, never ignored.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode

from fhirserver.errors import BadRequest
from fhirserver.search.query import all_of, parse
from fhirserver.store.database import Store
from fhirserver.store.resources import Stored


def matching(store: Store, rtype: str, query: str, limit: int, visible: dict | None = None) -> list[Stored]:
    """Up to `limit` current resources of `rtype` matching `query` (a query string without `?`), among those
    matching `visible` (what the caller's token may see)."""
    parsed = parse(rtype, query.lstrip("?"), strict=True, finder=store.reader)
    if not parsed.applied:
        raise BadRequest(f"the condition {query!r} has no search parameter to match on")
    found = all_of(parsed.filter, visible)
    return store.reader.find(rtype, found, limit)


def condition_lease(rtype: str, query: str) -> str:
    """The lease name that serializes conditional writes with the same condition (parameters sorted)."""
    pairs = sorted(parse_qsl(query.lstrip("?"), keep_blank_values=True))
    return f"cond:{rtype}?{urlencode(pairs)}"

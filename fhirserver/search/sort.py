"""FHIR ``_sort`` and keyset paging: sort keys stored at write time (``srt``), MongoDB sort specs, opaque cursors.

Write side: ``sort_values(rtype, idx)`` turns the search index of a resource into scalar sort keys, stored in the
document field ``srt`` next to ``idx``. For each sortable parameter with values, ``srt[code]`` is the smallest value
(used for ascending order) and ``srt[code + ":d"]`` the largest (descending), as MongoDB itself sorts arrays by their
min element ascending and their max element descending. ``_lastUpdated`` sorts on the document field ``ts`` and
``_id`` on ``_id``; neither is copied into ``srt``.

Query side: ``parse_sort`` reads ``_sort=-date,status`` into ``SortKey``s (always ending with ``_id`` ascending so the
order is total), ``mongo_sort`` gives the pymongo sort spec, ``cursor_after`` encodes the position of the last
document of a page and ``keyset_filter`` selects the documents strictly after it.

Ordering semantics (MongoDB's, reproduced by FerretDB v1 and by the keyset filter): a missing sort value counts as
null, and null sorts *before* every value in ascending order and *after* every value in descending order. Ties are
broken by the following keys, finally by ``_id`` ascending. Values of one key always have one BSON type (dates,
doubles or strings), so MongoDB's type bracketing of ``$gt``/``$lt`` never drops a document.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fhirserver.errors import BadRequest
from fhirserver.search.params import params_for

# Parameter types whose values have a natural order; composite (and special) parameters cannot be sorted on.
SORTABLE = frozenset({"date", "string", "token", "number", "quantity", "reference", "uri"})
DESCENDING_SUFFIX = ":d"
SRT = "srt"
# Parameters answered by document fields rather than by ``srt``.
FIELDS = {"_id": "_id", "_lastUpdated": "ts"}

_CURSOR_TEXT = re.compile(r"[A-Za-z0-9_-]+")
_CURSOR_VERSION = 1


class _OtherOrder(Exception):
    """A well-formed cursor made for different sort keys."""


@dataclass(frozen=True, slots=True)
class SortKey:
    """One sort key: the search parameter code, the document field sorted on, and 1 (ascending) or -1 (descending)."""

    code: str
    field: str
    direction: int


# ---------------------------------------------------------------------------
# Write side


def _bounds(ptype: str, values: list) -> tuple[Any, Any] | None:
    """(min, max) sort values of one parameter's index values; ``None`` when none is usable."""
    if ptype == "date":
        lows = [v["lo"] for v in values if isinstance(v, dict) and isinstance(v.get("lo"), datetime)]
        highs = [v["hi"] for v in values if isinstance(v, dict) and isinstance(v.get("hi"), datetime)]
        return (min(lows), max(highs)) if lows and highs else None
    if ptype in ("number", "quantity"):
        nums = [float(v["v"]) for v in values
                if isinstance(v, dict) and isinstance(v.get("v"), int | float) and not isinstance(v.get("v"), bool)]
        return (min(nums), max(nums)) if nums else None
    if ptype == "token":
        # idx holds ``system|code``, ``|code``, ``system|`` and the plain ``code``: only the plain codes sort
        strings = [v for v in values if isinstance(v, str) and "|" not in v]
    else:  # string (normalized), reference, uri
        strings = [v for v in values if isinstance(v, str)]
    return (min(strings), max(strings)) if strings else None


def _all_values(idx: dict, code: str) -> list:
    """A parameter's values: its list, or its objects spread over the variant keys code, code~1, ..."""
    first = idx.get(code)
    if first is None:
        return []
    if isinstance(first, list):
        return first
    values, n = [first], 1
    while f"{code}~{n}" in idx:
        values.append(idx[f"{code}~{n}"])
        n += 1
    return values


def sort_values(rtype: str, idx: dict) -> dict:
    """The ``srt`` subdocument for a resource of type ``rtype`` with search index ``idx``.

    ``srt[code]`` is the minimum value of the parameter (ascending sorts), ``srt[code + ":d"]`` its maximum
    (descending sorts). Dates give ``lo`` for the minimum and ``hi`` for the maximum; numbers and quantities their
    value ``v`` as a float; strings their normalized form; tokens their plain codes; references and uris as indexed.
    """
    out: dict = {}
    for code, param in params_for(rtype).items():
        if code in FIELDS or param.type not in SORTABLE:
            continue
        values = _all_values(idx, code)
        if not values:
            continue
        bounds = _bounds(param.type, values)
        if bounds is not None:
            out[code], out[code + DESCENDING_SUFFIX] = bounds
    return out


# ---------------------------------------------------------------------------
# Parsing _sort


def _sort_error(text: str) -> BadRequest:
    return BadRequest(f"_sort: {text}", expression=["_sort"])


def parse_sort(rtype: str, raw: list[str]) -> list[SortKey]:
    """``_sort`` values (repeated parameters joined in order) -> sort keys, ending with the ``_id`` tie-break.

    ``-code`` is descending. ``_id`` sorts on ``_id``, ``_lastUpdated`` on ``ts``, other codes on ``srt.<code>``
    (ascending) or ``srt.<code>:d`` (descending). A code given twice counts once (the first); keys after ``_id``
    are dropped since ``_id`` is unique. Unknown or unsortable codes are a BadRequest naming ``_sort``.
    """
    params = params_for(rtype)
    keys: list[SortKey] = []
    seen: set[str] = set()
    for value in raw:
        for part in value.split(","):
            item = part.strip()
            if not item:
                continue
            direction = -1 if item.startswith("-") else 1
            code = item[1:] if direction == -1 else item
            if code in seen:
                continue
            if code in FIELDS:
                field = FIELDS[code]
            else:
                param = params.get(code)
                if param is None:
                    raise _sort_error(f"unknown search parameter '{code}' for {rtype}")
                if param.type not in SORTABLE:
                    raise _sort_error(f"cannot sort on '{code}' (a {param.type} parameter)")
                field = f"{SRT}.{code}{DESCENDING_SUFFIX if direction == -1 else ''}"
            seen.add(code)
            keys.append(SortKey(code, field, direction))
            if code == "_id":
                return keys
    keys.append(SortKey("_id", "_id", 1))
    return keys


def mongo_sort(keys: list[SortKey]) -> list[tuple[str, int]]:
    """The pymongo ``.sort()`` specification of ``keys``."""
    return [(k.field, k.direction) for k in keys]


# ---------------------------------------------------------------------------
# Cursors: [version, [[field, direction, tagged value], ...]] as JSON, base64url without padding


def _field_value(doc: dict, field: str) -> Any:
    """The value of a (possibly one-level dotted) field of ``doc``; ``None`` when missing."""
    head, _, rest = field.partition(".")
    value = doc.get(head)
    if rest:
        value = value.get(rest) if isinstance(value, dict) else None
    return value


def _tag(value: Any) -> Any:
    """JSON form of a sort value that keeps its BSON type (null, string, double, int, bool, date)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return ["b", value]
    if isinstance(value, str):
        return ["s", value]
    if isinstance(value, int):
        return ["i", value]
    if isinstance(value, float):
        return ["f", value]
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)  # pymongo hands back naive UTC
        return ["t", aware.astimezone(UTC).isoformat()]
    raise TypeError(f"cannot put a {type(value).__name__} sort value in a cursor")


def _untag(tagged: Any) -> Any:
    """Inverse of ``_tag``; ValueError when the shape is wrong."""
    if tagged is None:
        return None
    if not (isinstance(tagged, list) and len(tagged) == 2 and isinstance(tagged[0], str)):
        raise ValueError("bad value")
    kind, value = tagged
    if kind == "s" and isinstance(value, str):
        return value
    if kind == "b" and isinstance(value, bool):
        return value
    if kind == "i" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "f" and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind == "t" and isinstance(value, str):
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            raise ValueError("naive datetime")
        return parsed.astimezone(UTC)
    raise ValueError("bad value")


def cursor_after(keys: list[SortKey], doc: dict) -> str:
    """An opaque URL-safe cursor for the position of ``doc`` (a raw stored document) in the order ``keys``."""
    payload = [_CURSOR_VERSION, [[k.field, k.direction, _tag(_field_value(doc, k.field))] for k in keys]]
    raw = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _cursor_error(text: str) -> BadRequest:
    return BadRequest(f"_cursor: {text}", expression=["_cursor"])


def _decode_cursor(keys: list[SortKey], cursor: str) -> list[Any]:
    """The sort values stored in ``cursor``; BadRequest (``_cursor``) unless it was made for the same ``keys``."""
    if not isinstance(cursor, str) or not _CURSOR_TEXT.fullmatch(cursor):
        raise _cursor_error("not a cursor of this server")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        version, entries = json.loads(raw)
        if version != _CURSOR_VERSION or not isinstance(entries, list):
            raise ValueError("bad version")
        if len(entries) != len(keys):
            raise _OtherOrder
        values = []
        for key, entry in zip(keys, entries, strict=True):
            if not (isinstance(entry, list) and len(entry) == 3):
                raise ValueError("bad entry")
            if entry[0] != key.field or entry[1] != key.direction:
                raise _OtherOrder
            values.append(_untag(entry[2]))
    except _OtherOrder as exc:
        raise _cursor_error("the cursor was made for another _sort order") from exc
    except (binascii.Error, UnicodeDecodeError, ValueError, TypeError) as exc:
        raise _cursor_error("not a cursor of this server") from exc
    return values


def _after(field: str, direction: int, value: Any) -> dict | None:
    """Filter for "strictly after ``value``" on one key; ``None`` when nothing can follow it.

    Missing counts as null: first in ascending order, last in descending order. ``{f: null}`` matches a missing
    field (or a null), ``{f: {$ne: null}}`` a present non-null one; ``$gt``/``$lt`` never match a missing field.
    """
    if direction == 1:
        return {field: {"$ne": None}} if value is None else {field: {"$gt": value}}
    if value is None:
        return None  # null is last in descending order
    return {"$or": [{field: {"$lt": value}}, {field: None}]}


def keyset_filter(keys: list[SortKey], cursor: str) -> dict:
    """MongoDB filter selecting the documents strictly after the cursor's position in the order ``keys``.

    Position ``(p1 .. pn)``: a document comes after it when, for some ``i``, it equals ``p1 .. p(i-1)`` on the first
    keys and comes after ``pi`` on key ``i`` (``$or`` of those terms). Combine it with the search filter by ``$and``.
    """
    values = _decode_cursor(keys, cursor)
    terms: list[dict] = []
    for i, key in enumerate(keys):
        after = _after(key.field, key.direction, values[i])
        if after is not None:
            term = {keys[j].field: values[j] for j in range(i)}  # {f: None} also matches a missing field
            term.update(after)
            terms.append(term)
    if not terms:
        return {"_id": {"$in": []}}  # nothing follows
    return terms[0] if len(terms) == 1 else {"$or": terms}

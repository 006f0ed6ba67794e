"""history at instance, type and system level: newest first, `_since`, `_at`, `_count`, keyset paging."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from urllib.parse import urlencode

import orjson

from fhirserver.errors import BadRequest, Forbidden, NotFound
from fhirserver.interactions.guard import OPEN, Guard, in_patient_compartment
from fhirserver.interactions.result import Result, instant
from fhirserver.store.database import Store
from fhirserver.store.resources import Stored

REQUEST_STATUS = {"POST": "201 Created", "PUT": "200 OK", "PATCH": "200 OK", "DELETE": "204 No Content"}


def parse_instant(name: str, value: str) -> datetime:
    """A FHIR date, dateTime or instant as an aware UTC datetime (no zone means UTC); 400 naming `name`."""
    text = value.strip().replace("Z", "+00:00")
    if len(text) == 4 and text.isdigit():
        text += "-01-01"
    elif len(text) == 7:
        text += "-01"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(f"{name}={value!r} is not a valid FHIR instant", expression=[name]) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _cursor(stored: Stored) -> str:
    raw = orjson.dumps([stored.ts.isoformat(), f"{stored.type}/{stored.id}/{stored.version}"])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _uncursor(value: str) -> tuple[datetime, str]:
    try:
        ts, key = orjson.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
        return datetime.fromisoformat(ts), key
    except (ValueError, TypeError):
        raise BadRequest("_cursor is not a cursor this server made", expression=["_cursor"]) from None


def _entry(base: str, s: Stored) -> dict:
    url = f"{base}/{s.type}/{s.id}"
    method = s.method or ("DELETE" if s.deleted else "PUT")
    entry: dict = {"fullUrl": url}
    if not s.deleted:
        entry["resource"] = orjson.Fragment(s.text.encode())
    entry["request"] = {"method": method, "url": s.type if method == "POST" else f"{s.type}/{s.id}"}
    entry["response"] = {"status": REQUEST_STATUS.get(method, "200 OK"), "etag": f'W/"{s.version}"',
                         "lastModified": instant(s.ts)}
    return entry


def history(store: Store, base: str, params: dict[str, str], page_size: int, page_max: int,
            rtype: str | None = None, rid: str | None = None, guard: Guard = OPEN) -> Result:
    """A history Bundle of committed versions, newest first, with a `next` link while more remain."""
    within = _history_scope(store, guard, rtype, rid)
    if rtype and rid and store.reader.current(rtype, rid) is None:
        raise NotFound(f"{rtype}/{rid} is not known")
    since = parse_instant("_since", params["_since"]) if params.get("_since") else None
    at = parse_instant("_at", params["_at"]) if params.get("_at") else None
    try:
        count = min(int(params.get("_count", page_size)), page_max)
    except ValueError:
        raise BadRequest(f"_count={params['_count']!r} is not a whole number", expression=["_count"]) from None
    if count < 0:
        raise BadRequest("_count must not be negative", expression=["_count"])
    before = _uncursor(params["_cursor"]) if params.get("_cursor") else None
    records = store.reader.history(rtype=rtype, rid=rid, since=since, at=at, before=before, limit=count + 1,
                                   within=within)
    if at is not None:
        records = _current_at(store, records, at)
    more = len(records) > count
    page = records[:count]
    path = "/".join(p for p in (base, rtype, rid) if p) + "/_history"
    kept = {k: v for k, v in params.items() if k in ("_since", "_at", "_count") and v}
    self_params = {**kept, "_cursor": params["_cursor"]} if before else kept
    links = [{"relation": "self", "url": f"{path}?{urlencode(self_params)}" if self_params else path}]
    if more and page:
        next_params = {**kept, "_count": count, "_cursor": _cursor(page[-1])}
        links.append({"relation": "next", "url": f"{path}?{urlencode(next_params)}"})
    bundle = {"resourceType": "Bundle", "type": "history", "link": links, "entry": [_entry(base, s) for s in page]}
    return Result(200, body=bundle)


def _history_scope(store: Store, guard: Guard, rtype: str | None, rid: str | None) -> dict | None:
    """What history the token may see: the instance when it can read it now; a type's or the system's history
    only inside its patient compartments (history records carry `comp`, not the search index, so granular
    category scopes cannot be applied to them and are refused)."""
    if rid and rtype:
        guard.check_existing(store, "history-instance", rtype, rid)
        return None
    interaction, target = ("history-type", rtype) if rtype else ("history-system", "*")
    guard.require(interaction, target)
    if guard.open:
        return None
    rules = guard.access.rules(interaction, target)
    if any(rule.constraint for rule in rules):
        raise Forbidden("history is not available under granular (category) scopes; search instead")
    if rtype and not in_patient_compartment(rtype) or any(rule.compartments is None for rule in rules):
        return None
    return {"comp": {"$in": sorted({c for rule in rules for c in rule.compartments or ()})}}


def _current_at(store: Store, records: list[Stored], at: datetime) -> list[Stored]:
    """Keep the versions that were current at `at`: no later version of the same resource is as old as `at`."""
    kept = []
    for s in records:
        nxt = store.reader.version(s.type, s.id, s.version + 1)
        if nxt is None or nxt.ts.replace(tzinfo=UTC) > at:
            kept.append(s)
    return kept

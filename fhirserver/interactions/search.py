"""search: GET [type]?… and POST [type]/_search, as a searchset Bundle with keyset paging."""

from __future__ import annotations

from urllib.parse import urlencode

import orjson

from fhirserver.errors import BadRequest
from fhirserver.interactions.result import Result
from fhirserver.search.query import parse
from fhirserver.store.database import Store


def _count(control: dict[str, list[str]], page_size: int, page_max: int) -> int:
    raw = control.get("_count", [str(page_size)])[-1]
    if not raw.isdigit():
        raise BadRequest(f"_count={raw!r} is not a whole number", expression=["_count"])
    return min(int(raw), page_max)


def search(store: Store, base: str, rtype: str, query: str | list[tuple[str, str]], page_size: int,
           page_max: int, strict: bool = False) -> Result:
    """A searchset Bundle of the current resources of `rtype` matching `query`."""
    parsed = parse(rtype, query, base, strict)
    count = _count(parsed.control, page_size, page_max)
    after = parsed.control.get("_cursor", [None])[-1]
    query = {"$and": [parsed.filter, {"_id": {"$gt": after}}]} if after else parsed.filter
    found = store.reader.find(rtype, query, count + 1) if count else []
    page = found[:count]
    kept = [*parsed.applied, ("_count", str(count))]
    self_params = kept + ([("_cursor", after)] if after else [])
    links = [{"relation": "self", "url": f"{base}/{rtype}?{urlencode(self_params)}"}]
    if len(found) > count and page:
        links.append({"relation": "next", "url": f"{base}/{rtype}?{urlencode(kept + [('_cursor', page[-1].id)])}"})
    entries = [{"fullUrl": f"{base}/{rtype}/{s.id}", "resource": orjson.Fragment(s.text.encode()),
                "search": {"mode": "match"}} for s in page]
    if parsed.ignored:
        outcome = {"resourceType": "OperationOutcome", "issue": [i.to_json() for i in parsed.ignored]}
        entries.append({"resource": outcome, "search": {"mode": "outcome"}})
    bundle: dict = {"resourceType": "Bundle", "type": "searchset"}
    if not after:
        bundle["total"] = store.reader.count(rtype, parsed.filter)
    bundle["link"] = links
    bundle["entry"] = entries
    return Result(200, body=bundle)

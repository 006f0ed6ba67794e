"""search: type, compartment and system level, as a searchset Bundle with keyset paging.

`GET [type]?…`, `POST [type]/_search`, `GET [compartment]/[id]/[type]?…` and `GET [base]?_type=…`. Entries are the
stored JSON as it is (`orjson.Fragment`) unless `_summary` or `_elements` asks for a subset.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlencode

import orjson

from fhirserver import fhirjson
from fhirserver.errors import BadRequest, Issue
from fhirserver.interactions.guard import OPEN, Guard, GuardedFinder
from fhirserver.interactions.result import Result
from fhirserver.interactions.shaping import parse_elements, parse_summary, shape
from fhirserver.resources.validation import check_type
from fhirserver.search.include import IncludePlan, includes_from_query, resolve_includes
from fhirserver.search.query import Parsed, all_of, parse
from fhirserver.search.sort import cursor_after, keyset_filter, mongo_sort, parse_sort
from fhirserver.store.database import Store
from fhirserver.store.resources import Stored

TOTAL_MODES = ("none", "estimate", "accurate")
SYSTEM_PARAMS = ("_id", "_lastUpdated", "_tag", "_profile", "_security", "_source")


@dataclass(frozen=True)
class Paging:
    """Page sizes from settings."""

    default: int
    maximum: int


def _last(control: dict[str, list[str]], name: str) -> str | None:
    values = control.get(name)
    return values[-1] if values else None


def _count(control: dict[str, list[str]], paging: Paging) -> int:
    raw = _last(control, "_count")
    if raw is None:
        return paging.default
    if not raw.isdigit():
        raise BadRequest(f"_count={raw!r} is not a whole number", expression=["_count"])
    return min(int(raw), paging.maximum)


def _total_mode(control: dict[str, list[str]]) -> str:
    mode = _last(control, "_total") or "accurate"
    if mode not in TOTAL_MODES:
        raise BadRequest(f"_total={mode!r} is not one of none, estimate, accurate", expression=["_total"])
    return mode


def _entry(base: str, s: Stored, summary: str | None, elements: list[str] | None, mode: str) -> dict:
    if summary in (None, "false") and not elements:
        resource = orjson.Fragment(s.text.encode())
    else:
        resource = shape(fhirjson.loads(s.text), summary, elements)
    return {"fullUrl": f"{base}/{s.type}/{s.id}", "resource": resource, "search": {"mode": mode}}


def _outcome_entry(issues: list[Issue]) -> dict:
    """The OperationOutcome entry (search mode `outcome`); it has no id on the server, so its fullUrl is a fresh
    `urn:uuid:` (a searchset entry must have a fullUrl: HAPI's BUNDLE_BUNDLE_ENTRY_FULLURL_REQUIRED)."""
    return {"fullUrl": f"urn:uuid:{uuid.uuid4()}",
            "resource": {"resourceType": "OperationOutcome", "issue": [i.to_json() for i in issues]},
            "search": {"mode": "outcome"}}


def link_query(pairs: list[tuple[str, str]]) -> str:
    """The query string of a self/next link: percent-encoded, except that commas stay literal as clients write them
    (`_type=Patient,Observation`, `code=a,b`). A comma means the same either way to this server, but readers of
    the link such as HAPI's validator split on the literal comma only."""
    return urlencode(pairs, safe=",")


def search(store: Store, base: str, rtype: str, query: str | list[tuple[str, str]], paging: Paging,
           strict: bool = False, compartment: tuple[str, str] | None = None, guard: Guard = OPEN) -> Result:
    """A searchset Bundle of the current resources of `rtype` matching `query` (inside `compartment`), among
    those the token may search."""
    guard.require("search", rtype)
    parsed = parse(rtype, query, base, strict, finder=GuardedFinder(store, guard))
    query_filter = guard.restrict("search", rtype, parsed.filter)
    path = f"{base}/{rtype}"
    if compartment is not None:
        ctype, cid = compartment
        query_filter = all_of(query_filter, {"comp": f"{ctype}/{cid}"})
        path = f"{base}/{ctype}/{cid}/{rtype}"
    plan = includes_from_query(rtype, [(k, v) for k, vs in parsed.control.items() for v in vs
                                       if k.split(":")[0] in ("_include", "_revinclude")])
    keys = parse_sort(rtype, parsed.control.get("_sort", []))

    def fetch(cursor: str | None, limit: int) -> tuple[list[Stored], str | None]:
        """One page in `_sort` order after `cursor` (keyset), and the cursor of its last entry."""
        page_filter = all_of(query_filter, keyset_filter(keys, cursor)) if cursor else query_filter
        found = store.reader.find(rtype, page_filter, limit + 1, mongo_sort(keys),
                                  plan.forward_codes(rtype) if plan else ())
        if len(found) <= limit or not limit:
            return found[:limit], None
        last = found[limit - 1]
        doc = store.reader.find_raw(rtype, {"_id": last.id}, {"_id": 1, "ts": 1, "srt": 1}, 1)[0]
        return found[:limit], cursor_after(keys, doc)

    return _searchset(store, base, path, [(rtype, query_filter)], parsed, paging, fetch, plan, guard)


def system_search(store: Store, base: str, query: list[tuple[str, str]], paging: Paging, types: list[str],
                  strict: bool = False, guard: Guard = OPEN) -> Result:
    """`GET [base]?_type=A,B&…`: the Resource-level parameters over several types, type by type, in id order.

    Named types must all be searchable with the token (403 otherwise); without `_type`, the types it may search.
    """
    named = [t for v in dict(query).get("_type", "").split(",") if (t := v.strip())]
    for t in named:
        check_type(t)
        guard.require("search", t)
    wanted = named or [t for t in types if guard.allows("search", t)]
    if "_sort" in dict(query):
        raise BadRequest("_sort is not supported in a search across types", expression=["_sort"])
    pairs = [(k, v) for k, v in query if k.split(":")[0] in SYSTEM_PARAMS or k.startswith("_") and k != "_type"]
    dropped = [k for k, v in query if (k, v) not in pairs and k != "_type"]
    if dropped and strict:
        raise BadRequest(f"search parameter {dropped[0]} cannot be used in a search across types",
                         expression=[dropped[0]])
    targets = []
    parsed = Parsed(filter={})
    for t in wanted:
        parsed = parse(t, pairs, base, strict, finder=GuardedFinder(store, guard))
        targets.append((t, guard.restrict("search", t, parsed.filter)))
    parsed.ignored += [Issue("not-supported", f"{k} is not a Resource-level parameter; it was ignored",
                             severity="warning", expression=[k]) for k in dropped]
    if dict(query).get("_type"):
        parsed.applied.insert(0, ("_type", dict(query)["_type"]))

    def fetch(cursor: str | None, limit: int) -> tuple[list[Stored], str | None]:
        """Type after type in `_id` order; the cursor is the last `Type/id`."""
        after_type, _, after_id = (cursor or "").partition("/")
        if cursor and after_type not in wanted:
            raise BadRequest("_cursor does not belong to this search", expression=["_cursor"])
        page: list[Stored] = []
        for rtype, type_filter in targets:
            if cursor and wanted.index(rtype) < wanted.index(after_type):
                continue
            if cursor and rtype == after_type:
                type_filter = all_of(type_filter, {"_id": {"$gt": after_id}})
            page += store.reader.find(rtype, type_filter, limit + 1 - len(page))
            if len(page) > limit:
                break
        more = len(page) > limit and limit > 0
        page = page[:limit]
        return page, f"{page[-1].type}/{page[-1].id}" if more and page else None

    return _searchset(store, base, base, targets, parsed, paging, fetch)


Fetch = Callable[[str | None, int], tuple[list[Stored], str | None]]


def _searchset(store: Store, base: str, path: str, targets: list[tuple[str, dict]], parsed: Parsed,
               paging: Paging, fetch: Fetch, plan: IncludePlan | None = None, guard: Guard = OPEN) -> Result:
    """The Bundle: a page from `fetch`, includes, outcome of ignored parameters, links and total."""
    control = parsed.control
    count = _count(control, paging)
    summary = parse_summary(_last(control, "_summary"))
    elements = parse_elements(_last(control, "_elements"))
    total_mode = "accurate" if summary == "count" else _total_mode(control)
    cursor = _last(control, "_cursor")
    if summary == "count":
        count = 0
    page, next_cursor = fetch(cursor, count) if count else ([], None)
    kept = [*parsed.applied, *(plan.self_link_params() if plan else []),
            *[(k, v) for k in ("_sort", "_summary", "_elements", "_total") for v in control.get(k, [])],
            ("_count", str(count))]
    links = [{"relation": "self", "url": f"{path}?{link_query(kept + ([('_cursor', cursor)] if cursor else []))}"}]
    if next_cursor:
        links.append({"relation": "next", "url": f"{path}?{link_query([*kept, ('_cursor', next_cursor)])}"})
    entries = [_entry(base, s, summary, elements, "match") for s in page]
    if plan and page:
        def reach(rtype: str) -> dict | None:
            """Included resources obey the token too: None leaves a type out, {} is unrestricted."""
            if not guard.allows("read", rtype):
                return None
            return guard.visibility("read", rtype) or {}

        included = resolve_includes(store, plan, page, restrict=reach)
        entries += [_entry(base, s, summary, elements, "include") for s in included]
    if parsed.ignored:
        entries.append(_outcome_entry(parsed.ignored))
    bundle: dict = {"resourceType": "Bundle", "type": "searchset"}
    if total_mode != "none" and cursor is None:
        # a first page without a next one holds every match: no count needed
        complete = count and next_cursor is None
        bundle["total"] = len(page) if complete else sum(store.reader.count(t, f) for t, f in targets)
    bundle["link"] = links
    if entries:
        bundle["entry"] = entries
    return Result(200, body=bundle)

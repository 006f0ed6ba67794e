"""batch and transaction Bundles (POST [base]).

A transaction is all-or-nothing through one commit of the store: entries are processed in the spec's order
(DELETE, POST, PUT/PATCH, then GET), `urn:uuid` fullUrls get server ids and every reference to them is rewritten,
conditional references (`Patient?identifier=...`) are resolved, and the response lists each entry in request order.
A batch runs each entry on its own and reports each outcome.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

from fhirserver import fhirjson
from fhirserver.errors import BadRequest, FHIRError, Issue, NotFound, PreconditionFailed, Unprocessable
from fhirserver.interactions import create as create_mod
from fhirserver.interactions import delete as delete_mod
from fhirserver.interactions import read as read_mod
from fhirserver.interactions import update as update_mod
from fhirserver.interactions.guard import OPEN, Guard
from fhirserver.interactions.patch import apply_fhirpath_patch, apply_json_patch
from fhirserver.interactions.result import Result, instant
from fhirserver.interactions.versions import (
    commit_with_rules,
    ensure_indexes,
    make_version,
    next_timestamp,
    stored_of,
)
from fhirserver.resources.validation import SUPPORTED_TYPES, check_type, validate_resource
from fhirserver.search.conditional import condition_lease, matching
from fhirserver.store.commit import CommitAborted, Version, VersionConflict, wait_a_little
from fhirserver.store.database import Store
from fhirserver.store.resources import Stored

ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
STATUS_TEXT = {200: "200 OK", 201: "201 Created", 204: "204 No Content", 304: "304 Not Modified"}
MAX_ATTEMPTS = 10

# A search or read run for GET entries: (method, path, query) -> Result. Given by the caller (the API wires search).
GetHandler = Callable[[str, str | None, str | None, str], Result]


@dataclass
class Entry:
    """One request entry of the Bundle, parsed."""

    index: int
    method: str
    type: str
    id: str | None
    vid: str | None
    query: str
    resource: Any
    full_url: str | None
    if_none_exist: str | None
    if_match: int | None
    target: str | None = None  # the logical id this entry writes, once known
    outcome: Result | None = None
    existing: Stored | None = None  # the match of a conditional create
    version: Version | None = None
    extra: dict = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"Bundle.entry[{self.index}]"


def _etag_version(value: str | None, where: str) -> int | None:
    if value is None:
        return None
    text = value.strip()
    if text.startswith("W/"):
        text = text[2:]
    text = text.strip('"')
    if not text.isdigit():
        raise BadRequest(f"{where}.request.ifMatch {value!r} is not an ETag like W/\"3\"",
                         expression=[f"{where}.request.ifMatch"])
    return int(text)


def parse_url(url: str, base: str) -> tuple[str, str | None, str | None, str]:
    """An entry URL (relative, or absolute on this server) as (type, id, version, query)."""
    if url.startswith(base + "/"):
        url = url[len(base) + 1:]
    elif "://" in url:
        parts = urlsplit(url)
        url = parts.path.rsplit("/fhir/", 1)[-1] + (f"?{parts.query}" if parts.query else "")
    path, _, query = url.lstrip("/").partition("?")
    segments = [s for s in path.split("/") if s]
    rtype = segments[0] if segments else ""
    rid = segments[1] if len(segments) > 1 else None
    vid = segments[3] if len(segments) > 3 and segments[2] == "_history" else None
    return rtype, rid, vid, query


def _parse_entries(bundle: dict, base: str) -> list[Entry]:
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise BadRequest("Bundle.entry must be a list", expression=["Bundle.entry"])
    parsed = []
    for n, raw in enumerate(entries):
        where = f"Bundle.entry[{n}]"
        if not isinstance(raw, dict) or not isinstance(raw.get("request"), dict):
            raise BadRequest(f"{where} has no request", expression=[f"{where}.request"])
        req = raw["request"]
        method = str(req.get("method", "")).upper()
        if method not in ORDER:
            raise BadRequest(f"{where}.request.method {req.get('method')!r} is not GET, HEAD, POST, PUT, PATCH "
                             "or DELETE", expression=[f"{where}.request.method"])
        url = req.get("url")
        if not isinstance(url, str) or not url:
            raise BadRequest(f"{where}.request.url is missing", expression=[f"{where}.request.url"])
        rtype, rid, vid, query = parse_url(url, base)
        if method != "GET" or rtype not in ("", "metadata") and not rtype.startswith("$"):
            check_type(rtype)
        resource = raw.get("resource")
        if method in ("POST", "PUT") and not isinstance(resource, dict):
            raise BadRequest(f"{where} ({method}) has no resource", expression=[f"{where}.resource"])
        if method in ("PUT", "PATCH", "DELETE") and not rid and not query:
            raise BadRequest(f"{where}: {method} needs an id or a search in its url",
                             expression=[f"{where}.request.url"])
        parsed.append(Entry(n, method, rtype, rid, vid, query, resource, raw.get("fullUrl"),
                            req.get("ifNoneExist"), _etag_version(req.get("ifMatch"), where)))
    return parsed


def _rewrite_strings(value: Any, mapping: dict[str, str], other: Callable[[str], str | None]) -> Any:
    """A copy of `value` with every string s in `mapping` replaced by mapping[s], and every other string holding
    a `?` by other(s) when that is not None. Strings are handled inline: this runs over every element of every
    resource of a transaction Bundle."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if type(v) is str:
                if v in mapping:
                    v = mapping[v]
                elif "?" in v:
                    v = other(v) or v
            elif isinstance(v, dict | list):
                v = _rewrite_strings(v, mapping, other)
            out[k] = v
        return out
    if isinstance(value, list):
        return [_rewrite_strings(v, mapping, other) for v in value]
    if isinstance(value, str):
        return mapping.get(value) or ("?" in value and other(value)) or value
    return value


class Transaction:
    """Processes one transaction Bundle against the store."""

    def __init__(self, store: Store, base: str, get: GetHandler, guard: Guard = OPEN) -> None:
        self.guard = guard
        self.store = store
        self.base = base
        self.get = get
        self.conditional_refs: dict[str, str] = {}

    def run(self, bundle: dict) -> dict:
        entries = _parse_entries(bundle, self.base)
        # Conditional creates and updates with the same condition must not both find nothing and both create.
        conditions = [condition_lease(e.type, e.if_none_exist) for e in entries if e.if_none_exist] + \
            [condition_lease(e.type, e.query) for e in entries if e.method == "PUT" and not e.id and e.query]
        with self.store.leases.hold_all(conditions):
            self._commit(entries)
        for e in sorted(entries, key=lambda e: ORDER[e.method]):
            if e.method in ("GET", "HEAD"):
                e.outcome = _guard(lambda e=e: self.get(e.method, e.type, e.id and "/".join(
                    p for p in (e.id, "_history" if e.vid else None, e.vid) if p), e.query))
                if e.outcome.status >= 400:
                    raise FHIRError(f"{e.where}: GET failed with {e.outcome.status}", status=e.outcome.status)
        return {"resourceType": "Bundle", "type": "transaction-response",
                "entry": [_response_entry(e, self.base) for e in entries]}

    def _commit(self, entries: list[Entry]) -> None:
        """Plan and commit every write entry as one commit, retrying when another writer got in first."""
        for attempt in range(MAX_ATTEMPTS):
            try:
                self._resolve_targets(entries)
                self._rewrite_references(entries)
                self._validate(entries)
                self._plan_writes(entries)
                versions = [e.version for e in entries if e.version is not None]
                for rtype in {v.type for v in versions}:
                    ensure_indexes(self.store, rtype)
                commit_with_rules(self.store, versions)
                return
            except VersionConflict as exc:
                if any(e.if_match is not None for e in entries):
                    raise PreconditionFailed(f"a resource of this transaction was changed by another request "
                                             f"({exc.key})") from None
                self.store.committer.unblock(exc.key)
                wait_a_little(attempt)
                for e in entries:
                    e.version = e.outcome = e.existing = None
            except CommitAborted as exc:
                raise FHIRError(str(exc), status=503) from None
        raise FHIRError("the transaction kept conflicting with other writers; try again", status=409)

    # -- steps -------------------------------------------------------------------------------------------------
    def _resolve_targets(self, entries: list[Entry]) -> None:
        """Decide which logical id each write entry touches; no resource may be written twice."""
        seen: dict[str, int] = {}
        for e in entries:
            if e.method == "POST":
                if e.if_none_exist:
                    found = matching(self.store, e.type, e.if_none_exist, limit=2,
                                     visible=self.guard.reachable("search", e.type))
                    if len(found) > 1:
                        raise PreconditionFailed(f"{e.where}.request.ifNoneExist matches more than one {e.type}")
                    e.existing = found[0] if found else None
                e.target = e.existing.id if e.existing else (e.target or create_mod.new_id())
            elif e.method in ("PUT", "PATCH", "DELETE"):
                e.target = e.id or self._conditional_target(e)
            if e.target and e.method != "GET":
                key = f"{e.type}/{e.target}"
                if key in seen:
                    raise BadRequest(f"{e.where} and Bundle.entry[{seen[key]}] both change {key}",
                                     expression=[e.where])
                seen[key] = e.index

    def _conditional_target(self, e: Entry) -> str | None:
        found = matching(self.store, e.type, e.query, limit=2, visible=self.guard.reachable("search", e.type))
        if len(found) > 1:
            raise PreconditionFailed(f"{e.where}: {e.method} {e.type}?{e.query} matches more than one resource")
        if found:
            return found[0].id
        if e.method == "PUT":
            body_id = e.resource.get("id") if isinstance(e.resource, dict) else None
            return body_id or e.target or create_mod.new_id()
        return None  # PATCH or DELETE of nothing

    def _rewrite_references(self, entries: list[Entry]) -> None:
        """Point references at fullUrls to the assigned ids; resolve conditional references."""
        mapping: dict[str, str] = {}
        for e in entries:
            if e.full_url and e.target and e.method in ("POST", "PUT"):
                mapping[e.full_url] = f"{e.type}/{e.target}"
                if e.full_url.startswith(self.base + "/"):
                    mapping[e.full_url[len(self.base) + 1:]] = f"{e.type}/{e.target}"

        for e in entries:
            if e.method not in ("POST", "PUT") or not isinstance(e.resource, dict):
                continue

            def conditional(value: str, where: str = e.where) -> str | None:
                if value.split("?", 1)[0] in SUPPORTED_TYPES and "/" not in value.split("?")[0]:
                    return self._conditional_reference(value, where)
                return None

            body = {k: v for k, v in e.resource.items() if k != "id"}
            e.resource = {"resourceType": e.type, "id": e.target, **_rewrite_strings(body, mapping, conditional)}

    def _conditional_reference(self, ref: str, where: str) -> str:
        if ref not in self.conditional_refs:
            rtype, query = ref.split("?", 1)
            found = matching(self.store, rtype, query, limit=2, visible=self.guard.reachable("search", rtype))
            if len(found) != 1:
                raise Unprocessable(f"{where}: conditional reference {ref!r} matches {len(found)} resources "
                                    "(exactly one is needed)", expression=[f"{where}.resource"])
            self.conditional_refs[ref] = f"{rtype}/{found[0].id}"
        return self.conditional_refs[ref]

    def _validate(self, entries: list[Entry]) -> None:
        issues: list[Issue] = []
        for e in entries:
            if e.method in ("POST", "PUT") and not e.existing:
                for issue in validate_resource(e.resource, resource_type=e.type, resource_id=e.target):
                    issue.expression = [f"{e.where}.resource.{x.split('.', 1)[-1]}" if "." in x else
                                        f"{e.where}.resource" for x in issue.expression] or [f"{e.where}.resource"]
                    issue.diagnostics = f"{e.where}: {issue.diagnostics}"
                    issues.append(issue)
        errors = [i for i in issues if i.severity in ("error", "fatal")]
        if errors:
            raise Unprocessable(errors[0].diagnostics, issues=issues)

    def _plan_writes(self, entries: list[Entry]) -> None:
        """Make each write entry's version; every entry must be allowed by the token (403/404 fails them all)."""
        for e in sorted(entries, key=lambda e: ORDER[e.method]):
            self._plan_write(e)
            if e.version is not None:
                self.guard.check_new(_INTERACTION[e.method], e.version)

    def _plan_write(self, e: Entry) -> None:
        """One write entry's version (nothing for a POST that matched, or a DELETE of nothing)."""
        if e.method == "POST":
            if not e.existing:
                e.version = make_version(e.type, e.target, 1, next_timestamp(None), e.resource, "POST")
        elif e.method in ("PUT", "PATCH", "DELETE") and e.target:
            current = self.store.reader.current(e.type, e.target)
            if current is not None and not current.deleted:
                self.guard.check_existing(self.store, _INTERACTION[e.method], e.type, e.target)
            if e.if_match is not None and (current is None or current.deleted or current.version != e.if_match):
                raise PreconditionFailed(f"{e.where}.request.ifMatch expects version {e.if_match} of "
                                         f"{e.type}/{e.target}")
            number = current.version + 1 if current else 1
            ts = next_timestamp(current)
            if e.method == "DELETE":
                if current is not None and not current.deleted:
                    e.version = make_version(e.type, e.target, number, ts, None, "DELETE")
            elif e.method == "PUT":
                e.extra["created"] = current is None or current.deleted
                e.version = make_version(e.type, e.target, number, ts, e.resource, "PUT")
            else:
                if current is None or current.deleted:
                    raise NotFound(f"{e.where}: {e.type}/{e.target} does not exist to be patched")
                patched = _apply_patch(e, fhirjson.loads(current.text))
                issues = validate_resource(patched, resource_type=e.type, resource_id=e.target)
                if any(i.severity in ("error", "fatal") for i in issues):
                    raise Unprocessable(f"{e.where}: the patched resource is not valid", issues=issues)
                e.version = make_version(e.type, e.target, number, ts, patched, "PATCH")


_INTERACTION = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def _apply_patch(e: Entry, resource: dict) -> dict:
    body = e.resource
    if isinstance(body, dict) and body.get("resourceType") == "Parameters":
        return apply_fhirpath_patch(resource, body)
    if isinstance(body, dict) and body.get("resourceType") == "Binary":
        try:
            ops = orjson.loads(base64.b64decode(body.get("data", "")))
        except (ValueError, TypeError):
            raise BadRequest(f"{e.where}: the Binary does not hold a JSON Patch document",
                             expression=[f"{e.where}.resource.data"]) from None
        return apply_json_patch(resource, ops)
    raise BadRequest(f"{e.where}: a PATCH entry needs a Parameters (FHIRPath Patch) or a Binary (JSON Patch)",
                     expression=[f"{e.where}.resource"])


def warm_up() -> None:
    """Build what the write path builds on first use of each supported type: the fhir.resources model (about 20 ms
    per type, the cost of a worker's first Bundles), the compiled search parameters, compartments and sort keys.
    Called once in the gunicorn master before it forks several workers, so that each worker starts warm instead of
    building them again. No database is touched."""
    for rtype in sorted(SUPPORTED_TYPES):
        validate_resource({"resourceType": rtype})
        make_version(rtype, "warm-up", 1, next_timestamp(None), {"resourceType": rtype}, "POST")


def outcome_of(exc: FHIRError) -> dict:
    """The OperationOutcome of an error, for an entry's response."""
    return {"resourceType": "OperationOutcome", "issue": [i.to_json() for i in exc.issues]}


def _guard(fn: Callable[[], Result]) -> Result:
    try:
        return fn()
    except FHIRError as exc:
        return Result(exc.status, body=outcome_of(exc))


def _response_entry(e: Entry, base: str) -> dict:
    """The response entry for a transaction entry."""
    response: dict = {}
    body: Any = None
    if e.method == "POST" and e.existing:
        s = e.existing
        response = {"status": "200 OK", "location": f"{base}/{s.type}/{s.id}/_history/{s.version}",
                    "etag": f'W/"{s.version}"', "lastModified": instant(s.ts)}
        body = orjson.Fragment(s.text.encode())
    elif e.version is not None:
        s = stored_of(e.version)
        status = 201 if e.method == "POST" or e.extra.get("created") else (204 if s.deleted else 200)
        response = {"status": STATUS_TEXT[status], "etag": f'W/"{s.version}"', "lastModified": instant(s.ts)}
        if not s.deleted:
            response["location"] = f"{base}/{s.type}/{s.id}/_history/{s.version}"
            body = orjson.Fragment(s.text.encode())
    elif e.method in ("DELETE", "PATCH", "PUT"):
        response = {"status": "204 No Content"} if e.method == "DELETE" else {"status": "200 OK"}
    elif e.outcome is not None:
        response = {"status": STATUS_TEXT.get(e.outcome.status, str(e.outcome.status))}
        if e.outcome.stored is not None:
            s = e.outcome.stored
            response.update(etag=f'W/"{s.version}"', lastModified=instant(s.ts))
            body = orjson.Fragment(s.text.encode())
        elif e.outcome.body is not None:
            body = e.outcome.body
    entry: dict = {}
    if e.full_url and e.method in ("POST", "PUT") and e.target:
        entry["fullUrl"] = f"{base}/{e.type}/{e.target}"
    if body is not None:
        entry["resource"] = body
    entry["response"] = response
    return entry


def batch(store: Store, base: str, bundle: dict, get: GetHandler,
          single: Callable[[Entry], Result]) -> dict:
    """Run each entry on its own; a failure is that entry's OperationOutcome and status."""
    entries_raw = bundle.get("entry") or []
    if not isinstance(entries_raw, list):
        raise BadRequest("Bundle.entry must be a list", expression=["Bundle.entry"])
    out = []
    for n, raw in enumerate(entries_raw):
        try:
            (e,) = _parse_entries({"entry": [raw]}, base)
            e.index = n
            if e.method in ("GET", "HEAD"):
                path = e.id and "/".join(p for p in (e.id, "_history" if e.vid else None, e.vid) if p)
                result = get(e.method, e.type, path, e.query)
            else:
                result = single(e)
        except FHIRError as exc:
            result = Result(exc.status, body=outcome_of(exc))
        out.append(_batch_entry(result, base))
    return {"resourceType": "Bundle", "type": "batch-response", "entry": out}


def _batch_entry(result: Result, base: str) -> dict:
    response: dict = {"status": STATUS_TEXT.get(result.status, str(result.status))}
    entry: dict = {}
    if result.stored is not None and not result.stored.deleted:
        s = result.stored
        entry["fullUrl"] = f"{base}/{s.type}/{s.id}"
        entry["resource"] = orjson.Fragment(s.text.encode())
        response.update(etag=f'W/"{s.version}"', lastModified=instant(s.ts))
    elif result.body is not None:
        if result.status >= 400:
            response["outcome"] = result.body
        else:
            entry["resource"] = result.body
    if result.location:
        response["location"] = result.location
    if "ETag" in result.headers and "etag" not in response:
        response["etag"] = result.headers["ETag"]
    entry["response"] = response
    return entry


def run_single(store: Store, base: str, e: Entry, guard: Guard = OPEN) -> Result:
    """One batch write entry through the ordinary interactions."""
    if e.method == "POST":
        return create_mod.create(store, base, e.type, e.resource, e.if_none_exist, guard=guard)
    if e.method == "PUT":
        if e.id:
            return update_mod.update(store, base, e.type, e.id, e.resource, e.if_match, guard=guard)
        return update_mod.conditional_update(store, base, e.type, e.query, e.resource, e.if_match, guard=guard)
    if e.method == "DELETE":
        if e.id:
            return delete_mod.delete(store, e.type, e.id, e.if_match, guard=guard)
        return delete_mod.conditional_delete(store, e.type, e.query, guard=guard)
    current = read_mod.read(store, e.type, e.id, guard).stored if e.id else None
    if current is None:
        raise NotFound(f"{e.where}: nothing to patch")
    patched = _apply_patch(e, fhirjson.loads(current.text))
    return update_mod.update(store, base, e.type, e.id, patched, e.if_match, method="PATCH", guard=guard)

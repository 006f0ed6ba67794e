"""Making new versions: server-set id and meta, the search index and compartments, and the write with retries."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from fhirserver import fhirjson
from fhirserver.errors import Conflict, FHIRError, PreconditionFailed, Unprocessable
from fhirserver.interactions.result import instant
from fhirserver.resources import scheduling
from fhirserver.resources.validation import validate_resource
from fhirserver.search.extract import compartments, extract_index
from fhirserver.search.indexing import search_indexes
from fhirserver.search.sort import sort_values
from fhirserver.store.commit import ClaimTaken, CommitAborted, Version, VersionConflict, now, wait_a_little
from fhirserver.store.database import Store
from fhirserver.store.resources import Stored

MAX_ATTEMPTS = 30


def next_timestamp(current: Stored | None) -> datetime:
    """Now, but never earlier than the previous version's time (lastUpdated only moves forward)."""
    t = now()
    if current is not None and current.ts.replace(tzinfo=t.tzinfo) >= t:
        return current.ts.replace(tzinfo=t.tzinfo) + timedelta(milliseconds=1)
    return t


def stamp(resource: dict, rid: str, version: int, ts: datetime) -> dict:
    """A copy with the server's id, meta.versionId and meta.lastUpdated; other meta (tags, profiles) kept."""
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = str(version)
    meta["lastUpdated"] = instant(ts)
    out = {"resourceType": resource["resourceType"], "id": rid}
    out.update((k, v) for k, v in resource.items() if k not in ("resourceType", "id", "meta"))
    out["meta"] = meta
    # keep the usual order: resourceType, id, meta, then the rest
    return {"resourceType": out.pop("resourceType"), "id": out.pop("id"), "meta": out.pop("meta"), **out}


def make_version(rtype: str, rid: str, version: int, ts: datetime, resource: dict | None, method: str) -> Version:
    """The version to commit: stored text, index and compartments (nothing for a delete)."""
    if resource is None:
        return Version(rtype, rid, version, ts, None, method)
    stamped = stamp(resource, rid, version, ts)
    idx = scheduling.with_slot_day(rtype, extract_index(stamped))
    return Version(rtype, rid, version, ts, fhirjson.dumps(stamped).decode(), method, idx,
                   compartments(rtype, rid, idx), sort_values(rtype, idx))


def stored_of(version: Version) -> Stored:
    """The stored view of a version just committed (no read back needed)."""
    return Stored(version.type, version.id, version.version, version.ts, version.text, version.method)


def check_valid(resource: object, rtype: str, rid: str | None = None, **kwargs) -> dict:
    """Validate a body for type `rtype` (and URL id); raise 422 with one issue per problem."""
    issues = validate_resource(resource, resource_type=rtype, resource_id=rid, **kwargs)
    errors = [i for i in issues if i.severity in ("error", "fatal")]
    if errors:
        raise Unprocessable(errors[0].diagnostics, issues=issues)
    assert isinstance(resource, dict)
    return resource


def ensure_indexes(store: Store, rtype: str) -> None:
    """The store's and the searches' indexes of `rtype` (once per process)."""
    store.indexes.resource_type(rtype, search_indexes(rtype))


def commit_with_rules(store: Store, versions: list[Version]) -> list[Version]:
    """Commit `versions` together with the checks and side effects of the resource rules (slot claims, Slot
    statuses) as ONE commit; every write path goes through here. Returns the extra versions written.

    A conflict on a side-effect version is retried here with a fresh plan; one on `versions` is the caller's.
    """
    own = {v.key for v in versions}
    for attempt in range(MAX_ATTEMPTS):
        effects = scheduling.plan(store, versions, make_version)
        for rtype in {v.type for v in effects.versions}:
            ensure_indexes(store, rtype)
        try:
            store.committer.commit(versions + effects.versions, effects.claims, effects.releases)
        except ClaimTaken as exc:
            outcome = scheduling.taken(store, exc)
            if not isinstance(outcome, VersionConflict):
                raise outcome from None
            wait_a_little(attempt)
            continue
        except VersionConflict as exc:
            if exc.key in own:
                raise
            store.committer.unblock(exc.key)
            wait_a_little(attempt)
            continue
        scheduling.slots_freed(store, effects.freed)
        return effects.versions
    raise Conflict("the resources this write touches are being changed by many requests at once; try again")


def write_with_retry(store: Store, rtype: str, rid: str, plan: Callable[[Stored | None], Version | None],
                     if_match: int | None = None) -> tuple[Stored | None, Version | None]:
    """Read the current version, let `plan` make the next one, commit it; retry when another writer wins.

    With `if_match`, a version other than the expected one is 412 at once (exactly one writer wins per version).
    `plan` may return None to write nothing. Returns (previous, written).
    """
    for attempt in range(MAX_ATTEMPTS):
        current = store.reader.current(rtype, rid)
        if if_match is not None and (current is None or current.deleted or current.version != if_match):
            have = "no current version" if current is None or current.deleted else f"version {current.version}"
            raise PreconditionFailed(f"If-Match expects version {if_match} of {rtype}/{rid}, found {have}")
        version = plan(current)
        if version is None:
            return current, None
        ensure_indexes(store, rtype)
        try:
            commit_with_rules(store, [version])
            return current, version
        except VersionConflict as exc:
            if if_match is not None:
                raise PreconditionFailed(f"{rtype}/{rid} was changed by another request (version {if_match} "
                                         "is no longer current)") from None
            store.committer.unblock(exc.key)
            wait_a_little(attempt)
        except CommitAborted as exc:
            raise FHIRError(str(exc), status=503) from None
    raise Conflict(f"{rtype}/{rid} is being changed by many requests at once; try again")

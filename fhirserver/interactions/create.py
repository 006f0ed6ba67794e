"""create: POST [type], server-assigned id; conditional create with If-None-Exist."""

from __future__ import annotations

import uuid

from fhirserver.errors import PreconditionFailed
from fhirserver.interactions.guard import OPEN, Guard
from fhirserver.interactions.result import Result
from fhirserver.interactions.versions import (
    check_valid,
    commit_with_rules,
    ensure_indexes,
    make_version,
    next_timestamp,
    stored_of,
)
from fhirserver.search.conditional import condition_lease, matching
from fhirserver.store.database import Store


def new_id() -> str:
    """A fresh logical id."""
    return str(uuid.uuid4())


def create(store: Store, base: str, rtype: str, body: object, if_none_exist: str | None = None,
           rid: str | None = None, guard: Guard = OPEN) -> Result:
    """Create a resource; with `if_none_exist`, 1 match answers 200 with it, several 412."""
    guard.require("create", rtype)
    resource = check_valid(body, rtype)
    if if_none_exist is None:
        return _create(store, base, rtype, resource, rid, guard)
    # Two requests with the same condition must not both find nothing and both create: hold the condition.
    with store.leases.hold(condition_lease(rtype, if_none_exist)):
        found = matching(store, rtype, if_none_exist, limit=2, visible=guard.reachable("search", rtype))
        if len(found) > 1:
            raise PreconditionFailed(f"If-None-Exist {if_none_exist!r} matches more than one {rtype}")
        if found:
            return Result(200, found[0], location=f"{base}/{rtype}/{found[0].id}/_history/{found[0].version}")
        return _create(store, base, rtype, resource, rid, guard)


def _create(store: Store, base: str, rtype: str, resource: dict, rid: str | None, guard: Guard) -> Result:
    rid = rid or new_id()
    version = make_version(rtype, rid, 1, next_timestamp(None), resource, "POST")
    guard.check_new("create", version)
    ensure_indexes(store, rtype)
    commit_with_rules(store, [version])
    return Result(201, stored_of(version), location=f"{base}/{rtype}/{rid}/_history/1")

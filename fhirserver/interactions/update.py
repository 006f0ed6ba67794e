"""update: PUT [type]/[id] (update-as-create with a client id) and conditional update PUT [type]?[query]."""

from __future__ import annotations

from fhirserver.errors import BadRequest, NotFound, PreconditionFailed
from fhirserver.interactions.create import new_id
from fhirserver.interactions.guard import OPEN, Guard
from fhirserver.interactions.result import Result
from fhirserver.interactions.versions import (
    check_valid,
    make_version,
    next_timestamp,
    stored_of,
    write_with_retry,
)
from fhirserver.search.conditional import condition_lease, matching
from fhirserver.store.database import Store
from fhirserver.store.resources import Stored


def update(store: Store, base: str, rtype: str, rid: str, body: object, if_match: int | None = None,
           method: str = "PUT", guard: Guard = OPEN) -> Result:
    """Write a new version of [type]/[id]; 201 when it did not exist (or was deleted), 200 otherwise.

    The token must reach the resource as it is (when it exists) and as it will be.
    """
    interaction = "patch" if method == "PATCH" else "update"
    guard.require(interaction, rtype)
    resource = check_valid(body, rtype, rid, id_rule="required")

    def plan(current: Stored | None):
        if current is not None and not current.deleted and not guard.can_reach(store, interaction, rtype, rid):
            raise NotFound(f"{rtype}/{rid} is not known")
        number = current.version + 1 if current else 1
        version = make_version(rtype, rid, number, next_timestamp(current), resource, method)
        guard.check_new(interaction, version)
        return version

    previous, written = write_with_retry(store, rtype, rid, plan, if_match)
    assert written is not None
    created = previous is None or previous.deleted
    return Result(201 if created else 200, stored_of(written),
                  location=f"{base}/{rtype}/{rid}/_history/{written.version}")


def conditional_update(store: Store, base: str, rtype: str, query: str, body: object,
                       if_match: int | None = None, guard: Guard = OPEN) -> Result:
    """PUT [type]?[query]: 0 matches create (with the body's id if any), 1 updates it, several 412."""
    if not query:
        raise BadRequest("a conditional update needs search parameters")
    with store.leases.hold(condition_lease(rtype, query)):
        found = matching(store, rtype, query, limit=2, visible=guard.reachable("search", rtype))
        if len(found) > 1:
            raise PreconditionFailed(f"conditional update {rtype}?{query} matches more than one resource")
        body_id = body.get("id") if isinstance(body, dict) else None
        if found:
            target = found[0].id
            if body_id is not None and body_id != target:
                raise BadRequest(f"the body's id {body_id!r} is not the id of the matching resource {target!r}",
                                 expression=[f"{rtype}.id"])
            body = {**body, "id": target} if isinstance(body, dict) else body
            return update(store, base, rtype, target, body, if_match, guard=guard)
        target = body_id if isinstance(body_id, str) and body_id else new_id()
        body = {**body, "id": target} if isinstance(body, dict) else body
        return update(store, base, rtype, target, body, if_match, guard=guard)

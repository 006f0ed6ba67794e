"""delete: DELETE [type]/[id] (a delete version; read then gives 410) and conditional delete."""

from __future__ import annotations

from fhirserver.errors import BadRequest, PreconditionFailed
from fhirserver.interactions.guard import OPEN, Guard
from fhirserver.interactions.result import Result
from fhirserver.interactions.versions import make_version, next_timestamp, write_with_retry
from fhirserver.search.conditional import matching
from fhirserver.store.database import Store
from fhirserver.store.resources import Stored

MAX_CONDITIONAL_DELETES = 100


def delete(store: Store, rtype: str, rid: str, if_match: int | None = None, guard: Guard = OPEN) -> Result:
    """Delete; deleting what does not exist or is already deleted succeeds and writes nothing."""
    guard.check_existing(store, "delete", rtype, rid)

    def plan(current: Stored | None):
        if current is None or current.deleted:
            return None
        return make_version(rtype, rid, current.version + 1, next_timestamp(current), None, "DELETE")

    _, written = write_with_retry(store, rtype, rid, plan, if_match)
    return Result(204, headers={"ETag": f'W/"{written.version}"'} if written else {})


def conditional_delete(store: Store, rtype: str, query: str, multiple: bool = False,
                       guard: Guard = OPEN) -> Result:
    """DELETE [type]?[query]: every match when `multiple` (up to a limit), else at most one (412 for more)."""
    if not query:
        raise BadRequest("a conditional delete needs search parameters")
    found = matching(store, rtype, query, limit=MAX_CONDITIONAL_DELETES + 1, visible=guard.reachable("search", rtype))
    if len(found) > 1 and not multiple:
        raise PreconditionFailed(f"conditional delete {rtype}?{query} matches more than one resource")
    if len(found) > MAX_CONDITIONAL_DELETES:
        raise PreconditionFailed(f"conditional delete matches more than {MAX_CONDITIONAL_DELETES} resources")
    for stored in found:
        delete(store, rtype, stored.id, guard=guard)
    return Result(204)

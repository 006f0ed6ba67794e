"""read and vread: the current or a past version as stored; 404 unknown, 410 deleted."""

from __future__ import annotations

from fhirserver.errors import Gone, NotFound
from fhirserver.interactions.guard import OPEN, Guard
from fhirserver.interactions.result import Result
from fhirserver.store.database import Store
from fhirserver.store.resources import Stored


def _gone(stored: Stored) -> Gone:
    return Gone(f"{stored.type}/{stored.id} was deleted (version {stored.version})",
                headers={"ETag": f'W/"{stored.version}"'})


def read(store: Store, rtype: str, rid: str, guard: Guard = OPEN) -> Result:
    """GET [type]/[id]."""
    guard.check_existing(store, "read", rtype, rid)
    stored = store.reader.current(rtype, rid)
    if stored is None:
        raise NotFound(f"{rtype}/{rid} is not known")
    if stored.deleted:
        raise _gone(stored)
    return Result(200, stored)


def vread(store: Store, rtype: str, rid: str, vid: str, guard: Guard = OPEN) -> Result:
    """GET [type]/[id]/_history/[vid] (reachable when the resource as it is now is reachable)."""
    guard.check_existing(store, "vread", rtype, rid)
    if not vid.isdigit():
        raise NotFound(f"{rtype}/{rid} has no version {vid!r}")
    stored = store.reader.version(rtype, rid, int(vid))
    if stored is None:
        raise NotFound(f"{rtype}/{rid} has no version {vid}")
    if stored.deleted:
        raise _gone(stored)
    return Result(200, stored)

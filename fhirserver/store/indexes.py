"""Indexes of the store's collections, created at start-up and when a resource type is first written.

FerretDB v1 drops connections when two clients create indexes on one collection at the same time, so index
creation is serialized: across processes by a lease, inside a process by a lock, and done once (recorded in
`schema`) per collection and index layout.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Sequence

from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError, PyMongoError

from fhirserver.store.commit import COMMIT_ENTRIES, DECISIONS, HISTORY, now
from fhirserver.store.leases import LeaseBusy, Leases

log = logging.getLogger("fhirserver.store.indexes")

SCHEMA = "schema"
BOOKKEEPING = {
    HISTORY: [IndexModel([("ts", DESCENDING), ("_id", DESCENDING)]),
              IndexModel([("t", ASCENDING), ("ts", DESCENDING)]),
              IndexModel([("t", ASCENDING), ("rid", ASCENDING), ("v", DESCENDING)])],
    DECISIONS: [IndexModel([("ts", ASCENDING)])],
    COMMIT_ENTRIES: [IndexModel([("c", ASCENDING)])],
}
RESOURCE = [IndexModel([("comp", ASCENDING)]), IndexModel([("ts", ASCENDING)])]


def _layout(models: list[IndexModel]) -> str:
    return hashlib.sha1(repr([m.document for m in models]).encode()).hexdigest()[:12]


class IndexKeeper:
    """Creates indexes once per collection and layout, one creator at a time."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.leases = Leases(db)
        self.done: set[str] = set()
        self.lock = threading.Lock()

    def bookkeeping(self, extra: Callable[[str], Sequence[IndexModel]] = lambda _: ()) -> None:
        """Indexes of history and commit bookkeeping, and of every resource collection that exists."""
        for name, models in BOOKKEEPING.items():
            self._ensure(name, models)
        for name in self.db.list_collection_names():
            if name[:1].isupper():
                self._ensure(name, [*RESOURCE, *extra(name)])

    def resource_type(self, rtype: str, extra: Sequence[IndexModel] = ()) -> None:
        """Indexes of one resource type's current collection (a set lookup after the first call)."""
        if rtype not in self.done:
            self._ensure(rtype, [*RESOURCE, *extra])

    def _ensure(self, name: str, models: list[IndexModel]) -> None:
        marker = f"indexes/{name}/{_layout(models)}"
        with self.lock:
            if name in self.done:
                return
            try:
                if self.db[SCHEMA].find_one({"_id": marker}) is None:
                    with self.leases.hold(f"indexes/{name}", ttl=60, wait=60):
                        if self.db[SCHEMA].find_one({"_id": marker}) is None:
                            self.db[name].create_indexes(models)
                            try:
                                self.db[SCHEMA].insert_one({"_id": marker, "ts": now()})
                            except DuplicateKeyError:
                                pass
                self.done.add(name)
            except (PyMongoError, LeaseBusy) as exc:
                log.warning("could not create indexes", extra={"collection": name, "error": str(exc)})

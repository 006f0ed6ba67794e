"""The Store: the process's one handle on the resource database (reads, commits, recovery, indexes)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from pymongo import IndexModel, UpdateOne
from pymongo.database import Database
from pymongo.errors import PyMongoError

from fhirserver.store.commit import Committer
from fhirserver.store.connection import check_ready, connect
from fhirserver.store.indexes import IndexKeeper
from fhirserver.store.leases import Leases
from fhirserver.store.resources import ResourceReader

log = logging.getLogger("fhirserver.store")


class Store:
    """Owns the database handle and the pieces that use it."""

    def __init__(self, uri: str, db_name: str, timeout: float = 2.0, stale_after: float = 30.0) -> None:
        self.db: Database = connect(uri, db_name, timeout)
        self.committer = Committer(self.db, stale_after)
        self.reader = ResourceReader(self.db, self.committer)
        self.indexes = IndexKeeper(self.db)
        self.leases = Leases(self.db)
        self._stop = threading.Event()

    def ready(self) -> None:
        """Raise StoreUnavailable unless the database answers."""
        check_ready(self.db)

    def maintain(self, interval: float, index_models: Callable[[str], Sequence[IndexModel]] = lambda _: (),
                 native_indexes: Callable[[], object] | None = None, native_every: float = 60.0) -> None:
        """Start the background thread: indexes once, then recovery every `interval` seconds, and
        `native_indexes` (indexes the database engine needs beside the MongoDB ones) every `native_every`."""

        def loop() -> None:
            indexed = False
            native_due = 0.0
            while not self._stop.is_set():
                try:
                    if not indexed:
                        self.indexes.bookkeeping(index_models)
                        indexed = True
                    if native_indexes is not None and time.monotonic() >= native_due:
                        native_due = time.monotonic() + native_every
                        native_indexes()
                    self.committer.recover()
                except PyMongoError as exc:
                    log.warning("maintenance skipped: database unreachable", extra={"error": type(exc).__name__})
                except Exception:
                    log.exception("maintenance failed")
                self._stop.wait(interval)

        threading.Thread(target=loop, name="store-maintenance", daemon=True).start()

    def set_index(self, rtype: str, items: list[tuple[str, int, dict, list[str], dict]]) -> int:
        """Replace idx, comp and srt of current documents still at the given version; return how many changed.

        Updates filter on `_id` alone: FerretDB pushes only `_id` equality down to SQLite, and a filter with the
        version too scans the whole collection per document. A writer that commits a newer version between the
        scan and this update may have its index overwritten by the older one: run reindex when writes are quiet.
        """
        for _, _, idx, _, _ in items:
            self.committer.variants.record(rtype, idx)
        current = {d["_id"]: d["v"] for d in self.reader.find_raw(rtype, {"_id": {"$in": [i[0] for i in items]}},
                                                                   {"v": 1})}
        ops = [UpdateOne({"_id": rid}, {"$set": {"idx": idx, "comp": comp, "srt": srt}})
               for rid, v, idx, comp, srt in items if current.get(rid) == v]
        return self.db[rtype].bulk_write(ops, ordered=False).modified_count if ops else 0

    def resource_types(self) -> list[str]:
        """The resource types that have a collection."""
        return sorted(n for n in self.db.list_collection_names() if n[:1].isupper())

    def close(self) -> None:
        self._stop.set()
        self.db.client.close()

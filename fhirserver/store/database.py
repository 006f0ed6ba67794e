"""The Store: the process's one handle on the resource database (reads, commits, recovery, indexes)."""

from __future__ import annotations

import logging
import threading

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

    def maintain(self, interval: float) -> None:
        """Start the background thread: indexes once, then recovery every `interval` seconds."""

        def loop() -> None:
            indexed = False
            while not self._stop.is_set():
                try:
                    if not indexed:
                        self.indexes.bookkeeping()
                        indexed = True
                    self.committer.recover()
                except PyMongoError as exc:
                    log.warning("maintenance skipped: database unreachable", extra={"error": type(exc).__name__})
                except Exception:
                    log.exception("maintenance failed")
                self._stop.wait(interval)

        threading.Thread(target=loop, name="store-maintenance", daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self.db.client.close()

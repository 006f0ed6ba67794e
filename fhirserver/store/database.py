"""The Store: the process's one handle on the resource database."""

from __future__ import annotations

from pymongo.database import Database

from fhirserver.store.connection import check_ready, connect


class Store:
    """Owns the database handle; later rooms add collections, the commit protocol and indexes here."""

    def __init__(self, uri: str, db_name: str, timeout: float = 2.0) -> None:
        self.db: Database = connect(uri, db_name, timeout)

    def ready(self) -> None:
        """Raise StoreUnavailable unless the database answers."""
        check_ready(self.db)

    def close(self) -> None:
        self.db.client.close()

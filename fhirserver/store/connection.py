"""MongoDB connections: one client per process, short server-selection timeouts, unreachable -> StoreUnavailable."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import ConnectionFailure, PyMongoError

from fhirserver.errors import StoreUnavailable


def connect(uri: str, db_name: str, timeout: float = 2.0) -> Database:
    """A database handle; pymongo reconnects by itself after an outage, so one handle lasts the process."""
    ms = int(timeout * 1000)
    client: MongoClient = MongoClient(
        uri, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms, socketTimeoutMS=max(ms * 15, 30000),
        appname="fhirserver", retryWrites=False, uuidRepresentation="standard",
    )
    return client[db_name]


def ping(uri: str, timeout: float = 2.0) -> bool:
    """True when a MongoDB-protocol server at `uri` answers `ping`."""
    ms = int(timeout * 1000)
    client: MongoClient = MongoClient(uri, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms, socketTimeoutMS=ms)
    try:
        client.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        client.close()


@contextmanager
def unavailable_as_store_error() -> Iterator[None]:
    """Turn pymongo's 'cannot reach the server' errors into StoreUnavailable (503 upstairs)."""
    try:
        yield
    except ConnectionFailure as exc:
        raise StoreUnavailable(f"the database is unreachable: {type(exc).__name__}") from exc


def check_ready(db: Database) -> None:
    """Raise StoreUnavailable unless the database answers `ping`."""
    with unavailable_as_store_error():
        db.command("ping")

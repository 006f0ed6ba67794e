"""The embedded database: building, starting and stopping FerretDB (on SQLite or PostgreSQL) for the server.

Production sets MONGODB_URI and none of this runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fhirserver.config import Settings
from fhirserver.dbserver.ferretdb import FERRETDB_VERSION, FerretDB, build_ferretdb
from fhirserver.dbserver.pgindexes import mirror
from fhirserver.dbserver.postgres import PostgreSQL

__all__ = ["FERRETDB_VERSION", "FerretDB", "PostgreSQL", "build_ferretdb", "embedded", "native_indexer", "start",
           "stop", "status"]


def _ferretdb(settings: Settings) -> FerretDB:
    root = settings.state_dir
    return FerretDB(
        binary=root / "bin" / "ferretdb",
        state=root / "ferretdb" / settings.db_backend,
        port=settings.db_port,
        handler=settings.db_backend,
        postgresql_url=_postgres(settings).url("ferretdb") if settings.db_backend == "postgresql" else "",
    )


def _postgres(settings: Settings) -> PostgreSQL:
    return PostgreSQL(state=settings.state_dir / "postgresql", port=settings.pg_port)


def embedded(settings: Settings) -> FerretDB:
    """The FerretDB process these settings describe (not started)."""
    return _ferretdb(settings)


def start(settings: Settings) -> str:
    """Build if needed and start the embedded database; return its MongoDB URI. Idempotent."""
    if not settings.embedded_database:
        return settings.database_uri
    build_ferretdb(settings.state_dir / "bin" / "ferretdb")
    if settings.db_backend == "postgresql":
        pg = _postgres(settings)
        pg.start()
        pg.create_database("ferretdb")
    db = _ferretdb(settings)
    db.start()
    if settings.db_backend == "postgresql":
        mirror(_postgres(settings))
    return db.uri


def native_indexer(settings: Settings) -> Callable[[], list[str]] | None:
    """What keeps GIN indexes beside FerretDB's on the embedded PostgreSQL (pgindexes.mirror); None otherwise."""
    if not settings.embedded_database or settings.db_backend != "postgresql":
        return None
    pg = _postgres(settings)
    return lambda: mirror(pg)


def stop(settings: Settings) -> None:
    """Stop the embedded FerretDB (and its PostgreSQL); a no-op for what is not running."""
    if not settings.embedded_database:
        return
    _ferretdb(settings).stop()
    if settings.db_backend == "postgresql":
        _postgres(settings).stop()


def status(settings: Settings) -> dict[str, object]:
    """What is running: backend, pids, URI, whether it answers ping."""
    if not settings.embedded_database:
        from fhirserver.store.connection import ping

        return {"mode": "external", "uri": _redact(settings.mongodb_uri), "answers": ping(settings.mongodb_uri)}
    db = _ferretdb(settings)
    info: dict[str, object] = {
        "mode": "embedded",
        "backend": settings.db_backend,
        "uri": db.uri,
        "ferretdb_pid": db.pid(),
        "answers": db.answers(),
        "data": str(db.state),
        "binary": str(db.binary) if Path(db.binary).exists() else "not built",
    }
    if settings.db_backend == "postgresql":
        info["postgresql_pid"] = _postgres(settings).pid()
    return info


def _redact(uri: str) -> str:
    """A MongoDB URI with any password replaced, for printing."""
    if "@" not in uri or "://" not in uri:
        return uri
    scheme, rest = uri.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"

"""GIN indexes on FerretDB's PostgreSQL tables, in the shape of the SQL that FerretDB pushes down.

FerretDB v1 pushes an equality filter down as `_jsonb -> 'k' @> '"v"'` (a top-level key) or, with nested pushdown,
`_jsonb #> '{idx,patient}' @> '"Patient/1"'`; but it creates btree indexes, which `@>` cannot use, so every pushed
down filter read the whole table (3 s for a read by id among 200,000 Observations, bench/results/search-postgresql*).
`mirror` adds, beside every index field FerretDB knows, the GIN expression index that matches its pushed-down SQL,
and makes PostgreSQL plan each statement with its parameter values (a generic plan cannot match an expression index
to a `#> $1` path parameter). Idempotent and cheap when nothing is missing; safe when several processes run it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re

from fhirserver.dbserver.postgres import PostgresError, PostgreSQL

log = logging.getLogger("fhirserver.dbserver.pgindexes")

METADATA = "_ferretdb_database_metadata"
_SAFE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:~-]*$")
SKIPPED = ("ts", "srt")  # range and sort keys: compared with $lt/$gt, never pushed down


def expression(field: str) -> str:
    """The SQL FerretDB compares for `field`: `(_jsonb -> 'k')` or `(_jsonb #> '{a,b}')`."""
    parts = field.split(".")
    return f"(_jsonb -> '{field}')" if len(parts) == 1 else f"(_jsonb #> '{{{','.join(parts)}}}')"


def index_name(table: str, field: str) -> str:
    """A name of at most 63 characters, stable for the table and field."""
    return f"{table[:40]}_gin_{hashlib.sha1(field.encode()).hexdigest()[:10]}"


def wanted(metadata: dict) -> list[str]:
    """The fields of one collection's FerretDB indexes that equality filters may use."""
    fields: list[str] = []
    for index in metadata.get("indexes") or []:
        for field in index.get("key") or {}:
            head = field.split(".")[0]
            if field.startswith("$") or head in SKIPPED or not _SAFE.match(field) or field in fields:
                continue
            fields.append(field)
    return fields


def mirror(pg: PostgreSQL, database: str = "ferretdb") -> list[str]:
    """Create the missing GIN indexes of every FerretDB database (a PostgreSQL schema) in `database`; their names."""
    pg.sql(f'ALTER DATABASE "{database}" SET plan_cache_mode = force_custom_plan', database)
    schemas = pg.sql(f"SELECT table_schema FROM information_schema.tables WHERE table_name = '{METADATA}'",
                     database).split()
    created: list[str] = []
    for schema in schemas:
        if not _SAFE.match(schema):
            continue
        existing = set(pg.sql(f"SELECT indexname FROM pg_indexes WHERE schemaname = '{schema}'", database).split())
        for line in pg.sql(f'SELECT _jsonb::text FROM "{schema}".{METADATA}', database).splitlines():
            metadata = json.loads(line)
            table = metadata.get("table", "")
            if not _SAFE.match(table):
                continue
            for field in wanted(metadata):
                name = index_name(table, field)
                if name in existing:
                    continue
                try:
                    pg.sql(f'CREATE INDEX CONCURRENTLY IF NOT EXISTS "{name}" ON "{schema}"."{table}" '
                           f"USING gin ({expression(field)})", database)
                except PostgresError as exc:  # another process builds it, or the table went away
                    log.warning("GIN index not created", extra={"index": name, "error": str(exc)[-300:]})
                    continue
                created.append(name)
    if created:
        log.info("GIN indexes created", extra={"count": len(created)})
    return created

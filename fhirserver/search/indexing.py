"""Which index fields searches use, per resource type: the database indexes the store creates for them.

Single-field indexes on the parameters portals and apps filter by (compartment links, codes, identifiers, status,
dates), plus `(patient, date)` sort compounds, keep those searches selective on MongoDB (and give FerretDB's
PostgreSQL backend indexes to use). MongoDB allows 64 indexes per collection; this stays far below.
"""

from __future__ import annotations

from functools import cache

from pymongo import ASCENDING, DESCENDING, IndexModel

from fhirserver.search.params import params_for

INDEXED_CODES = (
    "patient", "subject", "encounter", "code", "identifier", "status", "category", "date", "name", "family",
    "birthdate", "practitioner", "organization", "actor", "schedule", "start", "created", "authored", "_tag",
    "service-type", "specialty", "slot", "requester", "performer", "type", "class", "recipient", "sender",
)
RANGE = {"date", "number", "quantity"}


@cache
def search_indexes(rtype: str) -> tuple[IndexModel, ...]:
    """The index models for `rtype`'s current collection beyond the store's own (`comp`, `ts`)."""
    params = params_for(rtype)
    models = []
    for code in INDEXED_CODES:
        param = params.get(code)
        if param is None or param.type == "composite":
            continue
        field = f"idx.{code}.lo" if param.type in RANGE else f"idx.{code}"
        models.append(IndexModel([(field, ASCENDING)]))
    for link in ("patient", "subject"):
        if link in params and "date" in params and params["date"].type == "date":
            models.append(IndexModel([(f"idx.{link}", ASCENDING), ("srt.date:d", DESCENDING)]))
            break
    if rtype == "Slot":  # the day bucket of $find (resources.scheduling.with_slot_day)
        models.append(IndexModel([("idx.slot-day", ASCENDING)]))
    return tuple(models)

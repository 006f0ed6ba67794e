"""Who a user may act for: their own Patient record and the patients they are a current proxy for.

A proxy is a RelatedPerson whose `patient` is the person cared for, that is `active` (not false) and whose
`period` covers now. It belongs to a user account when it is the account's fhirUser, or when it carries the
identifier `urn:fhirserver:user|<username>` (one account may be the proxy of several patients, e.g. a parent of
two children). Expired or deactivated proxies drop out at once: this is evaluated on every token check.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fhirserver import fhirjson
from fhirserver.search.extract import date_range
from fhirserver.search.query import parse
from fhirserver.store.database import Store

USER_SYSTEM = "urn:fhirserver:user"


def _current(related: dict, now: datetime) -> bool:
    """`active` is not false and `period` (inclusive, open ends) covers `now`."""
    if related.get("active") is False:
        return False
    period = related.get("period") or {}
    start = date_range(period.get("start")) if period.get("start") else None
    end = date_range(period.get("end")) if period.get("end") else None
    return (start is None or start[0] <= now) and (end is None or now <= end[1])


def _display(resource: dict) -> str:
    for name in resource.get("name") or []:
        if name.get("text"):
            return name["text"]
        parts = [*name.get("given", []), name.get("family", "")]
        if any(parts):
            return " ".join(p for p in parts if p)
    return resource.get("id", "")


def patients_for(store: Store, username: str, fhir_user: str | None,
                 now: datetime | None = None) -> list[tuple[str, str]]:
    """[("Patient/<id>", display)] the user may act for, own record first, then current proxies."""
    now = now or datetime.now(UTC)
    out: dict[str, str] = {}
    if fhir_user and fhir_user.startswith("Patient/"):
        own = store.reader.current("Patient", fhir_user.split("/", 1)[1])
        if own is not None and not own.deleted:
            out[fhir_user] = _display(fhirjson.loads(own.text))
    query = parse("RelatedPerson", [("identifier", f"{USER_SYSTEM}|{username}")]).filter
    if fhir_user and fhir_user.startswith("RelatedPerson/"):
        query = {"$or": [query, {"_id": fhir_user.split("/", 1)[1], "del": False}]}
    for stored in store.reader.find("RelatedPerson", query, 100):
        related = fhirjson.loads(stored.text)
        ref = (related.get("patient") or {}).get("reference", "")
        if not ref.startswith("Patient/") or ref in out or not _current(related, now):
            continue
        patient = store.reader.current("Patient", ref.split("/", 1)[1])
        if patient is not None and not patient.deleted:
            out[ref] = _display(fhirjson.loads(patient.text))
    return list(out.items())

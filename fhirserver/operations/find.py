"""Appointment/$find (IHE ITI-115 Find Potential Appointments, Argonaut $find): free Slots as proposed Appointments.

Inputs (a Parameters body, or the query string of a GET; Argonaut and Epic aliases accepted):
`start`/`startTime` and `end`/`endTime` (1..1; a date covers the whole day, so start=end=today is a same-day search),
`practitioner` (0..*, OR), `location-reference`/`location` (0..*, OR; AND with practitioner, as actors of the
Schedule), `specialty` (Slot or Schedule), `service-type`/`visit-type` (Slot.serviceType), `visit-mode`
(in-person | video | phone: a Slot.serviceType coding of VISIT_MODE_SYSTEM), `patient-reference`/`patient` (leaves
out slots starting during that patient's own pending or booked appointments; the token must reach that patient),
`_count` and `_after` (the keyset cursor of the `next` link).
Output: a searchset Bundle of proposed Appointments sorted by start (then slot id), each naming its slot, the
Schedule's actors (participant status needs-action) and the patient; empty when nothing is free. `total` (optional
in a searchset) is given only when the first page holds every match: counting over a date range would read every
slot. Only free, future slots are offered, so held or booked ones and other patients' appointments never show.

Speed: FerretDB v1 pushes only plain equalities down to SQL, never ranges or `$in`, so the slots are asked bucket by
bucket with an equality on each Slot's SLOT_DAY (the UTC day of its start, written with its index): day by day
and, for a practitioner or location, schedule by schedule; merged in start order until the page is full.
"""

from __future__ import annotations

import heapq
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from fhirserver import fhirjson
from fhirserver.errors import BadRequest
from fhirserver.interactions.guard import OPEN, Guard
from fhirserver.interactions.result import Result, instant
from fhirserver.resources.scheduling import (
    SLOT_DAY,
    VISIT_MODE_SYSTEM,
    VISIT_MODES,
    instant_of,
    slot_day,
)
from fhirserver.search.extract import date_range
from fhirserver.search.query import all_of, parse
from fhirserver.store.commit import now
from fhirserver.store.database import Store

ALIASES = {"startTime": "start", "endTime": "end", "visit-type": "service-type", "location": "location-reference",
           "patient": "patient-reference", "patient-id": "patient-reference", "appt-id": "appointment-reference",
           "appt-resource": "appointment-resource"}
ACTIVE = "pending,booked,arrived,checked-in"
Params = list[tuple[str, Any]]
MAX_GROUPS = 20  # schedules asked one by one (an equality FerretDB pushes down); more are filtered in one query
MAX_QUERIES = 1000  # above this many (hour or day, schedule) queries, one query over the whole range instead


def parameters(body: object) -> Params:
    """(name, value) pairs of a Parameters resource: primitives as text, a Reference as its reference, a Coding or
    CodeableConcept as `system|code`, a resource as the resource. Aliases are mapped to the IHE names."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise BadRequest("this operation takes a Parameters resource", expression=["resourceType"])
    out: Params = []
    for n, p in enumerate(body.get("parameter") or []):
        if not isinstance(p, dict) or not isinstance(p.get("name"), str):
            raise BadRequest(f"Parameters.parameter[{n}] has no name", expression=[f"Parameters.parameter[{n}]"])
        name = ALIASES.get(p["name"], p["name"])
        if "resource" in p:
            out.append((name, p["resource"]))
            continue
        values = [(k, v) for k, v in p.items() if k.startswith("value")]
        if not values:
            raise BadRequest(f"parameter {p['name']!r} has no value", expression=[f"Parameters.parameter[{n}]"])
        kind, value = values[0]
        if kind == "valueReference":
            value = (value or {}).get("reference", "")
        elif kind == "valueCoding":
            value = f"{value.get('system', '')}|{value.get('code', '')}"
        elif kind == "valueCodeableConcept":
            coding = (value.get("coding") or [{}])[0]
            value = f"{coding.get('system', '')}|{coding.get('code', '')}" if coding.get("code") else value.get(
                "text", "")
        out.append((name, value if isinstance(value, str | dict) else str(value)))
    return out


def query_parameters(pairs: list[tuple[str, str]]) -> Params:
    return [(ALIASES.get(k, k), v) for k, v in pairs]


def values(params: Params, name: str) -> list[Any]:
    return [v for k, v in params if k == name]


def one(params: Params, name: str, required: bool = False) -> Any:
    found = values(params, name)
    if len(found) > 1:
        raise BadRequest(f"parameter {name!r} may be given once", expression=[name])
    if required and not found:
        raise BadRequest(f"parameter {name!r} is required", expression=[name])
    return found[0] if found else None


def searchset(base: str, resources: list[dict], total: int | None = None, links: list[dict] | None = None) -> dict:
    """A searchset Bundle of operation results: stored resources under their URL on `base`, proposed ones (not
    stored, without an id) under a `urn:uuid:` that is also their id, as search results must have both."""
    bundle: dict = {"resourceType": "Bundle", "type": "searchset"}
    if total is not None:
        bundle["total"] = total
    if links:
        bundle["link"] = links
    entries = []
    for r in resources:
        if r.get("id"):
            full_url = f"{base}/{r['resourceType']}/{r['id']}"
        else:
            r = {"resourceType": r["resourceType"], "id": str(uuid.uuid4()), **r}
            full_url = f"urn:uuid:{r['id']}"
        entries.append({"fullUrl": full_url, "resource": r, "search": {"mode": "match"}})
    if entries:
        bundle["entry"] = entries
    return bundle


def _reference(value: Any, rtype: str, name: str) -> str:
    """`Type/id` of a reference parameter (relative or absolute on any base)."""
    text = value if isinstance(value, str) else ""
    parts = text.rstrip("/").split("/")
    if len(parts) < 2 or parts[-2] != rtype or not parts[-1]:
        raise BadRequest(f"parameter {name!r}: {text!r} is not a reference to a {rtype}", expression=[name])
    return f"{rtype}/{parts[-1]}"


def _patient_busy(store: Store, patient: str, guard: Guard) -> list[tuple[datetime, datetime]]:
    """Periods of the patient's own active appointments (only what the token may search)."""
    query = parse("Appointment", [("patient", patient), ("status", ACTIVE)]).filter
    docs = store.reader.find_raw("Appointment", all_of(query, guard.reachable("search", "Appointment")),
                                 {"text": 1}, 1000)
    out = []
    for doc in docs:
        appt = fhirjson.loads(doc["text"])
        start, end = instant_of(appt.get("start")), instant_of(appt.get("end"))
        if start and end:
            out.append((start, end))
    return out


def _proposed(slot: dict, schedule: dict | None, patient: str | None) -> dict:
    participants = [{"actor": actor, "required": "required", "status": "needs-action"}
                    for actor in (schedule or {}).get("actor") or [] if isinstance(actor, dict)]
    if patient:
        participants.append({"actor": {"reference": patient}, "required": "required", "status": "needs-action"})
    appt: dict = {"resourceType": "Appointment", "status": "proposed"}
    for key in ("serviceCategory", "serviceType", "specialty", "appointmentType"):
        value = slot.get(key) or ((schedule or {}).get(key) if key != "appointmentType" else None)
        if value:
            appt[key] = value
    appt.update(start=slot["start"], end=slot["end"], slot=[{"reference": f"Slot/{slot['id']}"}],
                participant=participants)
    return appt


def _buckets(lo: datetime, hi: datetime, groups: list[dict]) -> list[dict] | None:
    """The equalities on SLOT_DAY that cover slots starting from `lo` to `hi`, in start order: the UTC days; None
    when that would be more than MAX_QUERIES queries (one query over the range instead). Days, not hours: on
    FerretDB's SQLite backend nothing is pushed down, so every query reads the collection (measured: hour by hour
    took 15 times longer there for a day of everyone's slots)."""
    lo, hi = lo.astimezone(UTC), hi.astimezone(UTC)
    if ((hi - lo) / timedelta(days=1) + 2) * len(groups) > MAX_QUERIES:
        return None
    t, out = lo.replace(hour=0, minute=0, second=0, microsecond=0), []
    while t <= hi:
        out.append({f"idx.{SLOT_DAY}": slot_day(t)})
        t += timedelta(days=1)
    return out


def _free_slots(store: Store, query: dict, groups: list[dict], buckets: list[dict] | None,
                limit: int) -> list[dict]:
    """The first `limit` Slots matching `query` and one of `groups`, by start then id. Asked bucket by bucket (and
    group by group) with plain equalities on SLOT_DAY (and `idx.schedule`), which FerretDB pushes down
    to SQL, so a request reads the slots of the days it pages through, not the whole collection; stops
    once the page is full."""
    order = [("srt.start", 1), ("_id", 1)]
    projection = {"text": 1, "srt": 1}
    if buckets is None:
        return store.reader.find_raw("Slot", _any_group(query, groups), projection, limit, order)
    out: list[dict] = []
    for bucket in buckets:
        found = [store.reader.find_raw("Slot", all_of(bucket, group, query), projection, limit - len(out), order)
                 for group in groups]
        out += heapq.merge(*found, key=lambda d: (d["srt"]["start"], d["_id"]))
        if len(out) >= limit:
            return out[:limit]
    return out


def _count_slots(store: Store, query: dict, groups: list[dict], buckets: list[dict] | None) -> int:
    """How many Slots match `query` and one of `groups` (asked as `_free_slots` asks them)."""
    if buckets is None:
        return store.reader.count("Slot", _any_group(query, groups))
    return sum(store.reader.count("Slot", all_of(bucket, group, query)) for bucket in buckets for group in groups)


def _any_group(query: dict, groups: list[dict]) -> dict:
    ors = [g for g in groups if g]
    return all_of(query, {"$or": ors} if ors else None)


def find(store: Store, base: str, params: Params, page_size: int, page_max: int, guard: Guard = OPEN) -> Result:
    """Free future slots matching `params` as proposed Appointments (one page)."""
    guard.require("search", "Slot")
    start, end = one(params, "start", True), one(params, "end", True)
    for name, value in (("start", start), ("end", end)):
        if not isinstance(value, str) or date_range(value) is None:
            raise BadRequest(f"parameter {name!r}: {value!r} is not a date or dateTime", expression=[name])
    if date_range(end)[1] < date_range(start)[0]:
        raise BadRequest("parameter 'end' is before 'start'", expression=["end"])
    count = one(params, "_count")
    try:
        count = min(int(count), page_max) if count is not None else page_size
    except ValueError:
        raise BadRequest(f"_count {count!r} is not a whole number", expression=["_count"]) from None
    if count < 0:
        raise BadRequest("_count must not be negative", expression=["_count"])

    pairs = [("status", "free"), ("start", f"ge{start}"), ("start", f"le{end}"), ("start", f"ge{instant(now())}")]
    for value in values(params, "service-type"):
        pairs.append(("service-type", str(value)))
    modes = values(params, "visit-mode")
    for mode in modes:
        if mode not in VISIT_MODES:
            raise BadRequest(f"visit-mode {mode!r} is not one of {', '.join(VISIT_MODES)}", expression=["visit-mode"])
    if modes:
        pairs.append(("service-type", ",".join(f"{VISIT_MODE_SYSTEM}|{m}" for m in modes)))
    query = parse("Slot", pairs, strict=True).filter

    schedule_pairs = []
    practitioners = [_reference(v, "Practitioner", "practitioner") for v in values(params, "practitioner")]
    locations = [_reference(v, "Location", "location-reference") for v in values(params, "location-reference")]
    if practitioners:
        schedule_pairs.append(("actor", ",".join(practitioners)))
    if locations:
        schedule_pairs.append(("actor", ",".join(locations)))
    clauses = [query]
    groups: list[dict] = [{}]  # plain equalities, one query per group and day (OR of the groups)
    if schedule_pairs:
        schedules = [f"Schedule/{d['_id']}" for d in store.reader.find_raw(
            "Schedule", parse("Schedule", schedule_pairs).filter, {"_id": 1})]
        if len(schedules) <= MAX_GROUPS:
            groups = [{"idx.schedule": s} for s in schedules]
        else:
            clauses.append({"idx.schedule": {"$in": schedules}})
    specialties = values(params, "specialty")
    if specialties:
        wanted = ",".join(str(s) for s in specialties)
        with_specialty = store.reader.find_raw("Schedule", parse("Schedule", [("specialty", wanted)]).filter,
                                               {"_id": 1})
        clauses.append({"$or": [parse("Slot", [("specialty", wanted)]).filter,
                                {"idx.schedule": {"$in": [f"Schedule/{d['_id']}" for d in with_specialty]}}]})
    patient = one(params, "patient-reference")
    if patient is not None:
        patient = _reference(patient, "Patient", "patient-reference")
        guard.check_existing(store, "read", "Patient", patient.split("/", 1)[1])
        busy = _patient_busy(store, patient, guard)
        if busy:
            clauses.append({"$nor": [{"srt.start": {"$gte": lo, "$lt": hi}} for lo, hi in busy]})
    query = all_of(*clauses)

    after = one(params, "_after")
    first = max(date_range(start)[0], now())
    if after:
        at, _, sid = str(after).partition("|")
        t = instant_of(at)
        if t is None or not sid:
            raise BadRequest(f"_after {after!r} is not a cursor of this search", expression=["_after"])
        query = all_of(query, {"$or": [{"srt.start": {"$gt": t}}, {"srt.start": t, "_id": {"$gt": sid}}]})
        first = max(first, t)
    buckets = _buckets(first, date_range(end)[1], groups)
    docs = _free_slots(store, query, groups, buckets, count + 1) if count and groups else []
    more = len(docs) > count
    # searchset total is optional: given when this first page holds every match, and counted (day by day) only for
    # `_count=0`, which asks for nothing else; a count over the range for every page would read every slot
    total = len(docs) if not more and not after else None
    if count == 0:
        total = _count_slots(store, query, groups, buckets)
    slots = [fhirjson.loads(d["text"]) for d in docs[:count]]
    schedule_ids = {s.get("schedule", {}).get("reference", "").split("/", 1)[-1] for s in slots}
    schedules = {d["_id"]: fhirjson.loads(d["text"]) for d in store.reader.find_raw(
        "Schedule", {"_id": {"$in": sorted(schedule_ids)}, "del": False}, {"text": 1})}
    proposed = [_proposed(s, schedules.get(s.get("schedule", {}).get("reference", "").split("/", 1)[-1]), patient)
                for s in slots]
    plain = [(k, v) for k, v in params if isinstance(v, str) and k != "_after"]
    links = [{"relation": "self", "url": f"{base}/Appointment/$find?{urlencode(plain)}"}]
    if more:
        last = docs[count - 1]
        cursor = f"{instant(last['srt']['start'])}|{last['_id']}"
        links.append({"relation": "next", "url": f"{base}/Appointment/$find?{urlencode(plain + [('_after', cursor)])}"})
    return Result(200, body=searchset(base, proposed, total, links))

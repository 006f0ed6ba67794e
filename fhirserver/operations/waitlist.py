"""Waitlist offers: a freed slot goes on hold for the earliest waitlisted patient who wants it, with an offer notice.

Joining needs no operation: the patient POSTs an Appointment with status `waitlist` (rules in
`fhirserver/resources/waitlist.py`). This module is the waitlist's work, run by the `waitlist` job (and nudged when
a slot is freed):
1. active entries are taken in first-come order;
2. an entry whose offer was booked is closed (status `cancelled`, reason "booked from the waitlist");
3. an entry with an offer still on hold waits;
4. otherwise the earliest free slot that matches the entry and was never offered to it is held for its patient
   (through the scheduling core's hold, so the slot claim and hold expiry are theirs) and an offer notice is sent.
An offer is claimed by a unique insert keyed `entry|slot` in `waitlist_offers`: each slot is offered to each entry at
most once, so when a hold expires unbooked the slot passes to the next entry on the following run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from pymongo.errors import DuplicateKeyError

from fhirserver import fhirjson
from fhirserver.errors import FHIRError
from fhirserver.interactions.update import update
from fhirserver.resources.notifications import AppointmentNotices, waitlist_offer
from fhirserver.resources.waitlist import WAITLIST, Criteria, check_entry, instant_of, order_key
from fhirserver.search.query import parse
from fhirserver.store.commit import HISTORY, now
from fhirserver.store.database import Store

log = logging.getLogger("fhirserver.waitlist")

OFFERS = "waitlist_offers"
STALE_OFFER = 300.0  # seconds

Hold = Callable[[str, dict, dict], tuple[dict, datetime | None]]
"""(patient id, free Slot, waitlist entry) -> (the pending Appointment holding the slot, when the hold expires).
Raises FHIRError (409) when the slot was taken meanwhile."""


def _current(store: Store, rtype: str, query: list[tuple[str, str]], limit: int = 0) -> list[tuple[dict, dict]]:
    """(raw document, parsed resource) of current resources matching a search."""
    docs = store.reader.find_raw(rtype, parse(rtype, query, strict=True).filter, {"text": 1, "v": 1, "ts": 1},
                                 limit)
    return [(d, fhirjson.loads(d["text"])) for d in docs if d.get("text")]


def active_entries(store: Store, at: datetime | None = None) -> list[tuple[dict, int]]:
    """Usable waitlist entries whose periods have not all passed, first come first served, with their versions."""
    t = at or now()
    found = []
    for doc, entry in _current(store, "Appointment", [("status", WAITLIST)]):
        problems = check_entry(entry)
        if problems:
            log.info("waitlist entry skipped", extra={"appointment": doc["_id"], "problem": problems[0].diagnostics})
            continue
        if all((instant_of(p.get("end")) or t) <= t for p in entry["requestedPeriod"]):
            continue
        first = store.db[HISTORY].find_one({"_id": f"Appointment/{doc['_id']}/1"}, {"ts": 1})
        found.append((order_key(entry, (first or doc)["ts"]), entry, doc["v"]))
    found.sort(key=lambda f: f[0])
    return [(entry, version) for _, entry, version in found]


def matching_slots(store: Store, criteria: Criteria, at: datetime | None = None) -> list[dict]:
    """Free slots the entry wants that start after `at`, earliest first."""
    t = at or now()
    schedules: dict[str, dict] = {}
    wanted_actors = criteria.schedule_search()
    if wanted_actors is not None:
        schedules = {s["id"]: s for _, s in _current(store, "Schedule", wanted_actors)}
        if not schedules:
            return []
    slots = [s for _, s in _current(store, "Slot", criteria.slot_search(
        [f"Schedule/{sid}" for sid in sorted(schedules)] if wanted_actors is not None else None))]
    out = []
    for slot in slots:
        start = instant_of(slot.get("start"))
        if start is None or start <= t:
            continue
        sid = ((slot.get("schedule") or {}).get("reference") or "").removeprefix("Schedule/")
        if sid not in schedules:
            stored = store.reader.current("Schedule", sid)
            schedules[sid] = fhirjson.loads(stored.text) if stored and stored.text else {}
        if criteria.matches(slot, schedules[sid]):
            out.append(slot)
    out.sort(key=lambda s: (instant_of(s["start"]), s["id"]))
    return out


def _status(store: Store, appointment_id: str) -> str | None:
    stored = store.reader.current("Appointment", appointment_id)
    return fhirjson.loads(stored.text).get("status") if stored and stored.text else None


def close_entry(store: Store, base: str, entry: dict, version: int, booked: str) -> bool:
    """Mark the entry done once its offer is booked; False when someone changed it first."""
    closed = {**entry, "status": "cancelled",
              "cancelationReason": {"text": f"booked from the waitlist as Appointment/{booked}"}}
    try:
        update(store, base, "Appointment", entry["id"], closed, if_match=version)
    except FHIRError as exc:
        log.warning("waitlist entry not closed", extra={"appointment": entry["id"], "error": str(exc)})
        return False
    return True


def _abandoned(store: Store, offer: dict) -> bool:
    """An offer claimed by a process killed before its hold was made: dropped after STALE_OFFER seconds."""
    if offer.get("hold"):
        return False
    t = now()
    if offer["ts"].replace(tzinfo=t.tzinfo) > t - timedelta(seconds=STALE_OFFER):
        return False
    store.db[OFFERS].delete_one({"_id": offer["_id"], "ts": offer["ts"]})
    return True


def run_offers(store: Store, base: str, hold: Hold, notices: AppointmentNotices,
               at: datetime | None = None) -> dict[str, int]:
    """One pass over the waitlist (see the module docstring); counts of offers made and entries closed."""
    counts = {"offered": 0, "closed": 0, "waiting": 0}
    reserved: set[str] = set()  # slots an earlier entry holds or is being offered: later entries must not take them
    for entry, version in active_entries(store, at):
        offers = [o for o in store.db[OFFERS].find({"entry": entry["id"]}) if not _abandoned(store, o)]
        holds = {o["hold"]: _status(store, o["hold"]) for o in offers if o.get("hold")}
        booked = next((h for h, status in holds.items() if status in ("booked", "arrived", "fulfilled",
                                                                       "checked-in")), None)
        if booked is not None:
            counts["closed"] += close_entry(store, base, entry, version, booked)
            continue
        if any(status == "pending" for status in holds.values()) or any(not o.get("hold") for o in offers):
            counts["waiting"] += 1  # an offer is on hold (or being made): the patient has it for now
            reserved.update(o["slot"] for o in offers if not o.get("hold") or holds.get(o["hold"]) == "pending")
            continue
        counts["offered"] += offer_next(store, entry, {o["slot"] for o in offers}, hold, notices, at, reserved)
    return counts


def offer_next(store: Store, entry: dict, offered: set[str], hold: Hold, notices: AppointmentNotices,
               at: datetime | None = None, reserved: set[str] | None = None) -> bool:
    """Hold the earliest matching slot not yet offered to this entry (nor `reserved` for an earlier entry) and
    notify its patient. A slot another runner is offering to this same entry is reserved for it, so that a later
    entry never overtakes an earlier one while both runners race."""
    reserved = set() if reserved is None else reserved
    criteria = Criteria.of(entry)
    for slot in matching_slots(store, criteria, at):
        if slot["id"] in offered or slot["id"] in reserved:
            continue
        key = f"{entry['id']}|{slot['id']}"
        try:
            store.db[OFFERS].insert_one({"_id": key, "entry": entry["id"], "slot": slot["id"],
                                         "patient": criteria.patient, "ts": now()})
        except DuplicateKeyError:
            reserved.add(slot["id"])  # another runner offers it to this entry right now
            return False
        try:
            appointment, expires = hold(criteria.patient, slot, entry)
        except FHIRError as exc:
            # Taken meanwhile (or refused): forget the claim, so the slot may be offered again when it frees.
            store.db[OFFERS].delete_one({"_id": key})
            log.info("waitlist offer not held", extra={"slot": slot["id"], "error": str(exc)})
            continue
        store.db[OFFERS].update_one({"_id": key}, {"$set": {"hold": appointment["id"], "until": expires}})
        notices.send(waitlist_offer(appointment, entry["id"], expires))
        return True
    return False

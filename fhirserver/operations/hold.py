"""Appointment/$hold (IHE ITI-116, Argonaut $hold) and the expiry of holds.

A hold is a pending Appointment whose slots are busy-tentative and claimed with an end (`until`, also the
Appointment's HOLD_EXPIRES extension and the response's `Expires` header). Until then no one else can book those
slots; afterwards a booking may take them over, and `expire_holds` (run by the job runner) cancels expired holds and
frees their slots.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from fhirserver import fhirjson
from fhirserver.errors import BadRequest, Conflict, FHIRError, Unprocessable
from fhirserver.interactions.guard import OPEN, Guard
from fhirserver.interactions.result import Result, http_date, instant
from fhirserver.interactions.versions import make_version, next_timestamp, write_with_retry
from fhirserver.operations.book import (
    appointment_id,
    bundle_result,
    change,
    create_appointment,
    resource_param,
    with_patients,
)
from fhirserver.operations.find import Params
from fhirserver.resources.scheduling import (
    CLAIMS,
    HOLD_EXPIRES,
    OCCUPYING,
    claim_of,
    expired_holds,
    hold_until,
    slot_ids,
    with_extension,
    with_slot_times,
)
from fhirserver.search.query import parse
from fhirserver.store.commit import now
from fhirserver.store.database import Store
from fhirserver.store.resources import Stored

log = logging.getLogger("fhirserver.scheduling")


def hold(store: Store, base: str, params: Params, minutes: float, rid: str | None = None,
         guard: Guard = OPEN) -> Result:
    """Hold the slots of a proposed Appointment (stored, or given as a resource) for `minutes`."""
    until = now() + timedelta(minutes=minutes)

    def pending(appt: dict) -> dict:
        if not slot_ids(appt):
            raise Unprocessable("the Appointment names no slot to hold", expression=["Appointment.slot"])
        appt = with_slot_times(store, appt)
        held = with_extension(with_patients(appt, params, "tentative"), HOLD_EXPIRES, {"valueInstant": instant(until)})
        return {**held, "status": "pending"}

    target = appointment_id(params, rid)
    headers = {"Expires": http_date(until)}
    if target is not None:
        def to_pending(appt: dict) -> dict:
            if appt.get("status") not in ("proposed", "waitlist"):
                raise Conflict(f"Appointment/{target} is {appt.get('status')}; only a proposed appointment is held",
                               expression=["Appointment.status"])
            return pending(appt)
        return bundle_result(base, change(store, base, target, guard, to_pending), headers=headers)
    appt = resource_param(params)
    if appt is None:
        raise BadRequest("$hold needs appointment-reference or appointment-resource",
                         expression=["appointment-reference"])
    return bundle_result(base, create_appointment(store, base, pending(appt), guard), 201, headers)


def _expired(store: Store, rid: str, appt: dict, ts: datetime) -> bool:
    """A pending Appointment's hold is over: by its claims' `until`, else by its HOLD_EXPIRES (or default)."""
    if appt.get("status") != "pending":
        return False
    t = now()
    claims = [claim_of(store, sid) for sid in slot_ids(appt)]
    owned = [c for c in claims if c and c.get("owner") == f"Appointment/{rid}"]
    if owned:
        return all(c.get("until") is not None and c["until"].replace(tzinfo=t.tzinfo) < t for c in owned)
    return hold_until(appt, ts) < t


def expire_holds(store: Store, limit: int = 500) -> list[str]:
    """Cancel every pending Appointment whose hold has ended and free its slots; return the ids of freed slots.

    Candidates are the expired hold claims and the pending Appointments past their HOLD_EXPIRES (a hold whose
    claim was lost to a rolled-back takeover). Safe to run in several processes at once: each cancel is a
    versioned commit, so a second runner finds the appointment cancelled already and writes nothing.
    """
    expired = expired_holds(store, limit)
    owners = [str(c.get("owner", "")).split("/", 1)[-1] for c in expired]
    pending = parse("Appointment", [("status", "pending")]).filter
    for doc in store.reader.find_raw("Appointment", pending, {"text": 1, "ts": 1}, limit):
        if doc["_id"] not in owners and _expired(store, doc["_id"], fhirjson.loads(doc["text"]), doc["ts"]):
            owners.append(doc["_id"])
    freed: list[str] = []
    for rid in owners:
        def plan(current: Stored | None, rid: str = rid):
            if current is None or current.deleted:
                return None
            appt = fhirjson.loads(current.text)
            if not _expired(store, rid, appt, current.ts):
                return None
            appt = {**with_extension(appt, HOLD_EXPIRES, None), "status": "cancelled",
                    "cancelationReason": {"text": "hold expired"}}
            return make_version("Appointment", rid, current.version + 1, next_timestamp(current), appt, "PUT")

        try:
            _, written = write_with_retry(store, "Appointment", rid, plan)
        except FHIRError as exc:
            log.warning("hold expiry skipped", extra={"appointment": rid, "error": str(exc)})
            continue
        if written is not None:
            slots = slot_ids(fhirjson.loads(written.text))
            freed += [s for s in slots if s not in freed and claim_of(store, s) is None]
    freed += [s for s in _drop_orphans(store, expired) if s not in freed]
    return freed


def _drop_orphans(store: Store, claims: list[dict]) -> list[str]:
    """Delete expired hold claims that no appointment holds any more: a takeover that rolled back puts the claim it
    had taken over back, possibly after that hold was cancelled and its slot freed. Only when the claim's commit is
    over and the slot is free; by key and holding commit, so a newer claim on the slot is never touched."""
    dropped = []
    for claim in claims:
        sid = claim["_id"].split("/", 1)[1]
        owner = store.reader.current("Appointment", str(claim.get("owner", "")).split("/", 1)[-1])
        appt = fhirjson.loads(owner.text) if owner is not None and owner.text else {}
        if appt.get("status") in OCCUPYING and sid in slot_ids(appt):
            continue
        if store.committer.pending_commit_ids([claim.get("c")]):
            continue
        slot = store.reader.current("Slot", sid)
        if slot is not None and slot.text and fhirjson.loads(slot.text).get("status") != "free":
            continue
        if store.db[CLAIMS].delete_one({"_id": claim["_id"], "c": claim.get("c")}).deleted_count:
            log.info("orphaned hold claim dropped", extra={"slot": sid, "owner": claim.get("owner")})
            dropped.append(sid)
    return dropped

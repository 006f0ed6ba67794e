"""Appointment/$book (IHE ITI-117, Argonaut $book), [id]/$reschedule, [id]/$cancel and [id]/$noshow.

Each is ONE commit of the Appointment's new version together with its Slots' versions and slot claims (the rules in
resources/scheduling.py), so a killed process leaves the old state or the new one, never a mix.
- $book: from a hold or a stored proposed/waitlist Appointment (`appointment-reference`, or the instance) or from a
  proposed Appointment resource (`appointment-resource`, e.g. one $find returned); status booked, participants
  accepted, a video visit gets its join link (extension JOIN_LINK). A slot already taken is 409.
- $reschedule: `slot` (1..*, references) or `appointment-resource` (a proposed Appointment naming the new slots):
  the same Appointment id gets a new version on the new slots; the old slots are released in the same commit.
- $cancel: `reason` (string or CodeableConcept) -> cancelled with cancelationReason, slots freed; inside the
  late-cancellation window (setting) the extension LATE_CANCELLATION is true.
- $noshow: clinicians only (a Practitioner or PractitionerRole user, or authorization off).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from fhirserver import fhirjson
from fhirserver.errors import BadRequest, Conflict, Forbidden, NotFound, Unprocessable
from fhirserver.interactions import create as create_mod
from fhirserver.interactions.guard import OPEN, Guard
from fhirserver.interactions.result import Result
from fhirserver.interactions.versions import check_valid, make_version, next_timestamp, write_with_retry
from fhirserver.operations.find import Params, _reference, one, searchset, values
from fhirserver.resources.scheduling import (
    HOLD_EXPIRES,
    JOIN_LINK,
    LATE_CANCELLATION,
    instant_of,
    slot_ids,
    visit_mode,
    with_extension,
    with_slot_times,
)
from fhirserver.store.commit import now
from fhirserver.store.database import Store
from fhirserver.store.resources import Stored

Change = Callable[[dict], dict]


def appointment_id(params: Params, rid: str | None) -> str | None:
    """The Appointment an operation acts on: the instance, else `appointment-reference`."""
    ref = one(params, "appointment-reference")
    if rid is not None:
        if ref is not None and _reference(ref, "Appointment", "appointment-reference").split("/")[1] != rid:
            raise BadRequest("appointment-reference names another Appointment than the URL",
                             expression=["appointment-reference"])
        return rid
    return _reference(ref, "Appointment", "appointment-reference").split("/")[1] if ref is not None else None


def with_patients(appt: dict, params: Params, status: str) -> dict:
    """Add `patient-reference` patients as participants; set every participant's status; a patient is required."""
    participants = [dict(p) for p in appt.get("participant") or [] if isinstance(p, dict)]
    known = {(p.get("actor") or {}).get("reference") for p in participants}
    for value in values(params, "patient-reference"):
        ref = _reference(value, "Patient", "patient-reference")
        if ref not in known:
            participants.append({"actor": {"reference": ref}, "required": "required"})
            known.add(ref)
    if not any(str(r).startswith("Patient/") for r in known):
        raise Unprocessable("the Appointment has no patient participant (give patient-reference)",
                            expression=["Appointment.participant"])
    for p in participants:
        p["status"] = status
    return {**appt, "participant": participants}


def change(store: Store, base: str, rid: str, guard: Guard, fn: Change) -> Stored:
    """Apply `fn` to the current Appointment and commit it with its rules; 404 when unknown or out of reach."""
    guard.check_existing(store, "update", "Appointment", rid)

    def plan(current: Stored | None):
        if current is None or current.deleted:
            raise NotFound(f"Appointment/{rid} is not known")
        changed = check_valid(fn(fhirjson.loads(current.text)), "Appointment", rid)
        version = make_version("Appointment", rid, current.version + 1, next_timestamp(current), changed, "PUT")
        guard.check_new("update", version)
        return version

    _, written = write_with_retry(store, "Appointment", rid, plan)
    assert written is not None
    return Stored(written.type, written.id, written.version, written.ts, written.text, written.method)


def create_appointment(store: Store, base: str, appt: dict, guard: Guard) -> Stored:
    body = {k: v for k, v in appt.items() if k not in ("id", "meta")}
    stored = create_mod.create(store, base, "Appointment", body, guard=guard).stored
    assert stored is not None
    return stored


def bundle_result(base: str, stored: Stored, status: int = 200, headers: dict[str, str] | None = None) -> Result:
    return Result(status, body=searchset(base, [fhirjson.loads(stored.text)]), headers=headers or {})


def resource_param(params: Params) -> dict | None:
    appt = one(params, "appointment-resource")
    if appt is not None and (not isinstance(appt, dict) or appt.get("resourceType") != "Appointment"):
        raise BadRequest("appointment-resource must be an Appointment", expression=["appointment-resource"])
    return appt


def _booked(appt: dict, params: Params, video_base: str) -> dict:
    appt = with_patients(with_extension(appt, HOLD_EXPIRES, None), params, "accepted")
    appt["status"] = "booked"
    comment = one(params, "comment")
    if comment is not None:
        appt["comment"] = str(comment)
    if visit_mode(appt) == "video" and not any(e.get("url") == JOIN_LINK for e in appt.get("extension") or []):
        appt = with_extension(appt, JOIN_LINK, {"valueUrl": f"{video_base}/{uuid.uuid4().hex}"})
    return appt


def book(store: Store, base: str, params: Params, rid: str | None = None, guard: Guard = OPEN) -> Result:
    """Book a hold, a stored proposed Appointment, or a proposed Appointment resource."""
    video_base = base.rsplit("/fhir", 1)[0] + "/video"
    target = appointment_id(params, rid)
    if target is not None:
        def to_booked(appt: dict) -> dict:
            if appt.get("status") not in ("pending", "proposed", "waitlist", "booked"):
                raise Conflict(f"Appointment/{target} is {appt.get('status')} and cannot be booked",
                               expression=["Appointment.status"])
            if appt.get("status") == "booked":
                raise Conflict(f"Appointment/{target} is booked already", expression=["Appointment.status"])
            return _booked(with_slot_times(store, appt), params, video_base)
        return bundle_result(base, change(store, base, target, guard, to_booked))
    appt = resource_param(params)
    if appt is None:
        raise BadRequest("$book needs appointment-reference or appointment-resource",
                         expression=["appointment-reference"])
    if not slot_ids(appt):
        raise Unprocessable("the Appointment names no slot", expression=["Appointment.slot"])
    booked = _booked(with_slot_times(store, appt), params, video_base)
    return bundle_result(base, create_appointment(store, base, booked, guard), 201)


def reschedule(store: Store, base: str, rid: str, params: Params, guard: Guard = OPEN) -> Result:
    """Move a booked (or held) Appointment to other slots: same id, new version, old slots released at once."""
    new_slots = [_reference(v, "Slot", "slot").split("/")[1] for v in values(params, "slot")]
    proposed = resource_param(params)
    if proposed is not None:
        new_slots += [s for s in slot_ids(proposed) if s not in new_slots]
    if not new_slots:
        raise BadRequest("$reschedule needs slot (one or more) or appointment-resource", expression=["slot"])
    slots = []
    for sid in new_slots:
        current = store.reader.current("Slot", sid)
        if current is None or current.deleted:
            raise Unprocessable(f"Slot/{sid} does not exist", expression=["slot"])
        slots.append(fhirjson.loads(current.text))
    first = min(slots, key=lambda s: instant_of(s.get("start")))
    last = max(slots, key=lambda s: instant_of(s.get("end")))

    def moved(appt: dict) -> dict:
        if appt.get("status") not in ("booked", "pending"):
            raise Conflict(f"Appointment/{rid} is {appt.get('status')}; only booked or held appointments are "
                           "rescheduled", expression=["Appointment.status"])
        out = {**appt, "slot": [{"reference": f"Slot/{s}"} for s in new_slots], "start": first["start"],
               "end": last["end"]}
        if first.get("serviceType"):
            out["serviceType"] = first["serviceType"]
        return out

    return Result(200, stored=change(store, base, rid, guard, moved))


def cancel(store: Store, base: str, rid: str, params: Params, late_hours: float, guard: Guard = OPEN) -> Result:
    """Cancel with a reason; flag a cancellation within `late_hours` of the start."""
    reason: Any = one(params, "reason")
    if reason is None:
        raise BadRequest("$cancel needs a reason", expression=["reason"])

    def cancelled(appt: dict) -> dict:
        if appt.get("status") not in ("proposed", "pending", "booked", "waitlist", "arrived", "checked-in"):
            raise Conflict(f"Appointment/{rid} is {appt.get('status')} and cannot be cancelled",
                           expression=["Appointment.status"])
        if isinstance(reason, str) and "|" in reason:
            system, _, code = reason.partition("|")
            concept = {"coding": [{"system": system, "code": code}]}
        else:
            concept = {"text": str(reason)}
        out = {**with_extension(appt, HOLD_EXPIRES, None), "status": "cancelled", "cancelationReason": concept}
        start = instant_of(appt.get("start"))
        late = start is not None and appt.get("status") != "proposed" and start - now() < timedelta(hours=late_hours)
        return with_extension(out, LATE_CANCELLATION, {"valueBoolean": True} if late else None)

    return Result(200, stored=change(store, base, rid, guard, cancelled))


def is_clinician(guard: Guard) -> bool:
    user = guard.access.fhir_user or ""
    return guard.open or user.startswith(("Practitioner/", "PractitionerRole/"))


def noshow(store: Store, base: str, rid: str, guard: Guard = OPEN) -> Result:
    """Mark a booked appointment as a no-show (clinicians only)."""
    if not is_clinician(guard):
        raise Forbidden("only a clinician (a Practitioner or PractitionerRole user) marks a no-show")

    def missed(appt: dict) -> dict:
        if appt.get("status") not in ("booked", "checked-in", "arrived"):
            raise Conflict(f"Appointment/{rid} is {appt.get('status')}; only a booked appointment is a no-show",
                           expression=["Appointment.status"])
        return {**appt, "status": "noshow"}

    return Result(200, stored=change(store, base, rid, guard, missed))

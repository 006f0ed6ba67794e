"""Rules of Schedule, Slot and Appointment, applied on every write path (create, PUT, PATCH, delete, transaction,
and the scheduling operations) through `plan`.

Invariants (issue #6; R4 Appointment workflow, checklist section 4.1):
- an Appointment that occupies slots (pending = a hold, booked, arrived, checked-in, fulfilled, noshow) has its
  slots busy (busy-tentative while pending), and its start and end are the first slot's start and the last one's end;
- a slot is in at most one occupying Appointment: that is a unique claim document in `slot_claims`, `_id`
  "Slot/<id>", inserted in the same commit as the Appointment and Slot versions (DESIGN.md, "Atomicity"); leaving a
  slot (cancel, reschedule, delete) releases its claim in the same commit and makes the slot free;
- a hold's claim carries `until`; once that has passed another booking may take the slot over (deleting the claim
  by key and holder, then inserting its own), and the expired hold's Appointment is cancelled in that commit;
- statuses move only along TRANSITIONS; a Slot is busy or busy-tentative only while claimed, a claimed Slot cannot
  be freed, re-timed or deleted by a plain write.

Conventions of this server (documented in the README): visit mode is a `serviceType` coding of system
VISIT_MODE_SYSTEM (in-person, video, phone) on Slot and Appointment; a hold's end is the extension HOLD_EXPIRES
(valueInstant); a video visit's join link is the extension JOIN_LINK (valueUrl) on the Appointment; a cancellation
inside the late-cancellation window carries LATE_CANCELLATION (valueBoolean true).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from fhirserver import fhirjson
from fhirserver.errors import Conflict, Unprocessable
from fhirserver.search.extract import date_range
from fhirserver.store.commit import Claim, ClaimTaken, Release, Version, VersionConflict, now
from fhirserver.store.database import Store

log = logging.getLogger("fhirserver.scheduling")

CLAIMS = "slot_claims"
VISIT_MODE_SYSTEM = "urn:fhirserver:visit-mode"
VISIT_MODES = ("in-person", "video", "phone")
SLOT_DAY = "slot-day"  # idx key of a Slot: the UTC day of its start (with_slot_day)
HOLD_EXPIRES = "urn:fhirserver:hold-expires"
JOIN_LINK = "urn:fhirserver:video-join-link"
LATE_CANCELLATION = "urn:fhirserver:late-cancellation"
DEFAULT_HOLD = timedelta(minutes=10)  # a pending Appointment written without HOLD_EXPIRES holds this long

# Statuses in which an Appointment keeps its slots (pending is a hold).
OCCUPYING = frozenset({"pending", "booked", "arrived", "checked-in", "fulfilled", "noshow"})
# R4 Appointment workflow: where each status may go next (staying is always allowed).
TRANSITIONS: dict[str, frozenset[str]] = {
    "proposed": frozenset({"pending", "booked", "cancelled", "waitlist", "entered-in-error"}),
    "waitlist": frozenset({"proposed", "pending", "booked", "cancelled", "entered-in-error"}),
    "pending": frozenset({"booked", "cancelled", "entered-in-error"}),
    "booked": frozenset({"arrived", "checked-in", "fulfilled", "cancelled", "noshow", "entered-in-error"}),
    "checked-in": frozenset({"arrived", "fulfilled", "cancelled", "entered-in-error"}),
    "arrived": frozenset({"checked-in", "fulfilled", "cancelled", "entered-in-error"}),
    "fulfilled": frozenset({"entered-in-error"}),
    "noshow": frozenset({"entered-in-error"}),
    "cancelled": frozenset({"entered-in-error"}),
    "entered-in-error": frozenset(),
}
UNBOOKABLE = frozenset({"busy-unavailable", "entered-in-error"})

# make(type, id, version, ts, resource, method) -> Version: given by the interaction layer (stamping and indexing).
MakeVersion = Callable[[str, str, int, datetime, dict | None, str], Version]
SlotListener = Callable[[Store, list[str]], None]
_slot_freed: list[SlotListener] = []


def on_slot_freed(listener: SlotListener) -> SlotListener:
    """Register `listener(store, slot_ids)`, called after a commit made slots free again (cancel, reschedule,
    hold expiry, delete). The waitlist plugs in here; the default is to do nothing. Usable as a decorator."""
    _slot_freed.append(listener)
    return listener


def remove_slot_listener(listener: SlotListener) -> None:
    if listener in _slot_freed:
        _slot_freed.remove(listener)


def slots_freed(store: Store, slot_ids: list[str]) -> None:
    """Tell every listener; a failing listener is logged and never undoes the commit."""
    if not slot_ids:
        return
    for listener in list(_slot_freed):
        try:
            listener(store, list(slot_ids))
        except Exception:
            log.exception("slot-freed listener failed", extra={"slots": slot_ids})


@dataclass
class Effects:
    """What a write brings along: more versions (Slots, expired holds), slot claims and releases."""

    versions: list[Version] = field(default_factory=list)
    claims: list[Claim] = field(default_factory=list)
    releases: list[Release] = field(default_factory=list)
    freed: list[str] = field(default_factory=list)


# -- reading resources ---------------------------------------------------------------------------------------------
def instant_of(text: Any) -> datetime | None:
    """The start of a FHIR date/dateTime/instant as an aware UTC datetime (None when missing or invalid)."""
    found = date_range(text) if isinstance(text, str) else None
    return found[0] if found else None


def with_slot_day(rtype: str, idx: dict) -> dict:
    """`idx` with, for a Slot, SLOT_DAY: the UTC day (`YYYY-MM-DD`) its start falls on, a plain value that FerretDB
    pushes down as equality (unlike the `idx.start` range), so $find reads the slots of the days it pages through,
    not all of them. Applied wherever an index is made (make_version, reindex)."""
    start = idx.get("start") if rtype == "Slot" else None
    if isinstance(start, dict) and isinstance(start.get("lo"), datetime):
        idx[SLOT_DAY] = [slot_day(start["lo"])]
    return idx


def slot_day(t: datetime) -> str:
    """The UTC day of an instant as SLOT_DAY stores it."""
    return _aware(t).astimezone(UTC).strftime("%Y-%m-%d")  # type: ignore[union-attr]


def _aware(t: datetime | None) -> datetime | None:
    return t.replace(tzinfo=UTC) if t is not None and t.tzinfo is None else t


def slot_ids(appointment: dict) -> list[str]:
    """Ids of the Slots an Appointment references (`Slot/<id>`), in order, without repeats."""
    out: list[str] = []
    for ref in appointment.get("slot") or []:
        text = (ref or {}).get("reference", "") if isinstance(ref, dict) else ""
        rid = text.split("/", 1)[1] if text.startswith("Slot/") else ""
        if rid and rid not in out:
            out.append(rid)
    return out


def extension(resource: dict, url: str) -> dict | None:
    return next((e for e in resource.get("extension") or [] if isinstance(e, dict) and e.get("url") == url), None)


def with_extension(resource: dict, url: str, value: dict | None) -> dict:
    """A copy with extension `url` set to `value` (e.g. {"valueBoolean": True}), or removed when None."""
    others = [e for e in resource.get("extension") or [] if not (isinstance(e, dict) and e.get("url") == url)]
    out = dict(resource)
    if value is not None:
        others.append({"url": url, **value})
    if others:
        out["extension"] = others
    else:
        out.pop("extension", None)
    return out


def hold_until(appointment: dict, ts: datetime) -> datetime:
    """When a pending Appointment's hold ends: its HOLD_EXPIRES extension, else `ts` + DEFAULT_HOLD."""
    ext = extension(appointment, HOLD_EXPIRES)
    found = instant_of(ext.get("valueInstant") or ext.get("valueDateTime")) if ext else None
    return found or _aware(ts) + DEFAULT_HOLD


def visit_mode(resource: dict) -> str | None:
    for concept in resource.get("serviceType") or []:
        for coding in (concept or {}).get("coding") or []:
            if coding.get("system") == VISIT_MODE_SYSTEM:
                return coding.get("code")
    return None


def claim_of(store: Store, slot_id: str) -> dict | None:
    return store.db[CLAIMS].find_one({"_id": f"Slot/{slot_id}"})


def _resource(store: Store, rtype: str, rid: str) -> tuple[int, dict | None]:
    """(current version number or 0, current resource or None when missing or deleted)."""
    cur = store.reader.current(rtype, rid)
    if cur is None:
        return 0, None
    return cur.version, (fhirjson.loads(cur.text) if not cur.deleted else None)


def _after(store: Store, rtype: str, rid: str, t: datetime) -> datetime:
    """`t`, or just after the current version's time (lastUpdated only moves forward)."""
    cur = store.reader.current(rtype, rid)
    last = _aware(cur.ts) if cur is not None else None
    return t if last is None or last < t else last + timedelta(milliseconds=1)


def with_slot_times(store: Store, appt: dict) -> dict:
    """A copy with `start` and `end` taken from the slots when the Appointment has neither (e.g. a stored proposed
    one); slots that do not exist are left for the rules to report."""
    if appt.get("start") or appt.get("end"):
        return appt
    slots = [slot for slot in (_resource(store, "Slot", sid)[1] for sid in slot_ids(appt)) if slot]
    if not slots:
        return appt
    first = min(slots, key=lambda s: instant_of(s.get("start")) or datetime.max.replace(tzinfo=UTC))
    last = max(slots, key=lambda s: instant_of(s.get("end")) or datetime.min.replace(tzinfo=UTC))
    return {**appt, "start": first.get("start"), "end": last.get("end")}


# -- planning ------------------------------------------------------------------------------------------------------
def _status_of(v: Version) -> str | None:
    return fhirjson.loads(v.text).get("status") if v.text is not None else None


class _Planner:
    def __init__(self, store: Store, versions: list[Version], make: MakeVersion) -> None:
        self.store = store
        self.make = make
        self.now = now()
        self.primary = {(v.type, v.id): v for v in versions}
        self.effects = Effects()
        self.slot_status: dict[str, str] = {}  # slot id -> status this commit gives it
        self.claimed: dict[str, str] = {}  # slot id -> owner claiming it in this commit
        self.released: set[str] = set()
        # Slots whose claim this commit takes or gives up get a new version even when their status stays, so that
        # every change of a slot's claim is serialized by the slot's version claim (a booking that saw the claim
        # gone but the slot still busy must not slip past the release that is freeing it).
        self.touched: set[str] = set()
        self.done: set[str] = set()
        # Appointments that give up their slots go first, so that another one of the same commit may take them.
        self.queue: list[Version] = sorted((v for v in versions if v.type == "Appointment"),
                                           key=lambda v: _status_of(v) in OCCUPYING)

    def run(self) -> Effects:
        while self.queue:
            v = self.queue.pop(0)
            if v.id not in self.done:
                self.done.add(v.id)
                self.appointment(v)
        for v in list(self.primary.values()):
            if v.type == "Slot":
                self.slot(v)
        for sid, status in self.slot_status.items():
            if ("Slot", sid) in self.primary:
                continue
            number, slot = _resource(self.store, "Slot", sid)
            if slot is not None and (slot.get("status") != status or sid in self.touched):
                ts = _after(self.store, "Slot", sid, self.now)
                self.effects.versions.append(self.make("Slot", sid, number + 1, ts, {**slot, "status": status}, "PUT"))
        return self.effects

    # Appointment -------------------------------------------------------------------------------------------
    def appointment(self, v: Version) -> None:
        owner = f"Appointment/{v.id}"
        _, before = _resource(self.store, "Appointment", v.id)
        after = fhirjson.loads(v.text) if v.text is not None else None
        old, new = (before or {}).get("status"), (after or {}).get("status")
        if old and new and new != old and new not in TRANSITIONS.get(old, frozenset()):
            allowed = ", ".join(sorted(TRANSITIONS.get(old, ()))) or "nothing"
            raise Conflict(f"{owner} cannot move from status {old!r} to {new!r} (from {old!r}: {allowed})",
                           expression=["Appointment.status"])
        if after is not None and new == "waitlist":
            from fhirserver.resources.waitlist import check_entry  # waitlist builds on this module

            if problems := check_entry(after):
                raise Unprocessable(problems[0].diagnostics, issues=problems)
        wanted = slot_ids(after) if after is not None and new in OCCUPYING else []
        if after is not None:
            self.check_times(after, wanted)
        until = hold_until(after, v.ts) if after is not None and new == "pending" and wanted else None
        for sid in wanted:
            self.occupy(owner, sid, until, new == "pending")
        held = slot_ids(before) if before is not None and old in OCCUPYING else []
        for sid in held:
            if sid not in wanted:
                self.leave(owner, sid)

    def check_times(self, appt: dict, wanted: list[str]) -> None:
        start, end = instant_of(appt.get("start")), instant_of(appt.get("end"))
        if start is not None and end is not None and end < start:
            raise Unprocessable("Appointment.end is before Appointment.start", expression=["Appointment.end"])
        if not wanted:
            return
        slots = []
        for n, sid in enumerate(wanted):
            _, slot = _resource(self.store, "Slot", sid)
            if slot is None:
                raise Unprocessable(f"Slot/{sid} does not exist", expression=[f"Appointment.slot[{n}]"])
            slots.append(slot)
        first = min(instant_of(s.get("start")) for s in slots)
        last = max(instant_of(s.get("end")) for s in slots)
        if start != first or end != last:
            raise Unprocessable("an Appointment with slots starts when its first slot starts and ends when its last "
                                f"slot ends ({first.isoformat()} to {last.isoformat()})",
                                expression=["Appointment.start", "Appointment.end"])

    def occupy(self, owner: str, sid: str, until: datetime | None, hold: bool) -> None:
        key = f"Slot/{sid}"
        if sid in self.claimed and self.claimed[sid] != owner:
            raise Conflict(f"{key} is booked twice in this request", expression=["Appointment.slot"])
        fields = {"owner": owner, "until": until}
        claim = claim_of(self.store, sid)
        if claim is not None and sid in self.released:
            # given up earlier in this same commit: take it over instead of releasing it
            self.effects.releases = [r for r in self.effects.releases if r.key != key]
            self.effects.claims.append(Claim(CLAIMS, key, fields, replaced=claim))
            if sid in self.effects.freed:
                self.effects.freed.remove(sid)
        elif claim is None:
            _, slot = _resource(self.store, "Slot", sid)
            if slot is not None and slot.get("status") in UNBOOKABLE:
                raise Conflict(f"{key} is {slot.get('status')} and cannot be booked", expression=["Appointment.slot"])
            self.effects.claims.append(Claim(CLAIMS, key, fields))
        elif claim.get("owner") == owner:
            if _aware(claim.get("until")) != until:
                self.effects.claims.append(Claim(CLAIMS, key, fields, replaced=claim))
        elif claim.get("until") is not None and _aware(claim["until"]) < self.now:
            self.effects.claims.append(Claim(CLAIMS, key, fields, replaced=claim))
            self.cancel_expired_hold(claim["owner"])
        else:
            raise Conflict(f"{key} is already taken by another appointment", expression=["Appointment.slot"])
        self.claimed[sid] = owner
        self.slot_status[sid] = "busy-tentative" if hold else "busy"
        if self.effects.claims and self.effects.claims[-1].key == key:
            self.touched.add(sid)

    def leave(self, owner: str, sid: str) -> None:
        if sid in self.claimed:
            return  # taken over by another appointment of this commit
        claim = claim_of(self.store, sid)
        if claim is not None and claim.get("owner") == owner:
            self.effects.releases.append(Release(CLAIMS, f"Slot/{sid}", claim["c"]))
        elif claim is not None:
            return  # someone else holds the slot now (e.g. took over an expired hold): leave it to them
        self.released.add(sid)
        if sid not in self.claimed:
            _, slot = _resource(self.store, "Slot", sid)
            if slot is not None and (claim is not None or slot.get("status") in ("busy", "busy-tentative")):
                self.slot_status[sid] = "free"
                self.touched.add(sid)
                self.effects.freed.append(sid)

    def cancel_expired_hold(self, owner: str) -> None:
        """The Appointment whose expired hold is being taken over is cancelled in the same commit."""
        rid = owner.split("/", 1)[1]
        if ("Appointment", rid) in self.primary or rid in self.done:
            return
        number, appt = _resource(self.store, "Appointment", rid)
        if appt is None or appt.get("status") != "pending":
            return
        appt = {**appt, "status": "cancelled", "cancelationReason": {"text": "hold expired"}}
        version = self.make("Appointment", rid, number + 1, _after(self.store, "Appointment", rid, self.now), appt,
                            "PUT")
        self.effects.versions.append(version)
        self.queue.append(version)

    # Slot ------------------------------------------------------------------------------------------------------
    def slot(self, v: Version) -> None:
        key = f"Slot/{v.id}"
        claim = claim_of(self.store, v.id)
        held = v.id in self.claimed or (claim is not None and v.id not in self.released)
        if v.text is None:
            if held:
                raise Conflict(f"{key} is booked by {(claim or {}).get('owner', 'an appointment')}; cancel that "
                               "appointment first")
            return
        slot = fhirjson.loads(v.text)
        start, end = instant_of(slot.get("start")), instant_of(slot.get("end"))
        if start is not None and end is not None and end <= start:
            raise Unprocessable("Slot.end must be after Slot.start", expression=["Slot.end"])
        status = slot.get("status")
        if v.id in self.slot_status and status != self.slot_status[v.id]:
            raise Conflict(f"{key} must be {self.slot_status[v.id]} in this request", expression=["Slot.status"])
        if held:
            if status not in ("busy", "busy-tentative"):
                raise Conflict(f"{key} is booked by {(claim or {}).get('owner', 'an appointment')}: it stays busy "
                               "until that appointment is cancelled", expression=["Slot.status"])
            _, before = _resource(self.store, "Slot", v.id)
            if before is not None and (before.get("start"), before.get("end")) != (slot.get("start"), slot.get("end")):
                raise Conflict(f"{key} is booked: its times cannot change", expression=["Slot.start"])
        elif status in ("busy", "busy-tentative"):
            raise Unprocessable(f"a Slot becomes {status} only by booking or holding an appointment on it (use "
                                "busy-unavailable to block time)", expression=["Slot.status"])


def plan(store: Store, versions: list[Version], make: MakeVersion) -> Effects:
    """The checks and side effects of writing `versions` (one commit): raise Conflict/Unprocessable when a rule is
    broken; otherwise the extra versions, claims and releases to commit with them."""
    if not any(v.type in ("Appointment", "Slot") for v in versions):
        return Effects()
    return _Planner(store, versions, make).run()


def taken(store: Store, exc: ClaimTaken) -> Exception:
    """What a lost claim race means: retry while the winner's commit is in flight (it may still roll back), else
    409 (the slot is taken)."""
    claim = store.db[exc.coll].find_one({"_id": exc.key}, {"c": 1})
    if claim is None or store.committer.pending_commit_ids([claim.get("c")]):
        return VersionConflict(exc.key)
    return Conflict(f"{exc.key} is already taken by another appointment", expression=["Appointment.slot"])


def expired_holds(store: Store, limit: int = 500) -> list[dict]:
    """Claims of holds whose time is over (oldest first)."""
    return list(store.db[CLAIMS].find({"until": {"$lt": now()}}).limit(limit))

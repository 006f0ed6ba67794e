"""Appointment notifications: confirmations, reminders, cancellations and waitlist offers.

Each notice is recorded twice: as a FHIR `Communication` to the patient (written through the server's validated
write path, which the caller hands in as `record`, so this room does not reach up into `interactions/`) and as a
message to one `Notifier` (smart_auth.notify's protocol; `OutboxNotifier` queues it in the `outbox` collection, the
same one password resets use). Only that narrow protocol is taken from smart_auth.

Sent once: every notice has a key (`reminder|Appointment/1|24h|2026-01-05T09:00:00Z`) and is claimed by a unique
insert into `notices` (DESIGN.md, "Atomicity"). A claim left `pending` by a killed process is taken over after
`stale_after` seconds; the Communication id is derived from the key (a second write of it is a version conflict, i.e.
already written) and the outbox is checked for the key before queueing, so a re-run finishes the notice instead of
repeating it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pymongo.errors import DuplicateKeyError

from fhirserver import fhirjson
from fhirserver.store.commit import now
from fhirserver.store.database import Store
from smart_auth.notify import OUTBOX, Notifier  # OUTBOX: where OutboxNotifier queues (read to avoid a repeat)

log = logging.getLogger("fhirserver.notifications")

NOTICES = "notices"
CATEGORY = "http://terminology.hl7.org/CodeSystem/communication-category"
NOTICE_SYSTEM = "urn:fhirserver:notice"
PENDING = "pending"
DONE = "done"

# kind -> Communication.category code
KINDS = {
    "appointment_confirmation": "notification",
    "appointment_reminder": "reminder",
    "appointment_cancellation": "notification",
    "waitlist_offer": "alert",
}

Record = Callable[[str, dict], None]
"""Writes a Communication with the given id through the validated write path (already written = no error)."""


@dataclass(frozen=True)
class Notice:
    """One message about one appointment to one patient."""

    kind: str
    key: str
    patient: str  # Patient id
    appointment: str  # Appointment id
    subject: str
    body: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def communication_id(self) -> str:
        """A stable id per key, so that writing it twice is a version conflict, not a second Communication."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{NOTICE_SYSTEM}:{self.key}"))


def patient_of(appointment: dict) -> str | None:
    """The id of the appointment's (first) Patient participant."""
    for p in appointment.get("participant") or []:
        ref = ((p.get("actor") or {}).get("reference") or "")
        if ref.startswith("Patient/"):
            return ref.split("/", 1)[1]
    return None


def _when(appointment: dict) -> str:
    start = appointment.get("start")
    if not start:
        return "(no time set)"
    try:
        t = datetime.fromisoformat(start.replace("Z", "+00:00"))
    except ValueError:
        return start
    return t.strftime("%a %d %b %Y %H:%M %Z").strip()


def _what(appointment: dict) -> str:
    names = [c.get("text") or next((d.get("display") or d.get("code") for d in c.get("coding") or []), "")
             for c in appointment.get("serviceType") or []]
    names = [n for n in names if n]
    return names[0] if names else "appointment"


def _notice(kind: str, key: str, appointment: dict, subject: str, body: str, **meta: Any) -> Notice | None:
    patient = patient_of(appointment)
    if patient is None or not appointment.get("id"):
        return None
    return Notice(kind, key, patient, appointment["id"], subject, body, meta)


def confirmation(appointment: dict) -> Notice | None:
    """Booked (or moved to a new time): one per appointment and start time."""
    what, when = _what(appointment), _when(appointment)
    return _notice("appointment_confirmation", f"confirmation|Appointment/{appointment.get('id')}|"
                   f"{appointment.get('start')}", appointment, f"Your {what} is booked for {when}",
                   f"Your {what} is booked for {when}. Reply through the portal to change or cancel it.")


def reminder(appointment: dict, hours: float) -> Notice | None:
    """The reminder `hours` before the start; one per appointment, offset and start time."""
    what, when = _what(appointment), _when(appointment)
    label = f"{hours:g}h"
    return _notice("appointment_reminder", f"reminder|Appointment/{appointment.get('id')}|{label}|"
                   f"{appointment.get('start')}", appointment, f"Reminder: your {what} on {when}",
                   f"This is a reminder of your {what} on {when}.", offset=label)


def cancellation(appointment: dict) -> Notice | None:
    """Cancelled after having been booked: one per appointment."""
    what, when = _what(appointment), _when(appointment)
    reason = (appointment.get("cancelationReason") or {}).get("text")
    body = f"Your {what} on {when} has been cancelled." + (f" Reason: {reason}." if reason else "")
    return _notice("appointment_cancellation", f"cancellation|Appointment/{appointment.get('id')}", appointment,
                   f"Your {what} on {when} is cancelled", body)


def waitlist_offer(hold: dict, entry_id: str, expires: datetime | None) -> Notice | None:
    """A slot held for a waitlisted patient until `expires`: one per hold."""
    what, when = _what(hold), _when(hold)
    until = f" until {expires.strftime('%H:%M %Z').strip()}" if expires else ""
    return _notice("waitlist_offer", f"offer|Appointment/{hold.get('id')}", hold,
                   f"A {what} opened up on {when}",
                   f"A {what} on {when} opened up and is held for you{until}. Book Appointment/{hold.get('id')} "
                   "to take it; otherwise it passes to the next person on the waitlist.",
                   waitlist_entry=f"Appointment/{entry_id}")


def communication(notice: Notice, sent: datetime) -> dict:
    """The Communication that records `notice` in the patient's record."""
    patient = {"reference": f"Patient/{notice.patient}"}
    return {
        "resourceType": "Communication",
        "identifier": [{"system": NOTICE_SYSTEM, "value": notice.key}],
        "status": "completed",
        "category": [{"coding": [{"system": CATEGORY, "code": KINDS[notice.kind]}], "text": notice.kind}],
        "subject": patient,
        "about": [{"reference": f"Appointment/{notice.appointment}"}],
        "recipient": [patient],
        "sent": sent.strftime("%Y-%m-%dT%H:%M:%S.") + f"{sent.microsecond // 1000:03d}Z",
        "topic": {"text": notice.subject},
        "payload": [{"contentString": notice.body}],
    }


class AppointmentNotices:
    """Sends notices once each: claim, Communication, Notifier message, done."""

    def __init__(self, store: Store, notifier: Notifier, record: Record, stale_after: float = 300.0,
                 clock: Callable[[], datetime] = now) -> None:
        self.store = store
        self.notifier = notifier
        self.record = record
        self.stale_after = stale_after
        self.clock = clock

    def _claim(self, notice: Notice) -> tuple[str, bool] | None:
        """Take the notice's key: (owner, False) for a fresh insert, (owner, True) for the takeover of a stale
        pending claim; None when someone else has it."""
        coll = self.store.db[NOTICES]
        owner = uuid.uuid4().hex
        doc = {"_id": notice.key, "state": PENDING, "owner": owner, "ts": self.clock(), "kind": notice.kind,
               "appointment": notice.appointment, "patient": notice.patient}
        try:
            coll.insert_one(doc)
            return owner, False
        except DuplicateKeyError:
            held = coll.find_one({"_id": notice.key})
        if held is None or held.get("state") != PENDING:
            return None
        t = self.clock()
        if held["ts"].replace(tzinfo=t.tzinfo) > t - timedelta(seconds=self.stale_after):
            return None
        # A killed sender's claim: remove exactly that claim, then race for a fresh insert (as leases do).
        coll.delete_one({"_id": notice.key, "owner": held["owner"]})
        try:
            coll.insert_one(doc)
            return owner, True
        except DuplicateKeyError:
            return None

    def address(self, patient: str) -> str:
        """The patient's e-mail from Patient.telecom, else the reference (delivered in the portal)."""
        stored = self.store.reader.current("Patient", patient)
        if stored is not None and stored.text:
            for telecom in fhirjson.loads(stored.text).get("telecom") or []:
                if telecom.get("system") == "email" and telecom.get("value"):
                    return str(telecom["value"])
        return f"Patient/{patient}"

    def send(self, notice: Notice | None) -> bool:
        """Send `notice` unless it was sent (or is being sent) already; True when this call sent it."""
        if notice is None:
            return False
        claimed = self._claim(notice)
        if claimed is None:
            return False
        owner, took_over = claimed
        cid = notice.communication_id
        self.record(cid, communication(notice, self.clock()))
        # Only a taken-over claim can have its message queued already (the killed sender got that far).
        if not took_over or self.store.db[OUTBOX].find_one({"meta.notice": notice.key}, {"_id": 1}) is None:
            meta = {**notice.meta, "notice": notice.key, "patient": f"Patient/{notice.patient}",
                    "appointment": f"Appointment/{notice.appointment}", "communication": f"Communication/{cid}"}
            self.notifier.send(self.address(notice.patient), notice.subject, notice.body, notice.kind, meta)
        self.store.db[NOTICES].update_one({"_id": notice.key, "owner": owner},
                                          {"$set": {"state": DONE, "done": self.clock(), "communication": cid}})
        log.info("notice sent", extra={"kind": notice.kind, "appointment": notice.appointment})
        return True

    def sent(self, key: str) -> bool:
        """Whether the notice with `key` went out."""
        return self.store.db[NOTICES].find_one({"_id": key, "state": DONE}, {"_id": 1}) is not None

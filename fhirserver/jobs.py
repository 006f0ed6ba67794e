"""Background jobs of the server process: hold expiry, appointment notices, reminders and waitlist offers.

Every process runs the same timer (FHIR_JOB_INTERVAL seconds; `fhirserver jobs run-once` runs one round by hand).
Each job runs under a lease `job:<name>` taken by unique insert (fhirserver/store/leases.py), so with many processes
each job still runs in one of them at a time; a process killed mid-job leaves a lease that expires. What a job does
is idempotent on its own (keyed claims), so a job re-run after a crash finishes the work instead of repeating it.

- holds: expired holds give their slots back (the scheduling core's `expire_holds`);
- notices: confirmations of booked (or moved) appointments and cancellations of booked ones, found among the
  Appointments written since the last run (minus a margin for commits still in flight);
- reminders: booked appointments whose start is within FHIR_REMINDER_HOURS get the nearest reminder due, each
  (appointment, offset, start) once: computed here, never by a request;
- waitlist: freed slots are held for the earliest waitlisted patient who wants them, with an offer notice
  (fhirserver/operations/waitlist.py). A freed slot also wakes the timer at once (the scheduling core's
  `on_slot_freed`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from pymongo.errors import PyMongoError

from fhirserver import fhirjson
from fhirserver.config import Settings
from fhirserver.interactions.create import create
from fhirserver.operations import find, hold, waitlist
from fhirserver.resources import scheduling
from fhirserver.resources.notifications import AppointmentNotices, cancellation, confirmation, reminder
from fhirserver.resources.waitlist import instant_of
from fhirserver.search.query import parse
from fhirserver.store.commit import HISTORY, VersionConflict, now
from fhirserver.store.database import Store
from smart_auth.notify import Notifier, OutboxNotifier

log = logging.getLogger("fhirserver.jobs")

JOB_STATE = "job_state"
BOOKED = ("booked", "arrived", "checked-in", "fulfilled", "noshow")


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


class Jobs:
    """The jobs of one process over one store; `run_once` runs each under its lease, `start` on a timer."""

    def __init__(self, store: Store, settings: Settings, notifier: Notifier | None = None) -> None:
        self.store = store
        self.settings = settings
        self.notices = AppointmentNotices(store, notifier or OutboxNotifier(store.db), self._record,
                                          stale_after=max(60.0, 4 * settings.job_interval))
        self.jobs: dict[str, Callable[[], Any]] = {
            "holds": self.expire_holds,
            "waitlist": self.waitlist_offers,
            "notices": self.appointment_notices,
            "reminders": self.reminders,
        }
        self._indexed = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- running -----------------------------------------------------------------------------------------------
    @property
    def lease_ttl(self) -> float:
        return max(60.0, 4 * self.settings.job_interval)

    def run_once(self, names: list[str] | None = None) -> dict[str, Any]:
        """One round of the named jobs (all by default): {name: result, "busy" when another process runs it, or
        "failed: <error>" (logged with its stack)}."""
        out: dict[str, Any] = {}
        for name in names or list(self.jobs):
            token = self.store.leases.try_acquire(f"job:{name}", self.lease_ttl)
            if token is None:
                out[name] = "busy"
                continue
            try:
                out[name] = self.jobs[name]()
            except PyMongoError:
                raise  # the database is away: the round ends here
            except Exception as exc:  # one failing job must not stop the others
                log.exception("job failed", extra={"job": name})
                out[name] = f"failed: {type(exc).__name__}"
            finally:
                self.store.leases.release(f"job:{name}", token)
        return out

    def start(self) -> Jobs:
        """Run every job each FHIR_JOB_INTERVAL seconds (sooner when a slot is freed) in a daemon thread."""
        scheduling.on_slot_freed(self.slot_freed)

        def loop() -> None:
            while not self._stop.is_set():
                self._wake.clear()
                try:
                    self.run_once()
                except PyMongoError as exc:
                    log.warning("jobs skipped: database unreachable", extra={"error": type(exc).__name__})
                except Exception:
                    log.exception("jobs failed")
                self._wake.wait(self.settings.job_interval)

        self._thread = threading.Thread(target=loop, name="fhir-jobs", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        scheduling.remove_slot_listener(self.slot_freed)
        self._stop.set()
        self._wake.set()

    def slot_freed(self, store: Store, slot_ids: list[str]) -> None:
        """A commit freed slots: run the waitlist soon rather than at the next tick (no work in the request)."""
        if store is self.store:
            self._wake.set()

    # -- the jobs ------------------------------------------------------------------------------------------------
    def _record(self, rid: str, communication: dict) -> None:
        """Write a notice's Communication through the validated write path; written before = done."""
        try:
            create(self.store, self.settings.base_url, "Communication", communication, rid=rid)
        except VersionConflict:
            pass

    def expire_holds(self) -> int:
        """Free the slots of holds whose time is over; how many were freed."""
        return len(hold.expire_holds(self.store))

    def _search(self, rtype: str, query: list[tuple[str, str]]) -> list[tuple[dict, dict]]:
        flt = parse(rtype, query, strict=True, finder=self.store.reader).filter
        docs = self.store.reader.find_raw(rtype, flt, {"text": 1, "v": 1, "ts": 1})
        return [(d, fhirjson.loads(d["text"])) for d in docs if d.get("text")]

    def reminders(self) -> int:
        """Send the nearest due reminder of each booked appointment starting within the largest offset."""
        offsets = self.settings.reminder_hours
        if not offsets:
            return 0
        t = now()
        horizon = t + timedelta(hours=max(offsets))
        sent = 0
        for _, appt in self._search("Appointment", [("status", "booked"), ("date", f"gt{_iso(t)}"),
                                                     ("date", f"le{_iso(horizon)}")]):
            start = instant_of(appt.get("start"))
            if start is None or start <= t:
                continue
            due = [h for h in offsets if start - timedelta(hours=h) <= t]
            if due:
                sent += self.notices.send(reminder(appt, min(due)))
        return sent

    def _was_booked(self, rid: str, version: int) -> bool:
        """Whether an earlier version of the Appointment was booked (history records by `_id`: indexed everywhere)."""
        keys = [f"Appointment/{rid}/{v}" for v in range(1, version)]
        return any(d.get("text") and fhirjson.loads(d["text"]).get("status") in BOOKED
                   for d in self.store.db[HISTORY].find({"_id": {"$in": keys}}, {"text": 1}))

    def appointment_notices(self) -> int:
        """Confirmations and cancellations of the Appointments written since the last run."""
        t = now()
        margin = timedelta(seconds=self.settings.commit_timeout + 2 * self.settings.job_interval)
        state = self.store.db[JOB_STATE].find_one({"_id": "notices"})
        since = state["since"] if state else t - margin
        sent = 0
        for doc in self.store.db["Appointment"].find({"ts": {"$gte": since}, "del": False}, {"text": 1, "v": 1}):
            appt = fhirjson.loads(doc["text"])
            status = appt.get("status")
            if status == "booked":
                sent += self.notices.send(confirmation(appt))
            elif status == "cancelled" and self._was_booked(appt["id"], doc["v"]):
                sent += self.notices.send(cancellation(appt))
        # Next time look back to this run's start minus the margin: a commit still in flight now may carry an
        # earlier time when it lands; the notice keys make the overlap harmless.
        self.store.db[JOB_STATE].replace_one({"_id": "notices"}, {"_id": "notices", "since": t - margin},
                                             upsert=True)
        return sent

    def hold_for(self, patient: str, slot: dict, entry: dict) -> tuple[dict, datetime | None]:
        """Hold `slot` for the waitlisted `patient` through the scheduling core's $hold (a pending Appointment
        whose rules claim the slot, busy-tentative, for FHIR_HOLD_MINUTES); raises 409 when it was taken."""
        sid = ((slot.get("schedule") or {}).get("reference") or "").removeprefix("Schedule/")
        stored = self.store.reader.current("Schedule", sid)
        schedule = fhirjson.loads(stored.text) if stored and stored.text else None
        proposed = find._proposed(slot, schedule, f"Patient/{patient}")
        proposed["description"] = f"Offered from the waitlist (Appointment/{entry['id']})"
        result = hold.hold(self.store, self.settings.base_url, [("appointment-resource", proposed)],
                           self.settings.hold_minutes)
        assert result.body is not None
        held = result.body["entry"][0]["resource"]
        ext = scheduling.extension(held, scheduling.HOLD_EXPIRES) or {}
        return held, instant_of(ext.get("valueInstant"))

    def waitlist_offers(self) -> dict[str, int]:
        if not self._indexed:
            self.store.db[waitlist.OFFERS].create_index("entry")
            self._indexed = True
        return waitlist.run_offers(self.store, self.settings.base_url, self.hold_for, self.notices)


def start(store: Store, settings: Settings) -> Jobs | None:
    """The process's job runner when FHIR_JOBS is on."""
    return Jobs(store, settings).start() if settings.jobs == "on" else None

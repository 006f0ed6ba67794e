"""Appointment notifications and the jobs that send them, in-process on a real FerretDB.

Each notice is a Communication to the patient (validated write path) plus one outbox message (smart_auth's
OutboxNotifier), sent once per key even when senders race, crash half-way or run again; reminders are computed by
the job at the configured offsets; confirmations and cancellations follow the Appointments written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from fhirserver import fhirjson
from fhirserver.config import Settings
from fhirserver.interactions import create, search, update
from fhirserver.interactions.guard import Guard
from fhirserver.jobs import Jobs
from fhirserver.resources.notifications import NOTICES, AppointmentNotices, confirmation, reminder
from fhirserver.resources.scheduling import VISIT_MODE_SYSTEM
from fhirserver.store.database import Store
from smart_auth.access import Access
from smart_auth.notify import OUTBOX, OutboxNotifier

BASE = "http://test/fhir"


def iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def hour(n: float) -> datetime:
    """`n` hours from now, on a whole minute."""
    t = datetime.now(UTC) + timedelta(hours=n)
    return t.replace(second=0, microsecond=0)


def settings(**env: str) -> Settings:
    return Settings.from_env({"FHIR_BASE_URL": BASE, "FHIR_JOB_INTERVAL": "1", **env})


def write(store: Store, body: dict) -> dict:
    result = create.create(store, BASE, body["resourceType"], body)
    return fhirjson.loads(result.stored.text)


def put(store: Store, body: dict) -> dict:
    result = update.update(store, BASE, body["resourceType"], body["id"], body)
    return fhirjson.loads(result.stored.text)


def patient(store: Store, family: str = "Doe", email: str | None = None) -> str:
    body: dict = {"resourceType": "Patient", "name": [{"family": family}]}
    if email:
        body["telecom"] = [{"system": "email", "value": email}]
    return write(store, body)["id"]


def schedule(store: Store, actor: str, service: str = "general") -> str:
    return write(store, {"resourceType": "Schedule", "actor": [{"reference": actor}],
                         "serviceType": [{"coding": [{"system": "urn:test:service", "code": service}]}]})["id"]


def slot(store: Store, schedule_id: str, start: datetime, minutes: int = 30, mode: str = "video",
         service: str = "general") -> dict:
    return write(store, {
        "resourceType": "Slot", "schedule": {"reference": f"Schedule/{schedule_id}"}, "status": "free",
        "start": iso(start), "end": iso(start + timedelta(minutes=minutes)),
        "serviceType": [{"coding": [{"system": "urn:test:service", "code": service}]},
                        {"coding": [{"system": VISIT_MODE_SYSTEM, "code": mode}]}]})


def booked(store: Store, pid: str, practitioner: str, the_slot: dict) -> dict:
    """A booked Appointment on `the_slot` (a plain create: the rules claim the slot)."""
    return write(store, {
        "resourceType": "Appointment", "status": "booked", "start": the_slot["start"], "end": the_slot["end"],
        "serviceType": the_slot["serviceType"], "slot": [{"reference": f"Slot/{the_slot['id']}"}],
        "participant": [{"actor": {"reference": f"Patient/{pid}"}, "status": "accepted"},
                        {"actor": {"reference": practitioner}, "status": "accepted"}]})


@pytest.fixture(scope="module")
def store(ferretdb):
    s = Store(ferretdb.uri, f"notices{uuid.uuid4().hex[:8]}")
    yield s
    s.close()


@pytest.fixture(scope="module")
def doctor(store):
    doc = write(store, {"resourceType": "Practitioner", "name": [{"family": "Who"}]})["id"]
    return f"Practitioner/{doc}", schedule(store, f"Practitioner/{doc}")


def notices_of(store: Store, notifier: OutboxNotifier | None = None) -> AppointmentNotices:
    jobs = Jobs(store, settings(), notifier)
    return jobs.notices


def communications(store: Store, appointment_id: str, guard: Guard | None = None) -> list[dict]:
    """The Communications about an appointment (R4 has no `about` search parameter: filtered here)."""
    found = search.search(store, BASE, "Communication", [("_count", "1000")], search.Paging(1000, 1000),
                          strict=True, **({"guard": guard} if guard else {})).body
    found = fhirjson.loads(fhirjson.dumps(found))  # entries hold the stored text as it is served
    return [e["resource"] for e in found.get("entry") or [] if e["search"]["mode"] == "match"
            and {"reference": f"Appointment/{appointment_id}"} in e["resource"].get("about", [])]


def outbox(store: Store, appointment_id: str) -> list[dict]:
    return list(store.db[OUTBOX].find({"meta.appointment": f"Appointment/{appointment_id}"}))


def test_a_notice_is_a_communication_and_one_outbox_message(store, doctor):
    practitioner, sched = doctor
    pid = patient(store, "Mail", "mail.patient@example.org")
    appt = booked(store, pid, practitioner, slot(store, sched, hour(30)))
    notices = notices_of(store)
    assert notices.send(confirmation(appt)) is True
    assert notices.send(confirmation(appt)) is False  # the same key again: nothing new
    [comm] = communications(store, appt["id"])
    assert comm["status"] == "completed" and comm["subject"]["reference"] == f"Patient/{pid}"
    assert comm["recipient"] == [{"reference": f"Patient/{pid}"}]
    assert comm["category"][0]["coding"][0]["code"] == "notification"
    assert "booked" in comm["payload"][0]["contentString"]
    [msg] = outbox(store, appt["id"])
    assert msg["to"] == "mail.patient@example.org" and msg["kind"] == "appointment_confirmation"
    assert msg["status"] == "queued" and msg["meta"]["communication"] == f"Communication/{comm['id']}"


def test_a_patient_without_email_gets_it_in_the_portal_and_can_read_it(store, doctor):
    practitioner, sched = doctor
    pid = patient(store, "Portal")
    appt = booked(store, pid, practitioner, slot(store, sched, hour(31)))
    assert notices_of(store).send(confirmation(appt))
    [msg] = outbox(store, appt["id"])
    assert msg["to"] == f"Patient/{pid}"
    mine = Guard(Access("app", "patient/Communication.rs", "authorization_code", patient=pid))
    assert [c["id"] for c in communications(store, appt["id"], mine)] == [msg["meta"]["communication"][14:]]
    other = Guard(Access("app", "patient/Communication.rs", "authorization_code", patient=patient(store, "Nosy")))
    assert communications(store, appt["id"], other) == []


def test_racing_senders_send_once(store, doctor):
    practitioner, sched = doctor
    appt = booked(store, patient(store, "Race"), practitioner, slot(store, sched, hour(32)))
    notice = reminder(appt, 24)
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def go() -> None:
        sender = notices_of(store)
        barrier.wait()
        results.append(sender.send(notice))

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    assert len(communications(store, appt["id"])) == 1
    assert len(outbox(store, appt["id"])) == 1


def test_a_sender_killed_half_way_is_finished_once_by_the_next(store, doctor):
    practitioner, sched = doctor
    appt = booked(store, patient(store, "Crash"), practitioner, slot(store, sched, hour(33)))
    notice = reminder(appt, 72)
    # The state a killed sender leaves: its claim pending, the outbox message already queued, no Communication.
    old = datetime.now(UTC) - timedelta(hours=1)
    store.db[NOTICES].insert_one({"_id": notice.key, "state": "pending", "owner": "dead", "ts": old})
    OutboxNotifier(store.db).send("x@example.org", notice.subject, notice.body, notice.kind,
                                  {"notice": notice.key, "appointment": f"Appointment/{appt['id']}"})
    fresh = AppointmentNotices(store, OutboxNotifier(store.db), notices_of(store).record, stale_after=3600 * 2)
    assert fresh.send(notice) is False  # not stale yet for this sender: left alone
    assert notices_of(store).send(notice) is True  # stale for the job's sender: taken over and finished
    assert notices_of(store).send(notice) is False
    assert notices_of(store).sent(notice.key)
    assert len(communications(store, appt["id"])) == 1
    assert len(outbox(store, appt["id"])) == 1  # the queued message was not repeated


def _reminders_of(store: Store, appointment_id: str) -> list[str]:
    return sorted(d["_id"].split("|")[2] for d in store.db[NOTICES].find({"appointment": appointment_id})
                  if d["_id"].startswith("reminder|"))


def test_reminders_go_out_at_the_offsets_once_each(ferretdb):
    store = Store(ferretdb.uri, f"remind{uuid.uuid4().hex[:8]}")
    try:
        doc = f"Practitioner/{write(store, {'resourceType': 'Practitioner'})['id']}"
        sched = schedule(store, doc)
        pid = patient(store, "Remind")
        in_48h = booked(store, pid, doc, slot(store, sched, hour(48)))
        in_10h = booked(store, pid, doc, slot(store, sched, hour(10)))
        in_100h = booked(store, pid, doc, slot(store, sched, hour(100)))
        past = booked(store, pid, doc, slot(store, sched, hour(-2)))
        runners = [Jobs(store, settings(FHIR_REMINDER_HOURS="72,24")) for _ in range(3)]
        results: list[dict] = []
        threads = [threading.Thread(target=lambda r=r: results.append(r.run_once(["reminders"]))) for r in runners]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(r["reminders"] for r in results if r["reminders"] != "busy") == 2
        assert _reminders_of(store, in_48h["id"]) == ["72h"]
        assert _reminders_of(store, in_10h["id"]) == ["24h"]  # booked late: only the nearest reminder due
        assert _reminders_of(store, in_100h["id"]) == [] and _reminders_of(store, past["id"]) == []
        assert runners[0].run_once(["reminders"]) == {"reminders": 0}  # nothing twice
        # With a 50 h offset too, the 48 h appointment is now due for that one (and only that one) as well.
        assert Jobs(store, settings(FHIR_REMINDER_HOURS="72,50,24")).run_once(["reminders"]) == {"reminders": 1}
        assert _reminders_of(store, in_48h["id"]) == ["50h", "72h"]
        assert len(outbox(store, in_48h["id"])) == 2
        assert [m["kind"] for m in outbox(store, in_10h["id"])] == ["appointment_reminder"]
    finally:
        store.close()


def test_confirmations_and_cancellations_follow_the_appointments(ferretdb):
    store = Store(ferretdb.uri, f"confirm{uuid.uuid4().hex[:8]}")
    try:
        doc = f"Practitioner/{write(store, {'resourceType': 'Practitioner'})['id']}"
        sched = schedule(store, doc)
        pid = patient(store, "Confirm")
        appt = booked(store, pid, doc, slot(store, sched, hour(200)))
        free = slot(store, sched, hour(201))
        hold = write(store, {"resourceType": "Appointment", "status": "pending", "start": free["start"],
                             "end": free["end"], "slot": [{"reference": f"Slot/{free['id']}"}],
                             "participant": [{"actor": {"reference": f"Patient/{pid}"}, "status": "tentative"}]})
        jobs = Jobs(store, settings(FHIR_REMINDER_HOURS=""))
        assert jobs.run_once(["notices"]) == {"notices": 1}  # the booking; the hold is not confirmed
        assert jobs.run_once(["notices"]) == {"notices": 0}
        put(store, {**appt, "status": "cancelled", "cancelationReason": {"text": "feeling better"}})
        put(store, {**hold, "status": "cancelled"})  # a released hold was never booked: no cancellation notice
        assert jobs.run_once(["notices"]) == {"notices": 1}
        kinds = sorted(m["kind"] for m in outbox(store, appt["id"]))
        assert kinds == ["appointment_cancellation", "appointment_confirmation"]
        assert outbox(store, hold["id"]) == []
        cancelled = [c for c in communications(store, appt["id"]) if "cancelled" in c["payload"][0]["contentString"]]
        assert "feeling better" in cancelled[0]["payload"][0]["contentString"]
    finally:
        store.close()


def test_jobs_run_once_command(ferretdb):
    name = f"cli{uuid.uuid4().hex[:8]}"
    store = Store(ferretdb.uri, name)
    try:
        doc = f"Practitioner/{write(store, {'resourceType': 'Practitioner'})['id']}"
        appt = booked(store, patient(store, "Cli"), doc, slot(store, schedule(store, doc), hour(5)))
        env = {**os.environ, "MONGODB_URI": ferretdb.uri, "FHIR_DB_NAME": name, "FHIR_REMINDER_HOURS": "24"}

        def run(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "fhirserver.cli", "jobs", "run-once", *args], env=env,
                                  capture_output=True, text=True, timeout=120)

        first = run("--job", "reminders", "--job", "notices")
        assert first.returncode == 0, first.stderr
        assert json.loads(first.stdout) == {"reminders": 1, "notices": 1}
        assert json.loads(run().stdout) == {"holds": 0, "waitlist": {"offered": 0, "closed": 0, "waiting": 0},
                                            "notices": 0, "reminders": 0}
        assert sorted(m["kind"] for m in outbox(store, appt["id"])) == ["appointment_confirmation",
                                                                       "appointment_reminder"]
        bad = run("--job", "nonsense")
        assert bad.returncode == 2 and "nonsense" in bad.stderr
    finally:
        store.close()

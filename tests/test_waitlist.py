"""Waitlist: the rules of an entry, which slots it wants, and the offers made when a slot frees, in-process on a
real FerretDB with the scheduling core's operations (cancel, hold expiry, book)."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from fhirserver import fhirjson
from fhirserver.jobs import Jobs
from fhirserver.operations import book
from fhirserver.operations.waitlist import OFFERS
from fhirserver.resources.scheduling import VISIT_MODE_SYSTEM
from fhirserver.resources.waitlist import Criteria, check_entry
from fhirserver.store.database import Store
from smart_auth.notify import OUTBOX
from tests.test_notifications import BASE, booked, hour, iso, patient, schedule, settings, slot, write

VIDEO = {"coding": [{"system": VISIT_MODE_SYSTEM, "code": "video"}]}


def entry(pid: str, *, practitioner: str | None = None, start: float = 0, end: float = 24 * 14,
          service: str | None = None, mode: dict | None = VIDEO, **extra) -> dict:
    participants = [{"actor": {"reference": f"Patient/{pid}"}, "status": "needs-action"}]
    if practitioner:
        participants.append({"actor": {"reference": practitioner}, "status": "needs-action"})
    body: dict = {"resourceType": "Appointment", "status": "waitlist", "participant": participants,
                  "requestedPeriod": [{"start": iso(hour(start)), "end": iso(hour(end))}]}
    services = ([{"coding": [{"system": "urn:test:service", "code": service}]}] if service else []) + \
        ([mode] if mode else [])
    if services:
        body["serviceType"] = services
    return {**body, **extra}


def read(store: Store, rtype: str, rid: str) -> dict:
    return fhirjson.loads(store.reader.current(rtype, rid).text)


# -- rules ---------------------------------------------------------------------------------------------------------


def test_a_usable_entry_has_no_issues():
    assert check_entry(entry("p1", practitioner="Practitioner/d")) == []
    assert check_entry(entry("p1", mode=None, service="general")) == []


@pytest.mark.parametrize("change,where", [
    ({"status": "proposed"}, "Appointment.status"),
    ({"requestedPeriod": []}, "Appointment.requestedPeriod"),
    ({"requestedPeriod": [{"start": "2030-01-01T00:00:00Z"}]}, "Appointment.requestedPeriod[0]"),
    ({"requestedPeriod": [{"start": "2030-01-02T00:00:00Z", "end": "2030-01-01T00:00:00Z"}]},
     "Appointment.requestedPeriod[0]"),
    ({"participant": [{"actor": {"reference": "Practitioner/d"}, "status": "needs-action"}]},
     "Appointment.participant"),
    ({"slot": [{"reference": "Slot/1"}]}, "Appointment.slot"),
])
def test_an_unusable_entry_names_the_element_at_fault(change, where):
    issues = check_entry({**entry("p1", practitioner="Practitioner/d"), **change})
    assert issues and where in issues[0].expression


def test_an_entry_must_say_what_it_waits_for():
    issues = check_entry(entry("p1", mode=None))
    assert [i.expression for i in issues] == [["Appointment.serviceType"]]


def test_which_slots_an_entry_wants():
    wants = Criteria.of({**entry("p1", practitioner="Practitioner/d", start=10, end=20, service="general"),
                         "id": "e"})
    good_schedule = {"actor": [{"reference": "Practitioner/d"}, {"reference": "Location/l"}]}
    good = {"status": "free", "start": iso(hour(12)), "end": iso(hour(12.5)),
            "serviceType": [{"coding": [{"system": "urn:test:service", "code": "general"}]}, VIDEO]}
    assert wants.matches(good, good_schedule)
    assert not wants.matches({**good, "status": "busy"}, good_schedule)
    assert not wants.matches({**good, "start": iso(hour(19.75)), "end": iso(hour(20.25))}, good_schedule)
    assert not wants.matches(good, {"actor": [{"reference": "Practitioner/other"}]})
    phone = {"coding": [{"system": VISIT_MODE_SYSTEM, "code": "phone"}]}
    assert not wants.matches({**good, "serviceType": [good["serviceType"][0], phone]}, good_schedule)
    other_service = {"coding": [{"system": "urn:test:service", "code": "dermatology"}]}
    assert not wants.matches({**good, "serviceType": [other_service, VIDEO]}, good_schedule)
    # the slot's own service type counts (as in $find), not one its schedule also offers
    assert not wants.matches({**good, "serviceType": [other_service, VIDEO]},
                             {**good_schedule, "serviceType": [good["serviceType"][0]]})


# -- offers --------------------------------------------------------------------------------------------------------


@pytest.fixture
def world(ferretdb):
    store = Store(ferretdb.uri, f"waitlist{uuid.uuid4().hex[:8]}")
    doctor = f"Practitioner/{write(store, {'resourceType': 'Practitioner'})['id']}"
    other = f"Practitioner/{write(store, {'resourceType': 'Practitioner'})['id']}"
    yield store, doctor, schedule(store, doctor), schedule(store, other)
    store.close()


def offers_to(store: Store, pid: str) -> list[dict]:
    return [m for m in store.db[OUTBOX].find({"kind": "waitlist_offer", "meta.patient": f"Patient/{pid}"})]


def test_a_freed_slot_goes_to_the_earliest_waitlisted_patient_then_the_next(world):
    store, doctor, mine, theirs = world
    jobs = Jobs(store, settings(FHIR_HOLD_MINUTES="0.03", FHIR_REMINDER_HOURS=""))
    first, second, elsewhere, late = (patient(store, n) for n in ("First", "Second", "Elsewhere", "Late"))
    s = slot(store, mine, hour(30))
    slot(store, theirs, hour(30))  # free, but with another practitioner
    taken = booked(store, patient(store, "Holder"), doctor, s)
    e1 = write(store, entry(first, practitioner=doctor))
    e2 = write(store, entry(second, practitioner=doctor))
    write(store, entry(elsewhere, practitioner=doctor, mode={"coding": [{"system": VISIT_MODE_SYSTEM,
                                                                           "code": "in-person"}]}))
    write(store, entry(late, practitioner=doctor, start=40, end=80))  # wants other days
    assert jobs.run_once(["waitlist"])["waitlist"]["offered"] == 0  # nothing free that anyone wants

    book.cancel(store, BASE, taken["id"], [("reason", "cannot come")], late_hours=1)
    assert read(store, "Slot", s["id"])["status"] == "free"
    assert jobs.run_once(["waitlist"])["waitlist"]["offered"] == 1
    [offer] = offers_to(store, first)
    hold = read(store, "Appointment", offer["meta"]["appointment"].split("/")[1])
    assert hold["status"] == "pending" and hold["slot"] == [{"reference": f"Slot/{s['id']}"}]
    assert {"reference": f"Patient/{first}"} in [p["actor"] for p in hold["participant"]]
    assert read(store, "Slot", s["id"])["status"] == "busy-tentative"
    assert offers_to(store, second) == offers_to(store, elsewhere) == offers_to(store, late) == []
    assert jobs.run_once(["waitlist"])["waitlist"] == {"offered": 0, "closed": 0, "waiting": 1}

    time.sleep(2.2)  # the first patient lets the hold run out
    assert jobs.run_once(["holds"]) == {"holds": 1}
    assert read(store, "Appointment", hold["id"])["status"] == "cancelled"
    assert jobs.run_once(["waitlist"])["waitlist"]["offered"] == 1
    [offer2] = offers_to(store, second)
    hold2 = offer2["meta"]["appointment"].split("/")[1]
    assert len(offers_to(store, first)) == 1  # the same slot is not offered to the first patient again

    book.book(store, BASE, [("appointment-reference", f"Appointment/{hold2}")])
    assert read(store, "Slot", s["id"])["status"] == "busy"
    assert jobs.run_once(["waitlist"])["waitlist"]["closed"] == 1
    closed = read(store, "Appointment", e2["id"])
    assert closed["status"] == "cancelled" and hold2 in closed["cancelationReason"]["text"]
    assert read(store, "Appointment", e1["id"])["status"] == "waitlist"  # still waiting for another slot


def test_racing_offer_runs_hold_one_slot_once(world):
    store, doctor, mine, _ = world
    s = slot(store, mine, hour(50))
    pids = [patient(store, f"P{n}") for n in range(3)]
    for pid in pids:
        write(store, entry(pid, practitioner=doctor))
    runners = [Jobs(store, settings(FHIR_REMINDER_HOURS="")) for _ in range(4)]
    barrier = threading.Barrier(4)
    results: list[dict] = []

    def go(r: Jobs) -> None:
        barrier.wait()
        # straight to the work, without the job lease: the offer and slot claims alone must keep it single
        results.append(r.waitlist_offers())

    threads = [threading.Thread(target=go, args=(r,)) for r in runners]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r["offered"] for r in results) == 1
    assert [len(offers_to(store, p)) for p in pids] == [1, 0, 0]
    holds = [d for d in store.db[OFFERS].find({}) if d.get("hold")]
    assert len(holds) == 1 and holds[0]["slot"] == s["id"]


def test_a_freed_slot_wakes_the_running_job_at_once(world):
    store, doctor, mine, _ = world
    s = slot(store, mine, hour(60))
    taken = booked(store, patient(store, "Holder"), doctor, s)
    waiting = patient(store, "Waiting")
    write(store, entry(waiting, practitioner=doctor))
    jobs = Jobs(store, settings(FHIR_JOB_INTERVAL="3600", FHIR_REMINDER_HOURS="")).start()
    try:
        time.sleep(1.0)  # the first round has run; the next is an hour away
        assert offers_to(store, waiting) == []
        book.cancel(store, BASE, taken["id"], [("reason", "moved away")], late_hours=1)
        deadline = time.monotonic() + 15
        while not offers_to(store, waiting) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(offers_to(store, waiting)) == 1
    finally:
        jobs.stop()


def test_entries_past_their_dates_are_left_alone(world):
    store, doctor, mine, _ = world
    slot(store, mine, hour(5))
    pid = patient(store, "Past")
    write(store, {**entry(pid, practitioner=doctor), "requestedPeriod": [
        {"start": iso(hour(-48)), "end": iso(hour(-24))}]})
    jobs = Jobs(store, settings(FHIR_REMINDER_HOURS=""))
    assert jobs.run_once(["waitlist"])["waitlist"] == {"offered": 0, "closed": 0, "waiting": 0}
    assert offers_to(store, pid) == []


def test_an_expired_offer_hold_passes_even_when_nobody_else_waits(world):
    store, doctor, mine, _ = world
    s = slot(store, mine, hour(70), mode="video")
    pid = patient(store, "Alone")
    write(store, entry(pid, practitioner=doctor))
    jobs = Jobs(store, settings(FHIR_HOLD_MINUTES="0.02", FHIR_REMINDER_HOURS=""))
    assert jobs.run_once(["waitlist"])["waitlist"]["offered"] == 1
    time.sleep(1.5)
    jobs.run_once(["holds"])
    assert read(store, "Slot", s["id"])["status"] == "free"
    assert jobs.run_once(["waitlist"])["waitlist"]["offered"] == 0  # offered once; it stays free for $find


def test_an_entry_for_a_service_takes_any_practitioner_offering_it(world):
    store, _, mine, theirs = world
    other_service = slot(store, mine, hour(80), service="dermatology")
    wanted = slot(store, theirs, hour(81))
    pid = patient(store, "Service")
    write(store, entry(pid, service="general", mode=None))
    jobs = Jobs(store, settings(FHIR_REMINDER_HOURS=""))
    assert jobs.run_once(["waitlist"])["waitlist"]["offered"] == 1
    [offer] = offers_to(store, pid)
    hold = read(store, "Appointment", offer["meta"]["appointment"].split("/")[1])
    assert hold["slot"] == [{"reference": f"Slot/{wanted['id']}"}]
    assert read(store, "Slot", other_service["id"])["status"] == "free"

"""A member's whole scheduling journey through the HTTP API with her own SMART patient token (FHIR_AUTH=on):
find a same-day video slot, hold it, book it, reschedule, cancel late (flagged), join a waitlist, receive the offer
when another patient cancels, and book it. The server runs its background jobs (every second), so the offer,
confirmations and cancellations arrive as Communications in her record without anyone calling a job."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from pymongo import MongoClient

from fhirserver.resources.scheduling import JOIN_LINK, LATE_CANCELLATION, VISIT_MODE_SYSTEM
from tests.servers import serve
from tests.smart_helpers import Browser, bearer, create, new_app, new_backend, new_user

SCOPES = ("launch/patient openid fhirUser patient/Appointment.cruds patient/Slot.rs patient/Schedule.rs "
          "patient/Communication.rs patient/Patient.rs")
VIDEO = {"coding": [{"system": VISIT_MODE_SYSTEM, "code": "video"}]}
SERVICE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/service-type", "code": "124",
                       "display": "General Practice"}]}


def iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Member:
    """One person's HTTP client with their token."""

    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.http = requests.Session()
        self.http.headers.update({**bearer(token), "Content-Type": "application/fhir+json"})

    def get(self, path: str, **params: str) -> requests.Response:
        return self.http.get(f"{self.base}/{path}", params=params, timeout=30)

    def post(self, path: str, body: Any) -> requests.Response:
        return self.http.post(f"{self.base}/{path}", data=json.dumps(body), timeout=30)

    def operation(self, path: str, **params: Any) -> requests.Response:
        parameters = []
        for name, value in params.items():
            name = name.replace("_", "-")
            if isinstance(value, dict):
                parameters.append({"name": name, "resource": value})
            else:
                parameters.append({"name": name, "valueString": value})
        return self.post(path, {"resourceType": "Parameters", "parameter": parameters})

    def communications(self) -> list[dict]:
        found = self.get("Communication", _count="200").json()
        return [e["resource"] for e in found.get("entry") or [] if e["search"]["mode"] == "match"]


def appointment_of(response: requests.Response) -> dict:
    body = response.json()
    return body["entry"][0]["resource"] if body.get("resourceType") == "Bundle" else body


def wait_for(what, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = what()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError("timed out")


@pytest.fixture(scope="module")
def clinic(ferretdb, tmp_path_factory):
    name = f"journey{uuid.uuid4().hex[:8]}"
    client: MongoClient = MongoClient(ferretdb.uri)
    db = client[name]
    server = serve(ferretdb.uri, tmp_path_factory.mktemp("journey") / "server.log", FHIR_AUTH="on",
                   FHIR_DB_NAME=name, FHIR_JOB_INTERVAL="1", FHIR_LATE_CANCEL_HOURS="24",
                   FHIR_SECRET_KEY="journey-test-secret-key-0123456789abcdef")
    try:
        system = new_backend(server, db, "system/*.cruds")
        token = system.fetch("system/*.cruds")["access_token"]
        ids = {name: create(server, token, {"resourceType": "Patient", "name": [{"family": name.title()}]})
               for name in ("alice", "bob")}
        ids["dr"] = create(server, token, {"resourceType": "Practitioner", "name": [{"family": "Video"}]})
        ids["schedule"] = create(server, token, {"resourceType": "Schedule", "serviceType": [SERVICE],
                                                 "actor": [{"reference": f"Practitioner/{ids['dr']}"}]})
        now = datetime.now(UTC).replace(second=0, microsecond=0)
        times = {"first": now + timedelta(minutes=20), "second": now + timedelta(minutes=40),
                 "tomorrow": now + timedelta(hours=26)}
        for key, start in times.items():
            ids[key] = create(server, token, {
                "resourceType": "Slot", "schedule": {"reference": f"Schedule/{ids['schedule']}"}, "status": "free",
                "serviceType": [SERVICE, VIDEO], "start": iso(start), "end": iso(start + timedelta(minutes=15))})
        new_user(db, "alice", f"Patient/{ids['alice']}")
        new_user(db, "bob", f"Patient/{ids['bob']}")
        app = new_app(server, db, scope=SCOPES)
        members = {who: Member(server.base, app.launch(Browser(server.url), who, SCOPES)["access_token"])
                   for who in ("alice", "bob")}
        yield server, ids, times, members
    finally:
        server.stop()
        client.drop_database(name)
        client.close()


def test_member_journey(clinic):
    server, ids, times, members = clinic
    alice, bob = members["alice"], members["bob"]
    today = times["first"].date().isoformat()
    window = {"start": today, "end": today} if times["second"].date() == times["first"].date() else \
        {"start": iso(times["first"] - timedelta(minutes=1)), "end": iso(times["second"] + timedelta(minutes=1))}

    # 1. a same-day video slot
    found = alice.get("Appointment/$find", **window, **{"visit-mode": "video",
                                                        "patient": f"Patient/{ids['alice']}"})
    assert found.status_code == 200, found.text
    proposed = [e["resource"] for e in found.json()["entry"]]
    assert [p["slot"][0]["reference"] for p in proposed] == [f"Slot/{ids['first']}", f"Slot/{ids['second']}"]

    # 2. hold it
    held = alice.operation("Appointment/$hold", appointment_resource=proposed[0])
    assert held.status_code in (200, 201), held.text
    assert held.headers.get("Expires")
    hold = appointment_of(held)
    assert hold["status"] == "pending"
    taken = bob.operation("Appointment/$hold", appointment_resource={
        **proposed[0], "participant": [{"actor": {"reference": f"Patient/{ids['bob']}"}, "status": "needs-action"}]})
    assert taken.status_code == 409 and taken.json()["resourceType"] == "OperationOutcome"

    # 3. book it: a video visit gets its join link
    booked = alice.post(f"Appointment/{hold['id']}/$book", {"resourceType": "Parameters"})
    assert booked.status_code == 200, booked.text
    appt = appointment_of(booked)
    assert appt["status"] == "booked" and appt["id"] == hold["id"]
    assert any(e["url"] == JOIN_LINK for e in appt.get("extension", []))

    # 4. reschedule to the second slot: the same appointment, its history kept
    moved = alice.operation(f"Appointment/{appt['id']}/$reschedule", slot=f"Slot/{ids['second']}")
    assert moved.status_code == 200, moved.text
    moved_appt = appointment_of(moved)
    assert moved_appt["id"] == appt["id"] and moved_appt["slot"] == [{"reference": f"Slot/{ids['second']}"}]
    assert alice.get(f"Slot/{ids['first']}").json()["status"] == "free"
    assert alice.get(f"Slot/{ids['second']}").json()["status"] == "busy"
    history = alice.get(f"Appointment/{appt['id']}/_history").json()["entry"]
    assert [e["resource"]["status"] for e in history] == ["booked", "booked", "pending"]  # newest first

    # 5. cancel late (the visit is minutes away): flagged
    cancelled = alice.operation(f"Appointment/{appt['id']}/$cancel", reason="something came up")
    assert cancelled.status_code == 200, cancelled.text
    gone = appointment_of(cancelled)
    assert gone["status"] == "cancelled"
    assert {"url": LATE_CANCELLATION, "valueBoolean": True} in gone["extension"]
    assert alice.get(f"Slot/{ids['second']}").json()["status"] == "free"

    # Confirmations and the cancellation reach her record through the jobs.
    def about(kind: str, appointment_id: str) -> list[dict]:
        return [c for c in alice.communications() if c["category"][0]["text"] == kind
                and {"reference": f"Appointment/{appointment_id}"} in c.get("about", [])]
    wait_for(lambda: about("appointment_cancellation", appt["id"]))

    # 6. Bob has the slot tomorrow; Alice joins the waitlist for that time (a plain POST of a waitlist entry)
    bobs = bob.operation("Appointment/$book", appointment_resource={
        "resourceType": "Appointment", "status": "proposed", "serviceType": [SERVICE, VIDEO],
        "start": iso(times["tomorrow"]), "end": iso(times["tomorrow"] + timedelta(minutes=15)),
        "slot": [{"reference": f"Slot/{ids['tomorrow']}"}],
        "participant": [{"actor": {"reference": f"Patient/{ids['bob']}"}, "status": "needs-action"},
                        {"actor": {"reference": f"Practitioner/{ids['dr']}"}, "status": "needs-action"}]})
    assert bobs.status_code in (200, 201), bobs.text
    bobs_appt = appointment_of(bobs)
    entry = alice.post("Appointment", {
        "resourceType": "Appointment", "status": "waitlist", "serviceType": [VIDEO],
        "requestedPeriod": [{"start": iso(times["tomorrow"] - timedelta(hours=1)),
                             "end": iso(times["tomorrow"] + timedelta(hours=1))}],
        "participant": [{"actor": {"reference": f"Patient/{ids['alice']}"}, "status": "needs-action"},
                        {"actor": {"reference": f"Practitioner/{ids['dr']}"}, "status": "needs-action"}]})
    assert entry.status_code == 201, entry.text
    entry_id = entry.json()["id"]
    someone_elses = alice.post("Appointment", {
        "resourceType": "Appointment", "status": "waitlist", "requestedPeriod": entry.json()["requestedPeriod"],
        "participant": [{"actor": {"reference": f"Patient/{ids['bob']}"}, "status": "needs-action"}]})
    assert someone_elses.status_code == 403

    time.sleep(2.5)  # a couple of job rounds: nothing is free that she wants
    assert not [c for c in alice.communications() if c["category"][0]["text"] == "waitlist_offer"]

    # 7. Bob cancels: the slot is held for Alice and she is told
    assert bob.operation(f"Appointment/{bobs_appt['id']}/$cancel", reason="recovered").status_code == 200
    offer = wait_for(lambda: [c for c in alice.communications() if c["category"][0]["text"] == "waitlist_offer"])[0]
    held_for_her = offer["about"][0]["reference"].split("/")[1]
    pending = alice.get(f"Appointment/{held_for_her}").json()
    assert pending["status"] == "pending" and pending["slot"] == [{"reference": f"Slot/{ids['tomorrow']}"}]
    assert bob.get(f"Appointment/{held_for_her}").status_code in (403, 404)  # her hold is hers

    # 8. she books it; her waitlist entry closes
    done = alice.post(f"Appointment/{held_for_her}/$book", {"resourceType": "Parameters"})
    assert done.status_code == 200, done.text
    assert appointment_of(done)["status"] == "booked"
    assert alice.get(f"Slot/{ids['tomorrow']}").json()["status"] == "busy"
    wait_for(lambda: alice.get(f"Appointment/{entry_id}").json()["status"] == "cancelled")
    wait_for(lambda: about("appointment_confirmation", held_for_her))
    assert not [c for c in bob.communications() if c["subject"]["reference"] != f"Patient/{ids['bob']}"]

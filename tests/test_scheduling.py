"""Scheduling: the invariants of Slot and Appointment on every write path (POST, PUT, PATCH, DELETE, transaction),
the operations $find, $hold, $book, $reschedule, $cancel, $noshow with their errors, hold expiry, and access.

HTTP tests run a real server process on a database of their own; access tests run the operations in-process on
the same FerretDB with `Access` objects as the authorization server hands them over (as tests/test_guard.py does).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import requests
from pymongo import MongoClient

from fhirserver.errors import FHIRError
from fhirserver.interactions.guard import Guard
from fhirserver.operations import book, find, hold
from fhirserver.resources.scheduling import CLAIMS, HOLD_EXPIRES, JOIN_LINK, LATE_CANCELLATION, VISIT_MODE_SYSTEM
from fhirserver.store.database import Store
from smart_auth.access import Access
from tests.fhir import FHIR_JSON, post, put
from tests.servers import serve

DB = "fhirsched"


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def soon(hours: float = 0, days: int = 1) -> datetime:
    """A whole minute in the future."""
    base = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(days=days, hours=hours)
    return base


class World:
    """Helpers over one server: practitioners, schedules, slots and appointments created through the API."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.http = requests.Session()

    def create(self, body: dict) -> dict:
        r = post(self.base, body["resourceType"], body)
        assert r.status_code == 201, r.text
        return r.json()

    def patient(self, family: str = "Smith") -> str:
        return self.create({"resourceType": "Patient", "name": [{"family": family}]})["id"]

    def schedule(self, practitioner: str | None = None, location: str | None = None,
                 specialty: str | None = None) -> str:
        actors = [{"reference": practitioner or f"Practitioner/{self.create({'resourceType': 'Practitioner'})['id']}"}]
        if location:
            actors.append({"reference": location})
        body: dict = {"resourceType": "Schedule", "active": True, "actor": actors}
        if specialty:
            body["specialty"] = [{"coding": [{"system": "http://snomed.info/sct", "code": specialty}]}]
        return self.create(body)["id"]

    def slot(self, schedule: str, start: datetime, minutes: int = 30, mode: str = "in-person",
             status: str = "free") -> dict:
        return self.create({"resourceType": "Slot", "schedule": {"reference": f"Schedule/{schedule}"},
                            "status": status, "start": iso(start), "end": iso(start + timedelta(minutes=minutes)),
                            "serviceType": [{"coding": [{"system": VISIT_MODE_SYSTEM, "code": mode}]}]})

    def read(self, path: str) -> dict:
        return self.http.get(f"{self.base}/{path}").json()

    def op(self, path: str, params: list[dict] | dict | None = None) -> requests.Response:
        body = params if isinstance(params, dict) else {"resourceType": "Parameters", "parameter": params or []}
        return self.http.post(f"{self.base}/{path}", json=body, headers={"Content-Type": FHIR_JSON})


def appointment(patient: str, *slots: dict, status: str = "booked", **extra) -> dict:
    body = {"resourceType": "Appointment", "status": status,
            "participant": [{"actor": {"reference": f"Patient/{patient}"}, "status": "accepted"}], **extra}
    if slots:
        body.update(start=slots[0]["start"], end=slots[-1]["end"],
                    slot=[{"reference": f"Slot/{s['id']}"} for s in slots])
    return body


def ref(name: str, value: str) -> dict:
    return {"name": name, "valueReference": {"reference": value}}


@pytest.fixture(scope="module")
def world(ferretdb, tmp_path_factory):
    proc = serve(ferretdb.uri, tmp_path_factory.mktemp("sched") / "server.log", FHIR_DB_NAME=DB, FHIR_JOBS="off",
                 FHIR_HOLD_MINUTES="10", FHIR_LATE_CANCEL_HOURS="24")
    w = World(proc.base)
    w.db = MongoClient(ferretdb.uri)[DB]
    w.store = Store(ferretdb.uri, DB)
    yield w
    w.store.close()
    proc.stop()


def slot_status(w: World, slot: dict) -> str:
    return w.read(f"Slot/{slot['id']}")["status"]


def claim_owner(w: World, slot: dict) -> str | None:
    found = w.db[CLAIMS].find_one({"_id": f"Slot/{slot['id']}"})
    return found["owner"] if found else None


def outcome_of(r: requests.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["resourceType"] == "OperationOutcome", body
    return body


# -- invariants on the plain REST write paths ----------------------------------------------------------------------
def test_post_booked_claims_and_busies_the_slot_and_a_second_is_409(world):
    w = world
    s = w.slot(w.schedule(), soon(10))
    pid = w.patient()
    first = w.create(appointment(pid, s))
    assert slot_status(w, s) == "busy"
    assert claim_owner(w, s) == f"Appointment/{first['id']}"
    r = post(w.base, "Appointment", appointment(w.patient(), s))
    assert "already taken" in outcome_of(r, 409)["issue"][0]["diagnostics"]
    assert slot_status(w, s) == "busy"
    assert w.db.Appointment.count_documents({"idx.slot": f"Slot/{s['id']}", "del": False}) == 1


def test_put_booked_and_patch_cancel_frees_the_slot(world):
    w = world
    s = w.slot(w.schedule(), soon(11))
    aid = str(uuid.uuid4())
    r = put(w.base, f"Appointment/{aid}", {**appointment(w.patient(), s), "id": aid})
    assert r.status_code == 201, r.text
    assert slot_status(w, s) == "busy" and claim_owner(w, s) == f"Appointment/{aid}"
    patch = [{"op": "replace", "path": "/status", "value": "cancelled"},
             {"op": "add", "path": "/cancelationReason", "value": {"text": "patient"}}]
    r = w.http.patch(f"{w.base}/Appointment/{aid}", json=patch, headers={"Content-Type": "application/json-patch+json"})
    assert r.status_code == 200, r.text
    assert slot_status(w, s) == "free" and claim_owner(w, s) is None
    # cancelled is final: booking it again by PATCH is an invalid transition
    r = w.http.patch(f"{w.base}/Appointment/{aid}", json=[{"op": "replace", "path": "/status", "value": "booked"}],
                     headers={"Content-Type": "application/json-patch+json"})
    assert "cannot move from status 'cancelled' to 'booked'" in outcome_of(r, 409)["issue"][0]["diagnostics"]
    assert slot_status(w, s) == "free"


def test_put_moving_a_booked_appointment_moves_its_claim(world):
    w = world
    sched = w.schedule()
    s1, s2 = w.slot(sched, soon(12)), w.slot(sched, soon(13))
    appt = w.create(appointment(w.patient(), s1))
    moved = {**appt, "start": s2["start"], "end": s2["end"], "slot": [{"reference": f"Slot/{s2['id']}"}]}
    assert put(w.base, f"Appointment/{appt['id']}", moved).status_code == 200
    assert (slot_status(w, s1), slot_status(w, s2)) == ("free", "busy")
    assert claim_owner(w, s1) is None and claim_owner(w, s2) == f"Appointment/{appt['id']}"


def test_times_must_agree_with_slots_and_slots_must_exist(world):
    w = world
    s = w.slot(w.schedule(), soon(14))
    bad = appointment(w.patient(), s)
    bad["end"] = iso(soon(15))
    outcome_of(post(w.base, "Appointment", bad), 422)
    missing = appointment(w.patient(), s)
    missing["slot"] = [{"reference": "Slot/nope"}]
    assert "does not exist" in outcome_of(post(w.base, "Appointment", missing), 422)["issue"][0]["diagnostics"]
    assert slot_status(w, s) == "free" and claim_owner(w, s) is None


def test_slot_writes_respect_claims(world):
    w = world
    s = w.slot(w.schedule(), soon(15))
    # busy only through an appointment
    outcome_of(put(w.base, f"Slot/{s['id']}", {**s, "status": "busy"}), 422)
    assert post(w.base, "Slot", {**s, "id": None, "status": "busy"}).status_code == 422
    outcome_of(put(w.base, f"Slot/{s['id']}", {**s, "end": s["start"]}), 422)
    w.create(appointment(w.patient(), s))
    current = w.read(f"Slot/{s['id']}")
    outcome_of(put(w.base, f"Slot/{s['id']}", {**current, "status": "free"}), 409)
    outcome_of(put(w.base, f"Slot/{s['id']}", {**current, "start": iso(soon(15, days=2)),
                                                 "end": iso(soon(15.5, days=2))}), 409)
    outcome_of(w.http.delete(f"{w.base}/Slot/{s['id']}"), 409)
    # a comment on a booked slot is fine; blocking a free slot is fine
    assert put(w.base, f"Slot/{s['id']}", {**current, "comment": "room 4"}).status_code == 200
    free = w.slot(w.schedule(), soon(16))
    assert put(w.base, f"Slot/{free['id']}", {**free, "status": "busy-unavailable"}).status_code == 200
    outcome_of(post(w.base, "Appointment", appointment(w.patient(), {**free, "status": "busy-unavailable"})), 409)


def test_delete_booked_appointment_frees_slot(world):
    w = world
    s = w.slot(w.schedule(), soon(17))
    appt = w.create(appointment(w.patient(), s))
    assert w.http.delete(f"{w.base}/Appointment/{appt['id']}").status_code == 204
    assert slot_status(w, s) == "free" and claim_owner(w, s) is None
    assert w.http.delete(f"{w.base}/Slot/{s['id']}").status_code == 204


def _tx(*entries: dict) -> dict:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def test_transaction_books_atomically_and_refuses_double_booking(world):
    w = world
    sched = w.schedule()
    s1, s2 = w.slot(sched, soon(18)), w.slot(sched, soon(19))
    p = w.patient()
    # two appointments on one slot in one transaction: 409, nothing written
    r = post(w.base, "", _tx({"request": {"method": "POST", "url": "Appointment"}, "resource": appointment(p, s1)},
                             {"request": {"method": "POST", "url": "Appointment"}, "resource": appointment(p, s1)}))
    outcome_of(r, 409)
    assert slot_status(w, s1) == "free" and claim_owner(w, s1) is None
    # one on s1 and another on s2 (taken already by a plain POST): all-or-nothing
    w.create(appointment(w.patient(), s2))
    r = post(w.base, "", _tx({"request": {"method": "POST", "url": "Appointment"}, "resource": appointment(p, s1)},
                             {"request": {"method": "POST", "url": "Appointment"}, "resource": appointment(p, s2)}))
    outcome_of(r, 409)
    assert slot_status(w, s1) == "free" and claim_owner(w, s1) is None
    # a transaction that books and also writes the slot as busy itself is consistent
    r = post(w.base, "", _tx({"request": {"method": "POST", "url": "Appointment"}, "resource": appointment(p, s1)},
                             {"request": {"method": "PUT", "url": f"Slot/{s1['id']}"},
                              "resource": {**s1, "status": "busy", "comment": "booked by tx"}}))
    assert r.status_code == 200, r.text
    assert w.read(f"Slot/{s1['id']}")["comment"] == "booked by tx" and slot_status(w, s1) == "busy"
    # ...but not one that books and frees the same slot
    s3 = w.slot(sched, soon(20))
    r = post(w.base, "", _tx({"request": {"method": "POST", "url": "Appointment"}, "resource": appointment(p, s3)},
                             {"request": {"method": "PUT", "url": f"Slot/{s3['id']}"}, "resource": s3}))
    outcome_of(r, 409)
    # a transaction PATCH cancelling frees the slot
    owner = claim_owner(w, s1).split("/")[1]
    fp = {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Appointment.status"},
        {"name": "value", "valueCode": "cancelled"}]}]}
    r = post(w.base, "", _tx({"request": {"method": "PATCH", "url": f"Appointment/{owner}"}, "resource": fp}))
    assert r.status_code == 200, r.text
    assert slot_status(w, s1) == "free" and claim_owner(w, s1) is None
    # one transaction hands a slot from one appointment to another (cancel A, book B): B holds it after
    a = w.create(appointment(w.patient(), s1))
    cancelled = {**a, "status": "cancelled", "cancelationReason": {"text": "swap"}}
    b_appt = appointment(w.patient(), s1)
    r = post(w.base, "", _tx({"request": {"method": "POST", "url": "Appointment"}, "resource": b_appt},
                             {"request": {"method": "PUT", "url": f"Appointment/{a['id']}"}, "resource": cancelled}))
    assert r.status_code == 200, r.text
    b_id = r.json()["entry"][0]["resource"]["id"]
    assert claim_owner(w, s1) == f"Appointment/{b_id}" and slot_status(w, s1) == "busy"


def test_status_transitions(world):
    w = world
    s = w.slot(w.schedule(), soon(21))
    appt = w.create(appointment(w.patient(), s))
    for status, code in (("proposed", 409), ("pending", 409), ("arrived", 200), ("booked", 409), ("fulfilled", 200),
                         ("cancelled", 409), ("entered-in-error", 200), ("booked", 409)):
        current = w.read(f"Appointment/{appt['id']}")
        r = put(w.base, f"Appointment/{appt['id']}", {**current, "status": status})
        assert r.status_code == code, (status, r.text)
    # fulfilled kept the slot; entered-in-error gave it back
    assert slot_status(w, s) == "free" and claim_owner(w, s) is None


# -- operations ----------------------------------------------------------------------------------------------------
def test_find_filters_sorting_and_paging(world):
    w = world
    prac = w.create({"resourceType": "Practitioner", "name": [{"family": "Finder"}]})["id"]
    loc = w.create({"resourceType": "Location", "name": "Clinic"})["id"]
    sched = w.schedule(f"Practitioner/{prac}", f"Location/{loc}", specialty="394814009")
    day = soon(0, days=3).replace(hour=9, minute=0)
    slots = [w.slot(sched, day + timedelta(minutes=30 * n), mode=("video" if n % 2 else "in-person"))
             for n in (3, 1, 0, 2, 4)]
    other = w.slot(w.schedule(), day + timedelta(minutes=15), mode="video")
    taken = w.slot(sched, day + timedelta(minutes=300), mode="video")
    w.create(appointment(w.patient(), taken))
    date = day.strftime("%Y-%m-%d")

    def run(*extra: dict, count: int | None = None) -> dict:
        params = [{"name": "start", "valueDate": date}, {"name": "end", "valueDate": date}, *extra]
        if count:
            params.append({"name": "_count", "valueInteger": count})
        r = w.op("Appointment/$find", params)
        assert r.status_code == 200, r.text
        return r.json()

    mine = ref("practitioner", f"Practitioner/{prac}")
    got = run(mine)
    starts = [e["resource"]["start"] for e in got["entry"]]
    assert got["total"] == 5 and starts == sorted(starts)
    assert all(e["resource"]["status"] == "proposed" for e in got["entry"])
    assert {p["actor"]["reference"] for p in got["entry"][0]["resource"]["participant"]} == {
        f"Practitioner/{prac}", f"Location/{loc}"}
    video = run(mine, {"name": "visit-mode", "valueCode": "video"})
    assert video["total"] == 2
    everyone_video = run({"name": "visit-mode", "valueCode": "video"})
    assert f"Slot/{other['id']}" in {e["resource"]["slot"][0]["reference"] for e in everyone_video["entry"]}
    assert f"Slot/{taken['id']}" not in {e["resource"]["slot"][0]["reference"] for e in everyone_video["entry"]}
    assert run(ref("location-reference", f"Location/{loc}"))["total"] == 5
    assert run({"name": "specialty", "valueString": "http://snomed.info/sct|394814009"})["total"] == 5
    assert run(mine, ref("location-reference", "Location/elsewhere"))["total"] == 0
    # paging: 2 per page, following next links (GET) gives all 5 in order, no repeats
    page = run(mine, count=2)
    seen = [e["resource"]["slot"][0]["reference"] for e in page["entry"]]
    while nxt := [link["url"] for link in page["link"] if link["relation"] == "next"]:
        page = w.http.get(nxt[0]).json()
        seen += [e["resource"]["slot"][0]["reference"] for e in page["entry"]]
    assert seen == [e["resource"]["slot"][0]["reference"] for e in got["entry"]]
    # the patient filter leaves out slots overlapping that patient's own booked appointment
    p = w.patient()
    w.create(appointment(p, slots[2]))  # slot n=0
    assert run(mine, ref("patient-reference", f"Patient/{p}"))["total"] == 4
    video_for_p = run({"name": "visit-mode", "valueCode": "video"}, ref("patient-reference", f"Patient/{p}"))
    # another practitioner's 09:15 slot starts during p's 09:00-09:30 appointment: not offered to p
    assert f"Slot/{other['id']}" not in {e["resource"]["slot"][0]["reference"] for e in video_for_p["entry"]}
    assert video_for_p["total"] == everyone_video["total"] - 1
    # GET works too (Argonaut)
    r = w.http.get(f"{w.base}/Appointment/$find",
                   params={"start": date, "end": date, "practitioner": f"Practitioner/{prac}"})
    assert r.status_code == 200 and r.json()["total"] == 4


def test_find_errors(world):
    w = world
    outcome_of(w.op("Appointment/$find", [{"name": "end", "valueDate": "2026-12-01"}]), 400)
    outcome_of(w.op("Appointment/$find", [{"name": "start", "valueString": "soon"},
                                          {"name": "end", "valueDate": "2026-12-01"}]), 400)
    outcome_of(w.op("Appointment/$find", [{"name": "start", "valueDate": "2026-12-02"},
                                          {"name": "end", "valueDate": "2026-12-01"}]), 400)
    outcome_of(w.op("Appointment/$find", [{"name": "start", "valueDate": "2026-12-01"},
                                          {"name": "end", "valueDate": "2026-12-01"},
                                          {"name": "visit-mode", "valueCode": "telepathy"}]), 400)
    outcome_of(w.op("Appointment/$find", {"resourceType": "Patient"}), 400)


def test_hold_then_book_with_video_link(world):
    w = world
    sched = w.schedule()
    s = w.slot(sched, soon(9, days=2), mode="video")
    p = w.patient()
    proposed = w.op("Appointment/$find", [{"name": "start", "valueDateTime": s["start"]},
                                          {"name": "end", "valueDateTime": s["start"]},
                                          {"name": "visit-mode", "valueCode": "video"},
                                          ref("patient-reference", f"Patient/{p}")]).json()["entry"][0]["resource"]
    r = w.op("Appointment/$hold", [{"name": "appointment-resource", "resource": proposed}])
    assert r.status_code == 201, r.text
    assert "Expires" in r.headers
    held = r.json()["entry"][0]["resource"]
    assert held["status"] == "pending" and any(e["url"] == HOLD_EXPIRES for e in held["extension"])
    assert slot_status(w, s) == "busy-tentative" and claim_owner(w, s) == f"Appointment/{held['id']}"
    # someone else can neither hold nor book it while held
    outcome_of(w.op("Appointment/$hold", [{"name": "appointment-resource", "resource": {
        **proposed, "participant": [{"actor": {"reference": f"Patient/{w.patient()}"}, "status": "needs-action"}]}}]),
        409)
    outcome_of(w.op("Appointment/$book", {**proposed, "participant": [
        {"actor": {"reference": f"Patient/{w.patient()}"}, "status": "needs-action"}]}), 409)
    r = w.op(f"Appointment/{held['id']}/$book")
    assert r.status_code == 200, r.text
    booked = r.json()["entry"][0]["resource"]
    assert booked["status"] == "booked" and booked["id"] == held["id"]
    assert {p["status"] for p in booked["participant"]} == {"accepted"}
    assert any(e["url"] == JOIN_LINK and e["valueUrl"].startswith("http") for e in booked["extension"])
    assert not any(e["url"] == HOLD_EXPIRES for e in booked["extension"])
    assert slot_status(w, s) == "busy"
    assert w.db[CLAIMS].find_one({"_id": f"Slot/{s['id']}"})["until"] is None
    outcome_of(w.op(f"Appointment/{held['id']}/$book"), 409)  # booked already


def test_book_errors(world):
    w = world
    s = w.slot(w.schedule(), soon(9, days=4))
    outcome_of(w.op("Appointment/$book", []), 400)
    outcome_of(w.op("Appointment/$book", [ref("appointment-reference", "Appointment/missing")]), 404)
    no_patient = appointment(w.patient(), s)
    no_patient["participant"] = [{"actor": {"reference": "Practitioner/x"}, "status": "accepted"}]
    outcome_of(w.op("Appointment/$book", [{"name": "appointment-resource", "resource": no_patient}]), 422)
    no_slot = {k: v for k, v in appointment(w.patient(), s).items() if k != "slot"}
    outcome_of(w.op("Appointment/$book", [{"name": "appointment-resource", "resource": no_slot}]), 422)
    outcome_of(w.op("Appointment/$hold", [{"name": "appointment-resource", "resource": no_slot}]), 422)
    outcome_of(w.op("Appointment/$book", [{"name": "appointment-resource", "resource": {"resourceType": "Patient"}}]),
               400)
    # patient-reference adds the patient to a proposed appointment
    r = w.op("Appointment/$book", [{"name": "appointment-resource", "resource": no_patient},
                                   ref("patient-reference", f"Patient/{w.patient()}")])
    assert r.status_code == 201, r.text
    assert slot_status(w, s) == "busy"


def test_reschedule_keeps_identity_and_history(world):
    w = world
    sched = w.schedule()
    s1, s2, s3 = w.slot(sched, soon(10, days=5)), w.slot(sched, soon(11, days=5)), w.slot(sched, soon(12, days=5))
    appt = w.create(appointment(w.patient(), s1))
    w.create(appointment(w.patient(), s3))
    r = w.op(f"Appointment/{appt['id']}/$reschedule", [ref("slot", f"Slot/{s2['id']}")])
    assert r.status_code == 200, r.text
    moved = r.json()
    assert moved["id"] == appt["id"] and moved["meta"]["versionId"] == "2" and moved["start"] == s2["start"]
    assert (slot_status(w, s1), slot_status(w, s2)) == ("free", "busy")
    history = w.read(f"Appointment/{appt['id']}/_history")
    assert [e["resource"]["slot"][0]["reference"] for e in history["entry"]] == [f"Slot/{s2['id']}",
                                                                                  f"Slot/{s1['id']}"]
    # to a taken slot: 409 and nothing changes
    outcome_of(w.op(f"Appointment/{appt['id']}/$reschedule", [ref("slot", f"Slot/{s3['id']}")]), 409)
    assert (slot_status(w, s2), claim_owner(w, s2)) == ("busy", f"Appointment/{appt['id']}")
    outcome_of(w.op(f"Appointment/{appt['id']}/$reschedule", []), 400)
    outcome_of(w.op(f"Appointment/{appt['id']}/$reschedule", [ref("slot", "Slot/nope")]), 422)
    outcome_of(w.op("Appointment/missing/$reschedule", [ref("slot", f"Slot/{s1['id']}")]), 404)


def test_cancel_late_and_early_and_noshow(world):
    w = world
    sched = w.schedule()
    late_slot, early_slot = w.slot(sched, soon(3, days=0)), w.slot(sched, soon(10, days=6))
    late = w.create(appointment(w.patient(), late_slot))
    early = w.create(appointment(w.patient(), early_slot))
    outcome_of(w.op(f"Appointment/{late['id']}/$cancel", []), 400)
    r = w.op(f"Appointment/{late['id']}/$cancel", [{"name": "reason", "valueString": "feeling better"}])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "cancelled" and body["cancelationReason"] == {"text": "feeling better"}
    assert {"url": LATE_CANCELLATION, "valueBoolean": True} in body["extension"]
    assert slot_status(w, late_slot) == "free"
    outcome_of(w.op(f"Appointment/{late['id']}/$cancel", [{"name": "reason", "valueString": "again"}]), 409)
    r = w.op(f"Appointment/{early['id']}/$cancel", [{"name": "reason", "valueCodeableConcept": {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/appointment-cancellation-reason",
                    "code": "pat"}]}}])
    assert r.status_code == 200 and "extension" not in r.json()
    assert r.json()["cancelationReason"]["coding"][0]["code"] == "pat"
    # no-show: booked -> noshow keeps the slot; a cancelled one cannot be a no-show
    s = w.slot(sched, soon(11, days=6))
    appt = w.create(appointment(w.patient(), s))
    assert w.op(f"Appointment/{appt['id']}/$noshow").json()["status"] == "noshow"
    assert slot_status(w, s) == "busy"
    outcome_of(w.op(f"Appointment/{late['id']}/$noshow"), 409)


def test_expired_hold_is_taken_over_and_expire_holds_frees_slots(world):
    w = world
    sched = w.schedule()
    s1, s2 = w.slot(sched, soon(13, days=6)), w.slot(sched, soon(14, days=6))
    past = iso(datetime.now(UTC) - timedelta(minutes=1))
    expired = {"url": HOLD_EXPIRES, "valueInstant": past}
    # a hold that ended a minute ago, written by PUT
    h1 = w.create(appointment(w.patient(), s1, status="pending", extension=[expired]))
    h2 = w.create(appointment(w.patient(), s2, status="pending", extension=[expired]))
    assert slot_status(w, s1) == "busy-tentative"
    # another patient books s1: takes the hold over, the old hold is cancelled in the same commit
    r = w.op("Appointment/$book", [{"name": "appointment-resource", "resource": appointment(w.patient(), s1)}])
    assert r.status_code == 201, r.text
    assert claim_owner(w, s1) == f"Appointment/{r.json()['entry'][0]['resource']['id']}"
    assert w.read(f"Appointment/{h1['id']}")["status"] == "cancelled"
    assert slot_status(w, s1) == "busy"
    freed: list[list[str]] = []
    from fhirserver.resources import scheduling

    listener = scheduling.on_slot_freed(lambda store, ids: freed.append(ids))
    try:
        assert s2["id"] in hold.expire_holds(w.store)
    finally:
        scheduling.remove_slot_listener(listener)
    assert [s2["id"]] in freed
    assert w.read(f"Appointment/{h2['id']}")["status"] == "cancelled"
    assert slot_status(w, s2) == "free" and claim_owner(w, s2) is None
    assert hold.expire_holds(w.store) == []


# -- access ----------------------------------------------------------------------------------------------------------
def test_access_patients_act_for_themselves_and_their_proxies(world):
    w = world
    store, base = w.store, w.base
    alice, bob, kid = w.patient("Alice"), w.patient("Bob"), w.patient("Kid")
    sched = w.schedule()
    s1, s2, s3 = w.slot(sched, soon(9, days=7)), w.slot(sched, soon(10, days=7)), w.slot(sched, soon(11, days=7))
    as_alice = Guard(Access("portal", "user/Appointment.cruds user/Slot.rs user/Patient.rs", "authorization_code",
                            user_id="alice", fhir_user=f"Patient/{alice}", proxied_patients=(alice, kid)))
    slots_only = Guard(Access("portal", "user/Slot.rs", "authorization_code", user_id="alice",
                              fhir_user=f"Patient/{alice}", proxied_patients=(alice,)))
    doctor = Guard(Access("ehr", "user/*.cruds", "authorization_code", user_id="dr", fhir_user="Practitioner/dr"))

    def refused(fn, status: int = 403) -> None:
        with pytest.raises(FHIRError) as exc:
            fn()
        assert exc.value.status == status, exc.value

    params = [("appointment-resource", appointment(bob, s1))]
    refused(lambda: book.book(store, base, params, guard=as_alice))  # for someone else
    refused(lambda: book.book(store, base, [("appointment-resource", appointment(alice, s1))], guard=slots_only))
    assert claim_owner(w, s1) is None and slot_status(w, s1) == "free"
    mine = book.book(store, base, [("appointment-resource", appointment(alice, s1))], guard=as_alice).body
    kids = hold.hold(store, base, [("appointment-resource", appointment(kid, s2))], 10, guard=as_alice).body
    mine_id, kids_id = mine["entry"][0]["resource"]["id"], kids["entry"][0]["resource"]["id"]
    bobs = w.create(appointment(bob, s3))
    # bob's appointment is out of reach (404 so its existence does not leak) for every change
    refused(lambda: book.cancel(store, base, bobs["id"], [("reason", "x")], 24, guard=as_alice), 404)
    refused(lambda: book.reschedule(store, base, bobs["id"], [("slot", f"Slot/{s2['id']}")], guard=as_alice), 404)
    refused(lambda: book.book(store, base, [], bobs["id"], guard=as_alice), 404)
    # a patient cannot mark a no-show; a clinician can
    refused(lambda: book.noshow(store, base, mine_id, guard=as_alice))
    book.book(store, base, [], kids_id, guard=as_alice)
    assert book.noshow(store, base, kids_id, guard=doctor).stored.text.count('"noshow"') == 1
    # $find never shows other patients' appointments: only free slots, and the patient filter needs reach
    date = s1["start"][:10]
    out = find.find(store, base, [("start", date), ("end", date)], 50, 100, guard=as_alice).body
    refs = {e["resource"]["slot"][0]["reference"] for e in out.get("entry", [])}
    assert not refs & {f"Slot/{s['id']}" for s in (s1, s2, s3)}
    assert all(f"Patient/{bob}" not in str(e) for e in out.get("entry", []))
    refused(lambda: find.find(store, base, [("start", date), ("end", date), ("patient-reference", f"Patient/{bob}")],
                              50, 100, guard=as_alice), 404)
    no_slots = Guard(Access("portal", "user/Appointment.cruds", "authorization_code", user_id="alice",
                            fhir_user=f"Patient/{alice}", proxied_patients=(alice,)))
    refused(lambda: find.find(store, base, [("start", date), ("end", date)], 50, 100, guard=no_slots))
    assert book.cancel(store, base, mine_id, [("reason", "x")], 24, guard=as_alice).status == 200


def test_access_over_http_with_a_patient_token(ferretdb, tmp_path):
    """With FHIR_AUTH=on: a signed-in patient books for themselves and the child they are a proxy for, never for
    another patient (403), cannot touch another's appointment (404) nor mark a no-show (403); no token is 401."""
    from tests.smart_helpers import Browser, bearer, create, new_app, new_backend, new_user

    db_name = "fhirschedauth"
    client: MongoClient = MongoClient(ferretdb.uri)
    client.drop_database(db_name)
    db = client[db_name]
    server = serve(ferretdb.uri, tmp_path / "server.log", FHIR_AUTH="on", FHIR_DB_NAME=db_name, FHIR_JOBS="off",
                   FHIR_SECRET_KEY="sched-access-test-secret-key-0123456789")
    try:
        system = new_backend(server, db, "system/*.cruds", client_id="sched-system")
        admin = system.fetch("system/*.cruds")["access_token"]
        mum, kid, other = (create(server, admin, {"resourceType": "Patient", "name": [{"family": f}]})
                           for f in ("Mum", "Kid", "Other"))
        create(server, admin, {"resourceType": "RelatedPerson", "patient": {"reference": f"Patient/{kid}"},
                               "active": True, "identifier": [{"system": "urn:fhirserver:user", "value": "mum"}]})
        prac = create(server, admin, {"resourceType": "Practitioner"})
        sched = create(server, admin, {"resourceType": "Schedule", "actor": [{"reference": f"Practitioner/{prac}"}]})
        start = soon(9, days=8)
        slots = []
        for n in range(4):
            t = start + timedelta(minutes=30 * n)
            sid = create(server, admin, {"resourceType": "Slot", "schedule": {"reference": f"Schedule/{sched}"},
                                         "status": "free", "start": iso(t), "end": iso(t + timedelta(minutes=30))})
            slots.append({"id": sid, "start": iso(t), "end": iso(t + timedelta(minutes=30))})
        new_user(db, "mum", f"Patient/{mum}", display="Mary Mum")
        scope = "openid fhirUser user/Appointment.cruds user/Slot.rs user/Patient.rs"
        token = new_app(server, db, scope=scope).launch(Browser(server.url), "mum", scope)
        headers = {**bearer(token["access_token"]), "Content-Type": FHIR_JSON}

        def op(path: str, params: list[dict], auth: dict | None = headers) -> requests.Response:
            return requests.post(f"{server.base}/{path}", json={"resourceType": "Parameters", "parameter": params},
                                 headers=auth or {"Content-Type": FHIR_JSON}, timeout=30)

        def book_for(patient: str, slot: dict) -> requests.Response:
            return op("Appointment/$book", [{"name": "appointment-resource", "resource": appointment(patient, slot)}])

        date = slots[0]["start"][:10]
        found = op("Appointment/$find", [{"name": "start", "valueDate": date}, {"name": "end", "valueDate": date}])
        assert found.status_code == 200 and found.json()["total"] == 4
        assert op("Appointment/$find", [{"name": "start", "valueDate": date}, {"name": "end", "valueDate": date}],
                  auth=None).status_code == 401
        first = book_for(mum, slots[0])
        assert first.status_code == 201, first.text
        assert book_for(kid, slots[1]).status_code == 201
        outcome_of(book_for(other, slots[2]), 403)
        others = create(server, admin, appointment(other, slots[3]))
        outcome_of(op(f"Appointment/{others}/$cancel", [{"name": "reason", "valueString": "x"}]), 404)
        mine = book_for(mum, slots[2]).json()["entry"][0]["resource"]["id"]
        outcome_of(op(f"Appointment/{mine}/$noshow", []), 403)
        assert op(f"Appointment/{mine}/$cancel", [{"name": "reason", "valueString": "x"}]).status_code == 200
    finally:
        server.stop()
        client.close()


def test_hold_a_stored_proposed_appointment(world):
    w = world
    s = w.slot(w.schedule(), soon(15, days=9))
    proposed = w.create(appointment(w.patient(), status="proposed", slot=[{"reference": f"Slot/{s['id']}"}]))
    assert slot_status(w, s) == "free"  # a proposed appointment holds nothing
    r = w.op(f"Appointment/{proposed['id']}/$hold")
    assert r.status_code == 200, r.text
    assert r.json()["entry"][0]["resource"]["status"] == "pending" and slot_status(w, s) == "busy-tentative"
    outcome_of(w.op(f"Appointment/{proposed['id']}/$hold"), 409)  # pending already
    outcome_of(w.op("Appointment/$hold", [ref("appointment-reference", "Appointment/missing")]), 404)
    outcome_of(w.op("Appointment/$hold", []), 400)


class _Killed(Exception):
    pass


def test_commit_claims_are_all_or_nothing(ferretdb):
    """The store's generic claims: a taken key fails the whole commit; a commit that dies before its decision is
    rolled back by recovery (its claims deleted, a replaced claim put back); a decided one is rolled forward (its
    releases done); recovery never undoes a commit its owner finished meanwhile."""
    from fhirserver.store.commit import Claim, ClaimTaken, Release, Version, now

    store = Store(ferretdb.uri, f"claims{uuid.uuid4().hex[:8]}")
    committer, db = store.committer, store.db

    def version(rid: str, n: int = 1) -> Version:
        return Version("Basic", rid, n, now(), f'{{"resourceType":"Basic","id":"{rid}"}}', "PUT")

    committer.commit([version("a")], [Claim("keys", "k1", {"owner": "a"})])
    first = db.keys.find_one({"_id": "k1"})
    assert first["owner"] == "a"
    with pytest.raises(ClaimTaken):
        committer.commit([version("b")], [Claim("keys", "k2", {"owner": "b"}), Claim("keys", "k1", {"owner": "b"})])
    assert db.history.find_one({"_id": "Basic/b/1"}) is None and db.keys.find_one({"_id": "k2"}) is None
    assert db.commits.count_documents({}) == 0

    # killed after its claims, before its decision: recovery rolls back and puts the replaced claim back
    def die(*args, **kwargs):
        raise _Killed

    committer._decide = die
    with pytest.raises(_Killed):
        committer.commit([version("c"), version("a", 2)], [Claim("keys", "k3", {"owner": "c"}),
                                                          Claim("keys", "k1", {"owner": "c"}, replaced=first)])
    assert db.keys.find_one({"_id": "k1"})["owner"] == "c"
    del committer._decide
    assert committer.recover(all_stale=True)["rolled-back"] == 1
    assert db.keys.find_one({"_id": "k1"}) == first and db.keys.find_one({"_id": "k3"}) is None
    assert db.history.find_one({"_id": "Basic/c/1"}) is None and db.Basic.find_one({"_id": "c"}) is None

    # killed after its decision: recovery rolls forward, releases included
    committer._apply = die
    with pytest.raises(_Killed):
        committer.commit([version("a", 2)], [Claim("keys", "k4", {"owner": "a"})],
                         [Release("keys", "k1", first["c"])])
    del committer._apply
    assert committer.recover(all_stale=True)["rolled-forward"] == 1
    assert db.keys.find_one({"_id": "k1"}) is None and db.keys.find_one({"_id": "k4"})["owner"] == "a"
    assert db.Basic.find_one({"_id": "a"})["v"] == 2

    # a commit record read by recovery whose owner then finished is left alone
    committer.commit([version("d"), version("e")], [Claim("keys", "k5", {"owner": "d"})])
    ghost = {"_id": "gone", "ts": now(), "solo": False, "keys": ["Basic/d/1", "Basic/e/1"],
             "entries": [version("d").entry(), version("e").entry()], "claims": [
                 {"coll": "keys", "key": "k5", "fields": {}, "replaced": None}], "releases": []}
    db.keys.update_one({"_id": "k5"}, {"$set": {"c": "gone"}})
    db.history.update_many({"_id": {"$in": ["Basic/d/1", "Basic/e/1"]}}, {"$set": {"c": "gone"}})
    assert committer.recover_one(ghost) == "finished"
    assert db.keys.find_one({"_id": "k5"}) is not None and db.history.find_one({"_id": "Basic/d/1"}) is not None
    assert db.decisions.count_documents({}) == 0
    store.close()

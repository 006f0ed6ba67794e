"""Racing bookings on a real server with two worker processes: 64 clients book one slot at once, 100 rounds, exactly
one wins each round; holds race bookings; holds expire while bookings and the expiry job run. Afterwards the
database is consistent: no slot is in two occupying appointments, no slot is busy without its appointment."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import requests
from pymongo import MongoClient

from fhirserver import fhirjson
from fhirserver.operations import hold as hold_op
from fhirserver.resources.scheduling import CLAIMS, HOLD_EXPIRES, OCCUPYING, slot_ids
from fhirserver.store.database import Store
from tests.fhir import FHIR_JSON
from tests.servers import serve
from tests.test_scheduling import World, appointment, soon

DB = "fhirschedrace"
CLIENTS = 64
ROUNDS = int(os.environ.get("SCHED_RACE_ROUNDS", "100"))


def check_consistent(db) -> dict[str, int]:
    """Every invariant between Appointments, Slots and slot claims, over the whole database; counts by state."""
    occupying: dict[str, list[tuple[str, str]]] = {}
    for doc in db.Appointment.find({"del": False}, {"text": 1}):
        appt = fhirjson.loads(doc["text"])
        if appt["status"] in OCCUPYING:
            for sid in slot_ids(appt):
                occupying.setdefault(sid, []).append((appt["id"], appt["status"]))
    claims = {c["_id"].split("/", 1)[1]: c for c in db[CLAIMS].find({})}
    counts = {"busy": 0, "busy-tentative": 0, "free": 0}
    for doc in db.Slot.find({"del": False}, {"text": 1}):
        slot = fhirjson.loads(doc["text"])
        sid, status = slot["id"], slot["status"]
        owners = occupying.get(sid, [])
        live = [o for o in owners if o[1] != "pending" or
                claims.get(sid, {}).get("owner") == f"Appointment/{o[0]}"]
        assert len(live) <= 1, f"Slot/{sid} is in several appointments: {owners}"
        if status in ("busy", "busy-tentative"):
            assert sid in claims, f"Slot/{sid} is {status} without a claim"
            owner = claims[sid]["owner"]
            assert (owner.split("/")[1], "pending" if status == "busy-tentative" else None) in [
                (a, "pending" if s == "pending" else None) for a, s in owners], \
                f"Slot/{sid} is {status} but its owner {owner} is not an occupying appointment on it: {owners}"
        else:
            assert sid not in claims, f"Slot/{sid} is {status} but claimed by {claims[sid]['owner']}"
            assert not [o for o in owners if o[1] != "pending"], f"free Slot/{sid} is booked by {owners}"
        counts[status] = counts.get(status, 0) + 1
    return counts


@pytest.fixture(scope="module")
def race(ferretdb, tmp_path_factory):
    proc = serve(ferretdb.uri, tmp_path_factory.mktemp("sched-race") / "server.log", FHIR_DB_NAME=DB,
                 FHIR_WORKERS="2", FHIR_THREADS="16", FHIR_JOBS="off")
    w = World(proc.base)
    w.db = MongoClient(ferretdb.uri)[DB]
    w.store = Store(ferretdb.uri, DB)
    w.patients = [w.patient(f"Racer{n}") for n in range(CLIENTS)]
    yield w
    w.store.close()
    proc.stop()


class Clients:
    """CLIENTS keep-alive sessions, one per pool thread, firing together behind a barrier."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.local = threading.local()
        self.pool = ThreadPoolExecutor(CLIENTS)

    def session(self) -> requests.Session:
        if not hasattr(self.local, "s"):
            self.local.s = requests.Session()
            self.local.s.headers.update({"Content-Type": FHIR_JSON})
        return self.local.s

    def fire(self, requests_: list[tuple[str, dict]]) -> list[requests.Response]:
        barrier = threading.Barrier(len(requests_))

        def one(item: tuple[str, dict]) -> requests.Response:
            path, body = item
            s = self.session()
            barrier.wait()
            return s.post(f"{self.base}/{path}", json=body, timeout=120)

        return list(self.pool.map(one, requests_))


def _book(patient: str, slot: dict) -> tuple[str, dict]:
    return "Appointment/$book", {"resourceType": "Parameters", "parameter": [
        {"name": "appointment-resource", "resource": appointment(patient, slot)}]}


def _hold(patient: str, slot: dict) -> tuple[str, dict]:
    return "Appointment/$hold", {"resourceType": "Parameters", "parameter": [
        {"name": "appointment-resource", "resource": appointment(patient, slot, status="proposed")}]}


def test_64_clients_book_one_slot_100_rounds(race):
    w = race
    clients = Clients(w.base)
    sched = w.schedule()
    start = soon(0, days=30)
    codes: dict[int, int] = {}
    began = time.perf_counter()
    for rnd in range(ROUNDS):
        slot = w.slot(sched, start + timedelta(minutes=30 * rnd))
        responses = clients.fire([_book(p, slot) for p in w.patients])
        statuses = [r.status_code for r in responses]
        for s in statuses:
            codes[s] = codes.get(s, 0) + 1
        if statuses.count(201) != 1:
            hist = [(d["_id"], d.get("c"), d["ts"]) for d in w.db.history.find({"rid": slot["id"]})]
            print("DIAG", rnd, slot["id"], hist, list(w.db[CLAIMS].find({"_id": f"Slot/{slot['id']}"})),
                  [r.json() for r in responses if r.status_code == 201])
        assert statuses.count(201) == 1, f"round {rnd}: {sorted(statuses)}"
        assert statuses.count(409) == CLIENTS - 1, f"round {rnd}: {sorted(statuses)}"
        assert all(r.json()["resourceType"] == "OperationOutcome" for r in responses if r.status_code == 409)
        winner = next(r for r in responses if r.status_code == 201).json()["entry"][0]["resource"]["id"]
        assert w.db[CLAIMS].find_one({"_id": f"Slot/{slot['id']}"})["owner"] == f"Appointment/{winner}"
        assert w.read(f"Slot/{slot['id']}")["status"] == "busy"
    elapsed = time.perf_counter() - began
    total = ROUNDS * CLIENTS
    print(f"\n{ROUNDS} rounds x {CLIENTS} clients: {total / elapsed:.0f} booking requests/s, "
          f"{ROUNDS / elapsed:.1f} bookings/s, {(total - ROUNDS) / elapsed:.0f} conflicts/s, {codes}")
    counts = check_consistent(w.db)
    assert counts["busy"] >= ROUNDS
    clients.pool.shutdown()


def test_holds_race_bookings(race):
    w = race
    clients = Clients(w.base)
    sched = w.schedule()
    start = soon(0, days=40)
    for rnd in range(20):
        slot = w.slot(sched, start + timedelta(minutes=30 * rnd))
        reqs = [(_hold if n % 2 else _book)(p, slot) for n, p in enumerate(w.patients)]
        statuses = [r.status_code for r in clients.fire(reqs)]
        assert statuses.count(201) == 1 and statuses.count(409) == CLIENTS - 1, f"round {rnd}: {sorted(statuses)}"
        assert w.read(f"Slot/{slot['id']}")["status"] in ("busy", "busy-tentative")
    check_consistent(w.db)
    clients.pool.shutdown()


def test_hold_expiring_during_bookings(race):
    """A hold ends while its holder books it, others try to book it and the expiry job runs: one winner at most,
    consistent afterwards; the holder's late booking never steals the slot back from a takeover."""
    w = race
    clients = Clients(w.base)
    sched = w.schedule()
    start = soon(0, days=50)
    outcomes = {"holder": 0, "other": 0, "free": 0}
    for rnd in range(10):
        slot = w.slot(sched, start + timedelta(minutes=30 * rnd))
        until = datetime.now(UTC) + timedelta(seconds=1)
        held = w.create(appointment(w.patients[0], slot, status="pending",
                                    extension=[{"url": HOLD_EXPIRES, "valueInstant": until.isoformat()}]))
        assert w.read(f"Slot/{slot['id']}")["status"] == "busy-tentative"
        time.sleep(max(0.0, (until - datetime.now(UTC)).total_seconds() - 0.05 + 0.05 * (rnd % 3)))
        stop = threading.Event()

        def expire(stop: threading.Event = stop) -> None:
            while not stop.is_set():
                hold_op.expire_holds(w.store)

        expirer = threading.Thread(target=expire)
        expirer.start()
        reqs = [(f"Appointment/{held['id']}/$book", {"resourceType": "Parameters", "parameter": []})]
        reqs += [_book(p, slot) for p in w.patients[1:16]]
        statuses = [r.status_code for r in clients.fire(reqs)]
        stop.set()
        expirer.join()
        hold_op.expire_holds(w.store)  # the job's next run (a takeover that rolled back may restore an expired claim)
        assert statuses.count(201) + statuses.count(200) <= 1, statuses
        assert set(statuses) <= {200, 201, 409}, statuses
        holder = w.read(f"Appointment/{held['id']}")["status"]
        claim = w.db[CLAIMS].find_one({"_id": f"Slot/{slot['id']}"})
        if statuses[0] == 200:
            outcomes["holder"] += 1
            assert holder == "booked" and claim["owner"] == f"Appointment/{held['id']}"
        elif 201 in statuses:
            outcomes["other"] += 1
            assert holder == "cancelled" and claim["owner"] != f"Appointment/{held['id']}"
        else:
            outcomes["free"] += 1
            assert holder == "cancelled" and claim is None
        check_consistent(w.db)
    print(f"\nhold expiring during bookings: {outcomes}")
    clients.pool.shutdown()

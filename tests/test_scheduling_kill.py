"""Killing the server (SIGKILL) during a reschedule, 50 times at random points: after restart and recovery the patient
has either the old booking or the new one, never both and never neither, and every slot agrees with its claim."""

from __future__ import annotations

import random
import threading
import time
from datetime import timedelta

import requests
from pymongo import MongoClient

from fhirserver.resources.scheduling import CLAIMS
from tests.servers import serve
from tests.test_kill import _wait_recovered
from tests.test_scheduling import World, appointment, soon
from tests.test_scheduling_race import check_consistent

ROUNDS = 50
DB = "fhirschedkill"


def _reschedule(base: str, appointment_id: str, slot_id: str) -> None:
    try:
        requests.post(f"{base}/Appointment/{appointment_id}/$reschedule", timeout=30,
                      json={"resourceType": "Parameters",
                            "parameter": [{"name": "slot", "valueReference": {"reference": f"Slot/{slot_id}"}}]},
                      headers={"Content-Type": "application/fhir+json"})
    except requests.RequestException:
        pass


def test_kill_during_reschedule_old_or_new_never_both(ferretdb, tmp_path):
    env = {"FHIR_COMMIT_TIMEOUT": "1", "FHIR_DB_NAME": DB, "FHIR_JOBS": "off"}
    log = tmp_path / "server.log"
    server = serve(ferretdb.uri, log, **env)
    db = MongoClient(ferretdb.uri)[DB]
    rng = random.Random(20261129)
    outcomes = {"old": 0, "new": 0}
    try:
        w = World(server.base)
        sched, patient = w.schedule(), w.patient()
        start = soon(0, days=60)
        # how long one reschedule takes, to spread the kills over it
        a, b = w.slot(sched, start), w.slot(sched, start + timedelta(minutes=30))
        warm = w.create(appointment(patient, a))
        began = time.perf_counter()
        _reschedule(server.base, warm["id"], b["id"])
        duration = time.perf_counter() - began
        assert w.read(f"Appointment/{warm['id']}")["slot"] == [{"reference": f"Slot/{b['id']}"}]
        for rnd in range(ROUNDS):
            w = World(server.base)
            old = w.slot(sched, start + timedelta(hours=1 + rnd))
            new = w.slot(sched, start + timedelta(hours=1 + rnd, minutes=30))
            appt = w.create(appointment(patient, old))
            thread = threading.Thread(target=_reschedule, args=(server.base, appt["id"], new["id"]))
            thread.start()
            time.sleep(rng.uniform(0, duration * 1.2))
            server.kill()
            thread.join()
            server = serve(ferretdb.uri, log, **env)
            _wait_recovered(db)
            w = World(server.base)
            now = w.read(f"Appointment/{appt['id']}")
            assert now["status"] == "booked"
            owner = f"Appointment/{appt['id']}"
            claims = {key: (db[CLAIMS].find_one({"_id": f"Slot/{s['id']}"}) or {}).get("owner")
                      for key, s in (("old", old), ("new", new))}
            statuses = {key: w.read(f"Slot/{s['id']}")["status"] for key, s in (("old", old), ("new", new))}
            if now["slot"] == [{"reference": f"Slot/{new['id']}"}]:
                outcomes["new"] += 1
                assert now["meta"]["versionId"] == "2" and now["start"] == new["start"]
                assert claims == {"old": None, "new": owner}, (rnd, claims)
                assert statuses == {"old": "free", "new": "busy"}, (rnd, statuses)
            else:
                outcomes["old"] += 1
                assert now["slot"] == [{"reference": f"Slot/{old['id']}"}] and now["meta"]["versionId"] == "1"
                assert claims == {"old": owner, "new": None}, (rnd, claims)
                assert statuses == {"old": "busy", "new": "free"}, (rnd, statuses)
                assert db.history.count_documents({"_id": f"Appointment/{appt['id']}/2"}) == 0
            # nothing is left blocking: the appointment can be rescheduled again at once
            spare = w.slot(sched, start + timedelta(hours=1 + rnd, minutes=45), minutes=15)
            r = w.op(f"Appointment/{appt['id']}/$reschedule", [{"name": "slot", "valueReference": {
                "reference": f"Slot/{spare['id']}"}}])
            assert r.status_code == 200, r.text
        check_consistent(db)
        text = log.read_text()
        recovered = text.count('"result":"rolled-forward"') + text.count('"result":"rolled-back"')
        print(f"\nkill during reschedule over {ROUNDS} rounds: {outcomes}, reschedule ~{duration * 1000:.0f} ms, "
              f"commits finished by recovery: {recovered}")
        assert outcomes["old"] + outcomes["new"] == ROUNDS
        assert recovered > 0, "no kill landed inside a commit: the test proved nothing"
    finally:
        server.stop()

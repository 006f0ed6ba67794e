"""Killing the server mid-transaction, 50 times at random points: after restart, every entry or none."""

from __future__ import annotations

import random
import threading
import time

import requests
from pymongo import MongoClient

from tests.fhir import patient, post, put
from tests.servers import serve, start_ferretdb

ROUNDS = 50
ENTRIES = 25


def _transaction(marker: str, patient_id: str, doomed_id: str) -> dict:
    entries = [{"fullUrl": f"urn:uuid:{marker}-{n:04d}", "request": {"method": "POST", "url": "Observation"},
                "resource": {"resourceType": "Observation", "status": "final", "code": {"text": marker},
                             "subject": {"reference": f"Patient/{patient_id}"}}} for n in range(ENTRIES)]
    entries.append({"request": {"method": "PUT", "url": f"Patient/{patient_id}"},
                    "resource": patient(marker, id=patient_id)})
    entries.append({"request": {"method": "DELETE", "url": f"Patient/{doomed_id}"}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _wait_recovered(db, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while db.commits.count_documents({}) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert db.commits.count_documents({}) == 0, "recovery did not finish"


def _snapshot(db, skip: set[str]) -> dict[str, int]:
    return {f"{c}/{d['_id']}": d["v"] for c in ("Patient", "Observation")
            for d in db[c].find({}, {"v": 1}) if f"{c}/{d['_id']}" not in skip}


def test_kill_mid_transaction_all_or_nothing(tmp_path):
    db_proc = start_ferretdb(tmp_path / "db")
    env = {"FHIR_COMMIT_TIMEOUT": "1", "FHIR_DB_NAME": "fhirkill"}
    server = serve(db_proc.uri, tmp_path / "server.log", **env)
    db = MongoClient(db_proc.uri).fhirkill
    rng = random.Random(20261129)
    outcomes = {"all": 0, "none": 0}
    try:
        # How long one transaction takes, to spread the kills over it.
        pid = post(server.base, "Patient", patient()).json()["id"]
        doomed = post(server.base, "Patient", patient("Doomed")).json()["id"]
        started = time.perf_counter()
        assert post(server.base, "", _transaction("warmup", pid, doomed)).status_code == 200
        duration = time.perf_counter() - started
        for rnd in range(ROUNDS):
            pid = post(server.base, "Patient", patient()).json()["id"]
            doomed = post(server.base, "Patient", patient("Doomed")).json()["id"]
            marker = f"round{rnd:03d}"
            before = _snapshot(db, {f"Patient/{pid}", f"Patient/{doomed}"})

            thread = threading.Thread(target=_quiet_post, args=(server.base, _transaction(marker, pid, doomed)))
            thread.start()
            time.sleep(rng.uniform(0, duration * 1.2))
            server.kill()
            thread.join()
            server = serve(db_proc.uri, tmp_path / "server.log", **env)
            _wait_recovered(db)

            created = db.Observation.count_documents({"text": {"$regex": marker}})
            patient_now = requests.get(f"{server.base}/Patient/{pid}").json()
            doomed_status = requests.get(f"{server.base}/Patient/{doomed}").status_code
            if created == ENTRIES:
                outcomes["all"] += 1
                assert patient_now["name"][0]["family"] == marker and doomed_status == 410
            else:
                outcomes["none"] += 1
                assert created == 0, f"round {rnd}: {created} of {ENTRIES} entries survived"
                assert patient_now["name"][0]["family"] == "Smith" and doomed_status == 200
                assert db.history.count_documents({"_id": {"$regex": f"^Patient/{pid}/2$"}}) == 0
            after = _snapshot(db, {f"Patient/{pid}", f"Patient/{doomed}"})
            assert {k: v for k, v in after.items() if k in before} == before, "another resource changed"
            # the resource is writable again: nothing is left blocking it
            assert put(server.base, f"Patient/{pid}", patient("After", id=pid)).status_code == 200
        print(f"kill test outcomes over {ROUNDS} rounds: {outcomes}, transaction ~{duration * 1000:.0f} ms")
        assert outcomes["all"] + outcomes["none"] == ROUNDS
        log = (tmp_path / "server.log").read_text()
        recovered = log.count('"result":"rolled-forward"') + log.count('"result":"rolled-back"')
        print(f"commits finished by recovery after a kill: {recovered}")
        assert recovered > 0, "no kill landed inside a commit: the test proved nothing"
    finally:
        server.stop()
        db_proc.stop()


def _quiet_post(base: str, bundle: dict) -> None:
    try:
        post(base, "", bundle)
    except requests.RequestException:
        pass

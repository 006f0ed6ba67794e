"""Transaction and batch Bundles: references, conditional parts, order, all-or-nothing."""

from __future__ import annotations

import uuid

import requests

from tests.fhir import patient, post


def _tx(entries: list[dict], kind: str = "transaction") -> dict:
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


def _ident(value: str) -> list[dict]:
    return [{"system": "urn:test:mrn", "value": value}]


def test_transaction_rewrites_references_and_answers_in_order(server):
    mrn = uuid.uuid4().hex
    pat_url, enc_url = f"urn:uuid:{uuid.uuid4()}", f"urn:uuid:{uuid.uuid4()}"
    existing = post(server.base, "Patient", patient("Old")).json()["id"]
    doomed = post(server.base, "Patient", patient("Doomed")).json()["id"]
    bundle = _tx([
        {"fullUrl": enc_url, "request": {"method": "POST", "url": "Encounter"},
         "resource": {"resourceType": "Encounter", "status": "finished",
                      "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                      "subject": {"reference": pat_url}}},
        {"fullUrl": pat_url, "request": {"method": "POST", "url": "Patient"},
         "resource": patient("New", identifier=_ident(mrn))},
        {"request": {"method": "PUT", "url": f"Patient/{existing}"}, "resource": patient("Renamed", id=existing)},
        {"request": {"method": "DELETE", "url": f"Patient/{doomed}"}},
        {"request": {"method": "GET", "url": f"Patient/{existing}"}},
    ])
    r = post(server.base, "", bundle)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["type"] == "transaction-response"
    statuses = [e["response"]["status"] for e in out["entry"]]
    assert statuses == ["201 Created", "201 Created", "200 OK", "204 No Content", "200 OK"]
    patient_id = out["entry"][1]["response"]["location"].split("/Patient/")[1].split("/")[0]
    encounter = requests.get(out["entry"][0]["response"]["location"].split("/_history")[0]).json()
    assert encounter["subject"]["reference"] == f"Patient/{patient_id}"
    assert out["entry"][4]["resource"]["name"][0]["family"] == "Renamed"  # GET runs after the writes
    assert requests.get(f"{server.base}/Patient/{doomed}").status_code == 410
    assert out["entry"][0]["response"]["etag"] == 'W/"1"'


def test_conditional_reference_and_if_none_exist(server):
    mrn = uuid.uuid4().hex
    pid = post(server.base, "Patient", patient(identifier=_ident(mrn))).json()["id"]
    bundle = _tx([
        {"request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier=urn:test:mrn|{mrn}"},
         "resource": patient("Dup", identifier=_ident(mrn))},
        {"request": {"method": "POST", "url": "Observation"},
         "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                      "subject": {"reference": f"Patient?identifier=urn:test:mrn|{mrn}"}}},
    ])
    out = post(server.base, "", bundle).json()
    assert out["entry"][0]["response"]["status"] == "200 OK"
    assert f"/Patient/{pid}/" in out["entry"][0]["response"]["location"]
    obs = requests.get(out["entry"][1]["response"]["location"].split("/_history")[0]).json()
    assert obs["subject"]["reference"] == f"Patient/{pid}"


def test_unresolvable_conditional_reference_fails_whole_transaction(server):
    marker = uuid.uuid4().hex
    bundle = _tx([
        {"request": {"method": "POST", "url": "Patient"}, "resource": patient(marker)},
        {"request": {"method": "POST", "url": "Observation"},
         "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                      "subject": {"reference": "Patient?identifier=urn:test:mrn|nobody-has-this"}}},
    ])
    r = post(server.base, "", bundle)
    assert r.status_code == 422 and r.json()["resourceType"] == "OperationOutcome"
    found = requests.get(f"{server.base}/Patient", params={"family": marker}).json()
    assert found["total"] == 0


def test_invalid_entry_fails_whole_transaction_with_paths(server):
    marker = uuid.uuid4().hex
    bundle = _tx([
        {"request": {"method": "POST", "url": "Patient"}, "resource": patient(marker)},
        {"request": {"method": "POST", "url": "Patient"}, "resource": {"resourceType": "Patient", "gender": "x"}},
    ])
    r = post(server.base, "", bundle)
    assert r.status_code == 422
    expressions = [x for i in r.json()["issue"] for x in i.get("expression", [])]
    assert any(x.startswith("Bundle.entry[1].resource") for x in expressions), expressions
    assert requests.get(f"{server.base}/Patient", params={"family": marker}).json()["total"] == 0


def test_same_resource_twice_is_refused(server):
    pid = post(server.base, "Patient", patient()).json()["id"]
    bundle = _tx([{"request": {"method": "PUT", "url": f"Patient/{pid}"}, "resource": patient(id=pid)},
                  {"request": {"method": "DELETE", "url": f"Patient/{pid}"}}])
    assert post(server.base, "", bundle).status_code == 400


def test_transaction_if_match_conflict_is_412_and_writes_nothing(server):
    pid = post(server.base, "Patient", patient()).json()["id"]
    marker = uuid.uuid4().hex
    bundle = _tx([{"request": {"method": "POST", "url": "Patient"}, "resource": patient(marker)},
                  {"request": {"method": "PUT", "url": f"Patient/{pid}", "ifMatch": 'W/"7"'},
                   "resource": patient(id=pid)}])
    assert post(server.base, "", bundle).status_code == 412
    assert requests.get(f"{server.base}/Patient", params={"family": marker}).json()["total"] == 0


def test_batch_reports_each_entry(server):
    pid = post(server.base, "Patient", patient()).json()["id"]
    bundle = _tx([
        {"request": {"method": "POST", "url": "Patient"}, "resource": patient("Batch")},
        {"request": {"method": "POST", "url": "Patient"}, "resource": {"resourceType": "Patient", "gender": "x"}},
        {"request": {"method": "GET", "url": f"Patient/{pid}"}},
        {"request": {"method": "GET", "url": "Patient/does-not-exist-1"}},
        {"request": {"method": "DELETE", "url": f"Patient/{pid}"}},
    ], kind="batch")
    r = post(server.base, "", bundle)
    assert r.status_code == 200
    out = r.json()
    assert out["type"] == "batch-response"
    codes = [e["response"]["status"].split()[0] for e in out["entry"]]
    assert codes == ["201", "422", "200", "404", "204"]
    assert out["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"


def test_document_bundle_is_not_processed(server):
    r = post(server.base, "", {"resourceType": "Bundle", "type": "document", "entry": []})
    assert r.status_code == 400 and "document" in r.json()["issue"][0]["diagnostics"]

"""History at every level, conditional create/update/delete, and racing conditional creates."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import requests

from tests.fhir import patient, post, put


def _mrn() -> tuple[str, list[dict]]:
    value = uuid.uuid4().hex
    return value, [{"system": "urn:test:mrn", "value": value}]


def test_instance_type_and_system_history_with_paging(server):
    pid = post(server.base, "Patient", patient()).json()["id"]
    for n in range(4):
        put(server.base, f"Patient/{pid}", patient(f"V{n}", id=pid))
    page = requests.get(f"{server.base}/Patient/{pid}/_history", params={"_count": 2}).json()
    assert [e["resource"]["meta"]["versionId"] for e in page["entry"]] == ["5", "4"]
    nxt = next(link["url"] for link in page["link"] if link["relation"] == "next")
    page2 = requests.get(nxt).json()
    assert [e["resource"]["meta"]["versionId"] for e in page2["entry"]] == ["3", "2"]
    page3 = requests.get(next(link["url"] for link in page2["link"] if link["relation"] == "next")).json()
    assert [e["resource"]["meta"]["versionId"] for e in page3["entry"]] == ["1"]
    assert not [link for link in page3["link"] if link["relation"] == "next"]
    type_hist = requests.get(f"{server.base}/Patient/_history", params={"_count": 3}).json()
    assert type_hist["type"] == "history" and len(type_hist["entry"]) == 3
    assert all(e["fullUrl"].startswith(f"{server.base}/Patient/") for e in type_hist["entry"])
    system = requests.get(f"{server.base}/_history", params={"_count": 1}).json()
    assert len(system["entry"]) == 1


def test_history_since_and_at(server):
    pid = post(server.base, "Patient", patient()).json()["id"]
    time.sleep(0.05)
    middle = requests.get(f"{server.base}/Patient/{pid}").json()["meta"]["lastUpdated"]
    time.sleep(0.05)
    put(server.base, f"Patient/{pid}", patient("Later", id=pid))
    since = requests.get(f"{server.base}/Patient/{pid}/_history", params={"_since": middle}).json()
    assert {e["resource"]["meta"]["versionId"] for e in since["entry"]} == {"1", "2"}
    after_first = requests.get(f"{server.base}/Patient/{pid}/_history",
                               params={"_at": middle}).json()
    assert [e["resource"]["meta"]["versionId"] for e in after_first["entry"]] == ["1"]
    bad = requests.get(f"{server.base}/Patient/{pid}/_history", params={"_since": "yesterday"})
    assert bad.status_code == 400 and bad.json()["issue"][0]["expression"] == ["_since"]


def test_conditional_create(server):
    mrn, ident = _mrn()
    cond = {"If-None-Exist": f"identifier=urn:test:mrn|{mrn}"}
    first = post(server.base, "Patient", patient(identifier=ident), **cond)
    assert first.status_code == 201
    again = post(server.base, "Patient", patient(identifier=ident), **cond)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    post(server.base, "Patient", patient(identifier=ident))  # a second one, created unconditionally
    assert post(server.base, "Patient", patient(identifier=ident), **cond).status_code == 412
    bad = post(server.base, "Patient", patient(), **{"If-None-Exist": "no-such-param=1"})
    assert bad.status_code == 400


def test_conditional_update_and_delete(server):
    mrn, ident = _mrn()
    url = f"{server.base}/Patient?identifier=urn:test:mrn|{mrn}"
    created = requests.put(url, json=patient(identifier=ident), headers={"Content-Type": "application/fhir+json"})
    assert created.status_code == 201
    pid = created.json()["id"]
    updated = requests.put(url, json=patient("Upd", identifier=ident),
                           headers={"Content-Type": "application/fhir+json"})
    assert updated.status_code == 200 and updated.json()["id"] == pid
    assert updated.json()["meta"]["versionId"] == "2"
    assert requests.delete(url).status_code == 204
    assert requests.get(f"{server.base}/Patient/{pid}").status_code == 410


def test_racing_conditional_creates_make_one_resource(server):
    mrn, ident = _mrn()
    cond = {"If-None-Exist": f"identifier=urn:test:mrn|{mrn}"}
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda _: post(server.base, "Patient", patient(identifier=ident), **cond),
                                range(16)))
    codes = sorted(r.status_code for r in results)
    assert codes.count(201) == 1, codes
    assert len({r.json()["id"] for r in results}) == 1
    found = requests.get(f"{server.base}/Patient", params={"identifier": f"urn:test:mrn|{mrn}"}).json()
    assert found["total"] == 1


def test_validate_operation(server):
    ok = post(server.base, "Patient/$validate", patient())
    assert ok.status_code == 200 and ok.json()["issue"][0]["severity"] == "information"
    bad = post(server.base, "Patient/$validate", {"resourceType": "Patient", "gender": "banana"})
    assert bad.status_code == 200 and bad.json()["issue"][0]["severity"] == "error"
    params = {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": patient()},
                                                          {"name": "mode", "valueCode": "update"}]}
    upd = post(server.base, "Patient/$validate", params).json()
    assert upd["issue"][0]["severity"] == "error"  # update needs an id
    pid = post(server.base, "Patient", patient()).json()["id"]
    assert requests.get(f"{server.base}/Patient/{pid}/$validate", params={"mode": "delete"}).json()[
        "issue"][0]["severity"] == "information"

"""Search features end to end: chains, _has, composites, compartments, system search, includes, counts."""

from __future__ import annotations

import uuid

import pytest
import requests

from tests.fhir import patient, post


@pytest.fixture(scope="module")
def world(server):
    tag = uuid.uuid4().hex[:12]
    pat = post(server.base, "Patient", patient(f"Chain{tag}")).json()["id"]
    other = post(server.base, "Patient", patient(f"Other{tag}")).json()["id"]
    prac = post(server.base, "Practitioner", {"resourceType": "Practitioner",
                                               "name": [{"family": f"Doc{tag}"}]}).json()["id"]
    enc = post(server.base, "Encounter", {
        "resourceType": "Encounter", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": f"Patient/{pat}"},
        "participant": [{"individual": {"reference": f"Practitioner/{prac}"}}]}).json()["id"]
    obs = []
    for code, value, who in (("2339-0", 6.3, pat), ("2339-0", 9.1, pat), ("718-7", 13.0, other)):
        obs.append(post(server.base, "Observation", {
            "resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": f"Patient/{who}"}, "encounter": {"reference": f"Encounter/{enc}"},
            "effectiveDateTime": "2024-03-05T10:00:00Z",
            "valueQuantity": {"value": value, "system": "http://unitsofmeasure.org", "code": "mmol/L"},
            "identifier": [{"system": f"urn:test:{tag}", "value": code}]}).json()["id"])
    return {"tag": tag, "patient": pat, "other": other, "practitioner": prac, "encounter": enc, "obs": obs}


def _ids(bundle: dict, mode: str = "match") -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode}


def _get(server, path: str, **params) -> dict:
    r = requests.get(f"{server.base}/{path}", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def test_chained_parameter(server, world):
    got = _get(server, "Observation", **{"subject:Patient.name": f"Chain{world['tag']}"})
    assert _ids(got) == set(world["obs"][:2])
    got = _get(server, "Observation", **{"patient.family": f"Other{world['tag']}"})
    assert _ids(got) == {world["obs"][2]}
    two_links = _get(server, "Observation", **{"encounter.participant:Practitioner.name": f"Doc{world['tag']}"})
    assert _ids(two_links) == set(world["obs"])


def test_reverse_chain_has(server, world):
    got = _get(server, "Patient", **{"_has:Observation:patient:code": "718-7",
                                     "name": f"Other{world['tag']}"})
    assert _ids(got) == {world["other"]}
    got = _get(server, "Patient", **{"_has:Observation:subject:identifier": f"urn:test:{world['tag']}|2339-0"})
    assert _ids(got) == {world["patient"]}


def test_composite_parameter(server, world):
    got = _get(server, "Observation", **{"code-value-quantity": "http://loinc.org|2339-0$gt7",
                                         "identifier": f"urn:test:{world['tag']}|"})
    assert _ids(got) == {world["obs"][1]}


def test_compartment_search(server, world):
    got = _get(server, f"Patient/{world['patient']}/Observation")
    assert _ids(got) == set(world["obs"][:2])
    got = _get(server, f"Patient/{world['patient']}/Observation", code="2339-0", _summary="count")
    assert got["total"] == 2 and "entry" not in got


def test_include_and_revinclude(server, world):
    got = _get(server, "Encounter", _id=world["encounter"], _include="Encounter:practitioner",
               _revinclude="Observation:encounter")
    assert _ids(got) == {world["encounter"]}
    assert _ids(got, "include") == {world["practitioner"], *world["obs"]}
    self_link = next(link["url"] for link in got["link"] if link["relation"] == "self")
    assert "_include=Encounter%3Apractitioner" in self_link


def test_system_search_by_type_and_id(server, world):
    got = _get(server, "", _type="Patient,Encounter", _id=f"{world['patient']},{world['encounter']}")
    assert _ids(got) == {world["patient"], world["encounter"]}


def test_patient_reference_forms_agree(server, world):
    a = _get(server, "Observation", patient=world["patient"])
    b = _get(server, "Observation", patient=f"Patient/{world['patient']}")
    assert _ids(a) == _ids(b) == set(world["obs"][:2])


def test_get_and_post_search_agree(server, world):
    params = {"identifier": f"urn:test:{world['tag']}|", "code": "2339-0"}
    got = _get(server, "Observation", **params)
    posted = requests.post(f"{server.base}/Observation/_search", data=params).json()
    assert got["total"] == posted["total"] == 2


def test_elements_and_total_none(server, world):
    got = _get(server, "Observation", identifier=f"urn:test:{world['tag']}|", _elements="status", _total="none")
    assert "total" not in got
    for e in got["entry"]:
        assert set(e["resource"]) <= {"resourceType", "id", "meta", "status", "code"}


def test_sort_and_keyset_paging(server, world):
    tag = world["tag"]
    ids = []
    for day in (5, 1, 9, 3, 7, 2):
        ids.append(post(server.base, "Observation", {
            "resourceType": "Observation", "status": "final", "code": {"text": "sorted"},
            "identifier": [{"system": f"urn:sort:{tag}", "value": str(day)}],
            "effectiveDateTime": f"2024-01-0{day}"}).json()["id"])
    got = _get(server, "Observation", identifier=f"urn:sort:{tag}|", _sort="-date", _count=4)
    order = [e["resource"]["effectiveDateTime"] for e in got["entry"]]
    nxt = next(link["url"] for link in got["link"] if link["relation"] == "next")
    page2 = requests.get(nxt).json()
    order += [e["resource"]["effectiveDateTime"] for e in page2["entry"]]
    assert order == [f"2024-01-0{d}" for d in (9, 7, 5, 3, 2, 1)]
    assert not [link for link in page2["link"] if link["relation"] == "next"]
    assert requests.get(f"{server.base}/Observation", params={"_sort": "nonsense"}).status_code == 400


def test_bad_values_are_400_naming_the_parameter(server):
    for params in ({"date": "2024-13-45"}, {"date": "xx2024"}, {"value-quantity": "abc"}, {"_count": "many"}):
        r = requests.get(f"{server.base}/Observation", params=params)
        assert r.status_code == 400, params
        assert r.json()["issue"][0]["expression"] == [next(iter(params))]


def test_unknown_parameter_lenient_and_strict(server):
    lenient = _get(server, "Observation", bogus="1", status="final", _count=1)
    outcome = [e for e in lenient.get("entry", []) if e["search"]["mode"] == "outcome"]
    assert outcome and "bogus" in outcome[0]["resource"]["issue"][0]["diagnostics"]
    assert "bogus" not in next(link["url"] for link in lenient["link"] if link["relation"] == "self")
    strict = requests.get(f"{server.base}/Observation", params={"bogus": "1"}, headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400


def test_search_indexes_exist(server, ferretdb, world):
    from pymongo import MongoClient

    names = set(MongoClient(ferretdb.uri).fhirtest.Observation.index_information())
    assert {"idx.code_1", "idx.patient_1", "idx.date.lo_1", "comp_1"} <= names, names
    assert "could not create indexes" not in server.log.read_text()


def test_reindex_command_restores_the_index(ferretdb, tmp_path):
    import os
    import subprocess
    import sys

    from pymongo import MongoClient

    from tests.servers import serve

    own = serve(ferretdb.uri, tmp_path / "server.log", FHIR_DB_NAME="reindex")
    try:
        ids = [post(own.base, "Observation", {"resourceType": "Observation", "status": "final",
                                              "code": {"coding": [{"system": "http://loinc.org", "code": code}]}}
                    ).json()["id"] for code in ("718-7", "2339-0", "718-7")]
        coll = MongoClient(ferretdb.uri).reindex.Observation
        coll.update_one({"_id": ids[0]}, {"$set": {"idx": {}, "srt": {}}})
        assert _ids(_get(own, "Observation", code="718-7")) == {ids[2]}
        env = {**os.environ, "MONGODB_URI": ferretdb.uri, "FHIR_DB_NAME": "reindex"}
        done = subprocess.run([sys.executable, "-m", "fhirserver.cli", "db", "reindex", "--type", "Observation"],
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert "re-indexed" in done.stdout
        assert _ids(_get(own, "Observation", code="718-7")) == {ids[0], ids[2]}
    finally:
        own.stop()

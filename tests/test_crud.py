"""create, read, vread, update, patch, delete and their headers, against a real server and FerretDB."""

from __future__ import annotations

import requests

from tests.fhir import FHIR_JSON, observation, patient, post, put


def test_create_read_keeps_json_and_sets_meta(server):
    r = post(server.base, "Patient", patient(id="client-id-ignored"))
    assert r.status_code == 201, r.text
    body = r.json()
    rid = body["id"]
    assert rid != "client-id-ignored"
    assert body["meta"]["versionId"] == "1" and body["meta"]["lastUpdated"].endswith("Z")
    assert r.headers["Location"] == f"{server.base}/Patient/{rid}/_history/1"
    assert r.headers["ETag"] == 'W/"1"' and r.headers["Last-Modified"]
    got = requests.get(f"{server.base}/Patient/{rid}")
    assert got.status_code == 200 and got.json() == body
    assert got.headers["ETag"] == 'W/"1"'


def test_decimal_precision_survives(server):
    pid = post(server.base, "Patient", patient()).json()["id"]
    r = post(server.base, "Observation", observation(f"Patient/{pid}", "6.30"))
    assert r.status_code == 201, r.text
    assert '"value":6.30' in requests.get(f"{server.base}/Observation/{r.json()['id']}").text


def test_update_versions_and_vread(server):
    pid = post(server.base, "Patient", patient()).json()["id"]
    r = put(server.base, f"Patient/{pid}", patient("Jones", id=pid))
    assert r.status_code == 200 and r.json()["meta"]["versionId"] == "2"
    assert r.headers["ETag"] == 'W/"2"'
    v1 = requests.get(f"{server.base}/Patient/{pid}/_history/1").json()
    assert v1["name"][0]["family"] == "Smith" and v1["meta"]["versionId"] == "1"
    assert requests.get(f"{server.base}/Patient/{pid}/_history/3").status_code == 404


def test_update_as_create_with_client_id(server):
    r = put(server.base, "Patient/my-own-id-1", patient(id="my-own-id-1"))
    assert r.status_code == 201 and r.headers["Location"].endswith("/Patient/my-own-id-1/_history/1")


def test_update_id_rules(server):
    assert put(server.base, "Patient/a1", patient(id="b2")).status_code == 400
    assert put(server.base, "Patient/a1", patient()).status_code == 400
    assert put(server.base, "Patient/a1", {**patient(id="a1"), "resourceType": "Observation"}).status_code == 400


def test_if_match(server):
    pid = post(server.base, "Patient", patient()).json()["id"]
    assert put(server.base, f"Patient/{pid}", patient(id=pid), **{"If-Match": 'W/"2"'}).status_code == 412
    assert put(server.base, f"Patient/{pid}", patient(id=pid), **{"If-Match": 'W/"1"'}).status_code == 200
    assert put(server.base, f"Patient/{pid}", patient(id=pid), **{"If-Match": 'W/"1"'}).status_code == 412


def test_conditional_read_304(server):
    pid = post(server.base, "Patient", patient()).json()["id"]
    r = requests.get(f"{server.base}/Patient/{pid}")
    assert requests.get(f"{server.base}/Patient/{pid}", headers={"If-None-Match": 'W/"1"'}).status_code == 304
    assert requests.get(f"{server.base}/Patient/{pid}", headers={"If-None-Match": 'W/"9"'}).status_code == 200
    since = r.headers["Last-Modified"]
    assert requests.get(f"{server.base}/Patient/{pid}", headers={"If-Modified-Since": since}).status_code == 304


def test_delete_then_gone_and_history_keeps_it(server):
    pid = post(server.base, "Patient", patient()).json()["id"]
    assert requests.delete(f"{server.base}/Patient/{pid}").status_code == 204
    gone = requests.get(f"{server.base}/Patient/{pid}")
    assert gone.status_code == 410 and gone.json()["issue"][0]["code"] == "deleted"
    assert requests.delete(f"{server.base}/Patient/{pid}").status_code == 204  # idempotent
    hist = requests.get(f"{server.base}/Patient/{pid}/_history").json()
    assert hist["type"] == "history"
    assert [e["request"]["method"] for e in hist["entry"]] == ["DELETE", "POST"]
    assert "resource" not in hist["entry"][0]
    assert requests.get(f"{server.base}/Patient/{pid}/_history/2").status_code == 410
    assert requests.get(f"{server.base}/Patient/{pid}/_history/1").status_code == 200
    again = put(server.base, f"Patient/{pid}", patient(id=pid))
    assert again.status_code == 201 and again.json()["meta"]["versionId"] == "3"


def test_read_unknown(server):
    assert requests.get(f"{server.base}/Patient/nope-404").status_code == 404
    r = requests.get(f"{server.base}/NotAType/1")
    assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome"


def test_json_patch_and_fhirpath_patch(server):
    pid = post(server.base, "Patient", patient()).json()["id"]
    ops = [{"op": "replace", "path": "/gender", "value": "male"}]
    r = requests.patch(f"{server.base}/Patient/{pid}", json=ops,
                       headers={"Content-Type": "application/json-patch+json"})
    assert r.status_code == 200, r.text
    assert r.json()["gender"] == "male" and r.json()["meta"]["versionId"] == "2"
    params = {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Patient.birthDate"},
        {"name": "value", "valueDate": "1990-01-01"}]}]}
    r = requests.patch(f"{server.base}/Patient/{pid}", json=params, headers={"Content-Type": FHIR_JSON})
    assert r.status_code == 200 and r.json()["birthDate"] == "1990-01-01"
    bad = [{"op": "replace", "path": "/gender", "value": "banana"}]
    r = requests.patch(f"{server.base}/Patient/{pid}", json=bad,
                       headers={"Content-Type": "application/json-patch+json"})
    assert r.status_code == 422


def test_prefer_return(server):
    r = post(server.base, "Patient", patient(), Prefer="return=minimal")
    assert r.status_code == 201 and r.content == b"" and r.headers["Location"]
    r = post(server.base, "Patient", patient(), Prefer="return=OperationOutcome")
    assert r.json()["resourceType"] == "OperationOutcome"


def test_summary_and_elements_on_read(server):
    pid = post(server.base, "Patient", patient(text={"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"})).json()["id"]
    s = requests.get(f"{server.base}/Patient/{pid}", params={"_summary": "true"}).json()
    assert "text" not in s and s["meta"]["tag"][0]["code"] == "SUBSETTED"
    e = requests.get(f"{server.base}/Patient/{pid}", params={"_elements": "gender"}).json()
    assert e["gender"] == "female" and "name" not in e


def test_validation_errors_are_422_with_expressions(server):
    r = post(server.base, "Patient", {"resourceType": "Patient", "gender": "banana", "bogus": 1})
    assert r.status_code == 422
    issues = r.json()["issue"]
    expressions = {x for i in issues for x in i.get("expression", [])}
    assert "Patient.gender" in expressions


def test_malformed_input_never_500(server):
    cases = [
        ("POST", "Patient", b"{not json", FHIR_JSON),
        ("POST", "Patient", b'{"resourceType": "Patient"', FHIR_JSON),
        ("POST", "Patient", b"[]", FHIR_JSON),
        ("POST", "Patient", b'"just a string"', FHIR_JSON),
        ("POST", "Patient", b'{"resourceType":"Patient"}', "text/plain"),
        ("POST", "Patient", b'{"resourceType":"Observation","status":"final","code":{"text":"x"}}', FHIR_JSON),
        ("POST", "Patient", b'{"resourceType":"Patient","name":[{"family":null}]}', FHIR_JSON),
        ("POST", "Patient", b'{"resourceType":"Patient","a":1,"a":2}', FHIR_JSON),
        ("POST", "Patient", b"\xff\xfe\x00", FHIR_JSON),
        ("POST", "Patient", b'{"resourceType":"Patient","birthDate":NaN}', FHIR_JSON),
        ("PUT", "Patient/a/b", b'{"resourceType":"Patient","id":"a/b"}', FHIR_JSON),
        ("PUT", "Patient/" + "x" * 65, b'{"resourceType":"Patient","id":"' + b"x" * 65 + b'"}', FHIR_JSON),
        ("POST", "", b'{"resourceType":"Bundle","type":"document","entry":[]}', FHIR_JSON),
        ("POST", "", b'{"resourceType":"Bundle","type":"transaction","entry":[{"request":{}}]}', FHIR_JSON),
        ("POST", "", b'{"resourceType":"Bundle","type":"transaction","entry":"x"}', FHIR_JSON),
        ("POST", "MedicinalProduct", b'{"resourceType":"MedicinalProduct"}', FHIR_JSON),
        ("POST", "Patient", b"[" * 100000 + b"]" * 100000, FHIR_JSON),
        ("POST", "Patient", b'{"resourceType":"Patient","name":"' + b"x" * (70 * 1024 * 1024) + b'"}', FHIR_JSON),
    ]
    for method, path, data, ctype in cases:
        r = requests.request(method, f"{server.base}/{path}", data=data, headers={"Content-Type": ctype})
        assert 400 <= r.status_code < 500, (method, path, data[:60], r.status_code, r.text[:300])
        assert r.json()["resourceType"] == "OperationOutcome", r.text[:200]


def test_summary_count_on_read_is_400(server):
    pid = post(server.base, "Patient", patient()).json()["id"]
    r = requests.get(f"{server.base}/Patient/{pid}", params={"_summary": "count"})
    assert r.status_code == 400 and r.json()["issue"][0]["expression"] == ["_summary"]
    assert requests.get(f"{server.base}/Patient/{pid}", params={"_summary": "bogus"}).status_code == 400


def test_head_read(server):
    pid = post(server.base, "Patient", patient()).json()["id"]
    r = requests.head(f"{server.base}/Patient/{pid}")
    assert r.status_code == 200 and r.headers["ETag"] == 'W/"1"' and not r.content

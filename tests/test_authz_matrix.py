"""The authorization matrix over HTTP: real tokens from real flows (standalone and EHR launch through the
authorization pages, Backend Services with private_key_jwt) try to reach another patient's data (Oscar's) through
every path out of the server: read, vread, search, `_include`, `_revinclude`, chained and `_has` searches, history
(instance, type, system), compartment search, POST `_search`, batch and transaction entries, `$validate`, the
scheduling operations on his appointment (`$cancel`, `$reschedule`, `$hold`, `$book`, `$noshow`), and the writes
(update, patch, delete, conditional delete, create into his record).

Every attempt must be refused (403 or 404 with an OperationOutcome) or come back without any of his resources; the
writes must leave his data unchanged. Tokens: patient scopes v2 and v1 of a proxy's child, the proxy's own user
scopes v2 and v1 (current proxy of two children), a granular lab-only patient token, an expired proxy, an EHR launch
with patient context, a child's own user token, and a system token limited to non-patient types.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from tests.smart_helpers import Browser, bearer, new_backend
from tests.smart_world import OBS_CATEGORY, Health, health_system

LAB = f"{OBS_CATEGORY}|laboratory"


@pytest.fixture(scope="module")
def world(ferretdb, tmp_path_factory) -> Iterator[Health]:
    with health_system(ferretdb, tmp_path_factory.mktemp("authz"), "authzmatrix") as health:
        _schedule(health)
        yield health


def _schedule(world: Health) -> None:
    """A free slot in the clinician's schedule and a booked appointment of Oscar's (the scheduling operations)."""
    def make(name: str, body: dict[str, Any]) -> None:
        response = world.post(body["resourceType"], world.system_token, body)
        assert response.status_code == 201, response.text
        world.ids[name] = response.json()["id"]

    make("schedule", {"resourceType": "Schedule", "active": True,
                      "actor": [{"reference": f"Practitioner/{world['dr']}"}]})
    make("slot", {"resourceType": "Slot", "schedule": {"reference": f"Schedule/{world['schedule']}"},
                  "status": "free", "start": "2030-02-01T09:00:00Z", "end": "2030-02-01T09:30:00Z"})
    make("other_appt", {"resourceType": "Appointment", "status": "booked", "start": "2030-01-01T10:00:00Z",
                        "end": "2030-01-01T10:30:00Z", "participant": [
                            {"actor": {"reference": f"Patient/{world['other']}"}, "status": "accepted"},
                            {"actor": {"reference": f"Practitioner/{world['dr']}"}, "status": "accepted"}]})


def _tokens(world: Health) -> dict[str, str]:
    """One access token per kind of caller, each from a real flow."""
    app, portal = world.app, world.confidential
    kid1 = f"Patient/{world['kid1']}"

    def launch(who: str, scope: str, **kw: Any) -> str:
        token = app.launch(Browser(world.server.url), who, scope, **kw)
        assert set(token["scope"].split()) == set(scope.split())  # granted as asked, writes included
        return token["access_token"]

    clinician = Browser(world.server.url)
    ehr = portal.launch(clinician, "drsmith", "openid fhirUser user/*.rs")
    made = requests.post(f"{world.server.url}/auth/launch", headers=bearer(ehr["access_token"]),
                         json={"patient": world["kid1"], "encounter": world["kid1_enc"], "client_id": app.client_id},
                         timeout=30)
    assert made.status_code == 201, made.text
    ehr_token = app.launch(clinician, None, "launch patient/*.cruds", launch=made.json()["launch"])
    assert ehr_token["patient"] == world["kid1"]
    limited = new_backend(world.server, world.db, "system/Practitioner.rs system/Organization.rs")
    return {
        "patient-v2 (proxy's child in context)": launch("mum", "launch/patient patient/*.cruds", patient=kid1),
        "patient-v1 (proxy's child in context)": launch("mum", "launch/patient patient/*.read patient/*.write",
                                                        patient=kid1),
        "user-v2 (current proxy of two children)": launch("mum", "openid fhirUser user/*.cruds"),
        "user-v1 (current proxy of two children)": launch("mum", "user/*.read user/*.write"),
        "granular lab-only patient token": launch(
            "kim", f"launch/patient patient/Observation.rs?category={LAB} patient/Patient.rs"),
        "expired proxy, user scopes": launch("exproxy", "openid fhirUser user/*.cruds"),
        "EHR launch with patient context": ehr_token["access_token"],
        "child's own user token": launch("kim", "user/*.cruds"),
        "system token limited to non-patient types": limited.fetch("system/Practitioner.rs system/Organization.rs",
                                                                   alg="ES384")["access_token"],
    }


@dataclass
class Attempt:
    name: str
    method: str
    path: str
    body: Any = None
    content_type: str = "application/fhir+json"
    write: bool = False
    no_match_ok: bool = False  # a conditional write that matched nothing it may touch (data checked unchanged)


def _attempts(w: Health) -> list[Attempt]:
    o, lab, enc = w["other"], w["other_lab"], w["other_enc"]
    cond, allergy, appt = w["other_problem-list-item"], w["other_allergy"], w["other_appt"]

    def parameters(name: str, value: str) -> dict[str, Any]:
        return {"resourceType": "Parameters", "parameter": [{"name": name, "valueString": value}]}
    observation = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                   "subject": {"reference": f"Patient/{o}"}}
    return [
        Attempt("read patient", "GET", f"Patient/{o}"),
        Attempt("read observation", "GET", f"Observation/{lab}"),
        Attempt("vread observation", "GET", f"Observation/{lab}/_history/1"),
        Attempt("vread patient", "GET", f"Patient/{o}/_history/1"),
        Attempt("read encounter", "GET", f"Encounter/{enc}"),
        Attempt("read condition", "GET", f"Condition/{cond}"),
        Attempt("read allergy", "GET", f"AllergyIntolerance/{allergy}"),
        Attempt("read the proxy relationship", "GET", f"RelatedPerson/{w['rp_expired']}"),
        Attempt("search observations by patient", "GET", f"Observation?patient={o}"),
        Attempt("search observations by subject", "GET", f"Observation?subject=Patient/{o}"),
        Attempt("search all observations", "GET", "Observation?_count=100"),
        Attempt("search patient by _id", "GET", f"Patient?_id={o}"),
        Attempt("search patient by name", "GET", "Patient?name=Oscar"),
        Attempt("search observation by _id", "GET", f"Observation?_id={lab}"),
        Attempt("search encounters by patient", "GET", f"Encounter?patient={o}"),
        Attempt("search conditions by category", "GET", "Condition?category=problem-list-item"),
        Attempt("search allergies by patient", "GET", f"AllergyIntolerance?patient={o}"),
        Attempt("_include subject", "GET", "Observation?_include=Observation:subject&_count=100"),
        Attempt("_include encounter patient", "GET", "Encounter?_include=Encounter:subject"),
        Attempt("_revinclude observations", "GET", "Patient?_revinclude=Observation:subject"),
        Attempt("_revinclude of him by id", "GET", f"Patient?_id={o}&_revinclude=Observation:patient"),
        Attempt("chained search", "GET", "Observation?subject:Patient.name=Oscar"),
        Attempt("_has search", "GET", "Patient?_has:Observation:patient:code=2339-0"),
        Attempt("instance history", "GET", f"Observation/{lab}/_history"),
        Attempt("patient instance history", "GET", f"Patient/{o}/_history"),
        Attempt("type history", "GET", "Observation/_history?_count=1000"),
        Attempt("system history", "GET", "_history?_count=1000"),
        Attempt("compartment search observations", "GET", f"Patient/{o}/Observation"),
        Attempt("compartment search conditions", "GET", f"Patient/{o}/Condition"),
        Attempt("system search", "GET", "?_type=Patient,Observation,Encounter"),
        Attempt("POST _search", "POST", "Observation/_search", f"patient={o}", "application/x-www-form-urlencoded"),
        Attempt("batch reads", "POST", "", {"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": f"Patient/{o}"}},
            {"request": {"method": "GET", "url": f"Observation?patient={o}"}},
            {"request": {"method": "GET", "url": f"Encounter/{enc}"}}]}),
        Attempt("transaction read", "POST", "", {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"request": {"method": "GET", "url": f"Observation/{lab}"}}]}),
        Attempt("transaction update", "POST", "", {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": f"{w.server.base}/Observation/{lab}", "request": {"method": "PUT", "url": f"Observation/{lab}"},
             "resource": {**observation, "id": lab}}]}, write=True),
        Attempt("batch delete", "POST", "", {"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "DELETE", "url": f"Condition/{cond}"}}]}, write=True),
        Attempt("$validate instance", "GET", f"Observation/{lab}/$validate"),
        Attempt("$validate patient instance", "POST", f"Patient/{o}/$validate",
                {"resourceType": "Parameters", "parameter": []}),
        Attempt("update observation", "PUT", f"Observation/{lab}", {**observation, "id": lab}, write=True),
        Attempt("patch observation", "PATCH", f"Observation/{lab}",
                [{"op": "replace", "path": "/status", "value": "amended"}], "application/json-patch+json", write=True),
        Attempt("delete observation", "DELETE", f"Observation/{lab}", write=True),
        Attempt("conditional delete", "DELETE", f"Observation?patient={o}", write=True, no_match_ok=True),
        Attempt("create into his record", "POST", "Observation", observation, write=True),
        Attempt("read appointment", "GET", f"Appointment/{appt}"),
        Attempt("search appointments by patient", "GET", f"Appointment?patient={o}"),
        Attempt("search appointments by actor", "GET", f"Appointment?actor=Patient/{o}"),
        Attempt("$cancel his appointment", "POST", f"Appointment/{appt}/$cancel", parameters("reason", "moving"),
                write=True),
        Attempt("$reschedule his appointment", "POST", f"Appointment/{appt}/$reschedule",
                {"resourceType": "Parameters", "parameter": [
                    {"name": "slot", "valueReference": {"reference": f"Slot/{w['slot']}"}}]}, write=True),
        Attempt("$hold his appointment", "POST", f"Appointment/{appt}/$hold", write=True),
        Attempt("$book his appointment", "POST", f"Appointment/{appt}/$book", write=True),
        Attempt("$noshow his appointment", "POST", f"Appointment/{appt}/$noshow", write=True),
    ]


def _his(world: Health) -> set[str]:
    return {v for k, v in world.ids.items() if k == "other" or k.startswith("other_")} | {world["rp_expired"]}


def _leaks(world: Health, body: Any) -> list[str]:
    """Resources of his (by id or by reference to him) anywhere in a response body."""
    his, ref = _his(world), f"Patient/{world['other']}"
    found: list[str] = []

    def walk(resource: Any) -> None:
        if not isinstance(resource, dict):
            return
        if resource.get("resourceType") == "Bundle":
            for entry in resource.get("entry", []):
                walk(entry.get("resource"))
            return
        if resource.get("resourceType") == "OperationOutcome":
            return
        text = json.dumps(resource)
        if resource.get("id") in his or f'"{ref}"' in text:
            found.append(f"{resource.get('resourceType')}/{resource.get('id')}")

    walk(body)
    return found


def _refused(response: requests.Response) -> bool:
    return response.status_code in (403, 404) and response.json().get("resourceType") == "OperationOutcome"


def _check(world: Health, attempt: Attempt, response: requests.Response) -> str | None:
    """None when the attempt stayed away from his data; else what went wrong."""
    if _refused(response) or (attempt.no_match_ok and response.status_code in (200, 204)):
        return None
    if response.status_code != 200:
        return f"status {response.status_code}: {response.text[:200]}"
    body = response.json()
    if body.get("resourceType") == "Bundle" and body.get("type") in ("batch-response", "transaction-response"):
        for entry in body.get("entry", []):
            status = entry.get("response", {}).get("status", "")
            if status.startswith(("403", "404")):
                continue
            if not attempt.write and status.startswith("200") and not _leaks(world, entry.get("resource")):
                continue
            return f"entry {status}: {json.dumps(entry)[:200]}"
        return None
    if attempt.write:
        return f"write accepted: {response.status_code}"
    if body.get("resourceType") != "Bundle":
        return f"answered {body.get('resourceType')}"
    leaks = _leaks(world, body)
    return f"leaked {leaks}" if leaks else None


def _send(world: Health, token: str, attempt: Attempt) -> requests.Response:
    data = attempt.body if isinstance(attempt.body, str | None) else json.dumps(attempt.body)
    headers = {**bearer(token), "Content-Type": attempt.content_type}
    return requests.request(attempt.method, f"{world.server.base}/{attempt.path}".rstrip("/"), data=data,
                            headers=headers, timeout=30)


def _versions(world: Health) -> dict[str, str]:
    """Version ids of his resources as the unrestricted system token sees them."""
    out = {}
    for name, rid in world.ids.items():
        if name.startswith("other_"):
            rtype = {"lab": "Observation", "vital": "Observation", "social": "Observation", "enc": "Encounter",
                     "allergy": "AllergyIntolerance", "appt": "Appointment"}.get(name.split("_", 1)[1], "Condition")
            response = world.get(f"{rtype}/{rid}", world.system_token)
            out[name] = response.json()["meta"]["versionId"] if response.status_code == 200 else "gone"
    return out


@pytest.fixture(scope="module")
def tokens(world: Health) -> dict[str, str]:
    return _tokens(world)


ATTEMPTS_PER_TOKEN = 50
TOKEN_KINDS = 9


def test_matrix_size(world: Health, tokens: dict[str, str]):
    assert len(_attempts(world)) == ATTEMPTS_PER_TOKEN and len(tokens) == TOKEN_KINDS
    assert ATTEMPTS_PER_TOKEN * TOKEN_KINDS >= 200


@pytest.mark.parametrize("who", range(TOKEN_KINDS))
def test_no_path_reaches_another_patient(world: Health, tokens: dict[str, str], who: int):
    name, token = list(tokens.items())[who]
    before = _versions(world)
    failures = []
    for attempt in _attempts(world):
        problem = _check(world, attempt, _send(world, token, attempt))
        if problem:
            failures.append(f"{attempt.name} ({attempt.method} {attempt.path}): {problem}")
    assert not failures, f"{name} reached Oscar's data:\n" + "\n".join(failures)
    assert _versions(world) == before, "a write changed his data"
    assert _versions(world)["other_lab"] == "1"


def _own(world: Health, token: str, path: str, check: Callable[[dict], bool]) -> bool:
    response = world.get(path, token)
    return response.status_code == 200 and check(response.json())


def test_the_same_tokens_do_reach_their_own_data(world: Health, tokens: dict[str, str]):
    """The refusals above are not a blanket refusal: each token reaches what it is for."""
    names = list(tokens)
    kid1 = world["kid1"]
    for who in (0, 1, 2, 3, 6, 7):
        assert _own(world, tokens[names[who]], f"Patient/{kid1}", lambda b: b["id"] == kid1), names[who]
    lab_only = tokens[names[4]]
    got = world.get("Observation", lab_only).json()
    assert {e["resource"]["id"] for e in got.get("entry", [])} == {world["kid1_lab"]}
    assert world.get("Practitioner", tokens[names[8]]).status_code == 200


def test_the_checks_see_his_data_when_it_is_reachable(world: Health):
    """With the unrestricted system token every read path does reach his data, and the checks above say so: they
    are not vacuous."""
    missed = [a.name for a in _attempts(world) if not a.write
              and _check(world, a, _send(world, world.system_token, a)) is None]
    assert not missed, missed

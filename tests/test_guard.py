"""The authorization matrix: every path where data leaves or enters, tried with tokens that must not reach another
patient's data (patient scopes, a patient user, current and expired proxies, granular categories, narrow types).

Runs the interactions in-process on a real FerretDB with `Access` objects as the authorization server hands them
over; each attempt must be refused (403/404) or come back without the other patient's data.
"""

from __future__ import annotations

import uuid

import pytest

from fhirserver.errors import FHIRError
from fhirserver.interactions import create, delete, history, read, search, transaction, update
from fhirserver.interactions.guard import OPEN, Guard
from fhirserver.store.database import Store
from smart_auth.access import Access

BASE = "http://test/fhir"
PAGING = search.Paging(50, 100)
LAB = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"


def _obs(pid: str, category: str, code: str) -> dict:
    return {"resourceType": "Observation", "status": "final",
            "category": [{"coding": [{"system": LAB.split("|")[0], "code": category}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": "2024-01-01"}


@pytest.fixture(scope="module")
def world(ferretdb):
    store = Store(ferretdb.uri, f"guard{uuid.uuid4().hex[:8]}")
    ids: dict[str, str] = {}

    def make(name: str, body: dict) -> str:
        ids[name] = create.create(store, BASE, body["resourceType"], body).stored.id
        return ids[name]

    a = make("alice", {"resourceType": "Patient", "name": [{"family": "Alice"}]})
    b = make("bob", {"resourceType": "Patient", "name": [{"family": "Bob"}]})
    make("alice_lab", _obs(a, "laboratory", "2339-0"))
    make("alice_vital", _obs(a, "vital-signs", "8867-4"))
    make("bob_lab", _obs(b, "laboratory", "2339-0"))
    make("bob_vital", _obs(b, "vital-signs", "8867-4"))
    make("doc", {"resourceType": "Practitioner", "name": [{"family": "Doc"}]})
    make("bob_enc", {"resourceType": "Encounter", "status": "finished",
                     "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                     "subject": {"reference": f"Patient/{b}"},
                     "participant": [{"individual": {"reference": f"Practitioner/{ids['doc']}"}}]})
    return store, ids


def _guards(ids: dict[str, str]) -> dict[str, Guard]:
    a = ids["alice"]
    return {
        "patient-scope": Guard(Access("app", "patient/*.cruds launch/patient", "authorization_code", patient=a)),
        "patient-v1": Guard(Access("app", "patient/*.read patient/*.write", "authorization_code", patient=a)),
        "patient-user": Guard(Access("portal", "user/*.cruds", "authorization_code", user_id="alice",
                                     fhir_user=f"Patient/{a}", proxied_patients=(a,))),
        "proxy-for-alice": Guard(Access("portal", "user/*.cruds", "authorization_code", user_id="mum",
                                        fhir_user="RelatedPerson/mum", proxied_patients=(a,))),
        "expired-proxy": Guard(Access("portal", "user/*.cruds", "authorization_code", user_id="ex",
                                      fhir_user="RelatedPerson/ex", proxied_patients=())),
        "lab-only": Guard(Access("app", f"patient/Observation.rs?category={LAB} patient/Patient.rs",
                                 "authorization_code", patient=a)),
        "observations-only": Guard(Access("app", "patient/Observation.rs", "authorization_code", patient=a)),
        "patient-user-v1": Guard(Access("portal", "user/*.read user/*.write openid fhirUser", "authorization_code",
                                        user_id="alice", fhir_user=f"Patient/{a}", proxied_patients=(a,))),
    }


def _refused(fn) -> bool:
    try:
        fn()
    except FHIRError as exc:
        return exc.status in (403, 404)
    return False


def _ids_of(result) -> set[str]:
    import json

    from fhirserver import fhirjson

    body = json.loads(fhirjson.dumps(result.body))
    return {e["resource"]["id"] for e in body.get("entry", []) if e.get("search", {}).get("mode") != "outcome"}


def _attempts(store: Store, ids: dict[str, str], guard: Guard) -> list[tuple[str, callable]]:
    """(name, check) pairs; each check returns True when the other patient's data stayed out of reach."""
    b, bob_lab, bob_enc = ids["bob"], ids["bob_lab"], ids["bob_enc"]
    bobs = {b, bob_lab, ids["bob_vital"], bob_enc}

    def none_of_bob(fn):
        def check() -> bool:
            try:
                return not (_ids_of(fn()) & bobs)
            except FHIRError as exc:
                return exc.status in (403, 404)
        return check

    def write_refused(fn):
        return lambda: _refused(fn)

    tx = transaction.Transaction(store, BASE, lambda *a: read.read(store, "Patient", b, guard), guard)
    return [
        ("read other patient", write_refused(lambda: read.read(store, "Patient", b, guard))),
        ("read other's observation", write_refused(lambda: read.read(store, "Observation", bob_lab, guard))),
        ("vread other's observation", write_refused(lambda: read.vread(store, "Observation", bob_lab, "1", guard))),
        ("read other's encounter", write_refused(lambda: read.read(store, "Encounter", bob_enc, guard))),
        ("search all observations", none_of_bob(lambda: search.search(store, BASE, "Observation", "", PAGING,
                                                                       guard=guard))),
        ("search by other patient", none_of_bob(lambda: search.search(
            store, BASE, "Observation", f"patient={b}", PAGING, guard=guard))),
        ("search other patient by id", none_of_bob(lambda: search.search(
            store, BASE, "Patient", f"_id={b}", PAGING, guard=guard))),
        ("chained search", none_of_bob(lambda: search.search(
            store, BASE, "Observation", "subject:Patient.name=Bob", PAGING, guard=guard))),
        ("_has search", none_of_bob(lambda: search.search(
            store, BASE, "Patient", "_has:Observation:patient:code=2339-0", PAGING, guard=guard))),
        ("compartment search of other", none_of_bob(lambda: search.search(
            store, BASE, "Observation", "", PAGING, compartment=("Patient", b), guard=guard))),
        ("revinclude from own patient", none_of_bob(lambda: search.search(
            store, BASE, "Patient", "_revinclude=Observation:subject", PAGING, guard=guard))),
        ("include subject of observations", none_of_bob(lambda: search.search(
            store, BASE, "Observation", "_include=Observation:subject", PAGING, guard=guard))),
        ("system search", none_of_bob(lambda: search.system_search(
            store, BASE, [("_type", "Patient,Observation")], PAGING, ["Patient", "Observation"], guard=guard))),
        ("instance history of other", write_refused(lambda: history.history(
            store, BASE, {}, 50, 100, "Observation", bob_lab, guard))),
        ("type history", none_of_bob(lambda: history.history(store, BASE, {}, 50, 100, "Observation",
                                                              guard=guard))),
        ("system history", none_of_bob(lambda: history.history(store, BASE, {}, 50, 100, guard=guard))),
        ("update other's observation", write_refused(lambda: update.update(
            store, BASE, "Observation", bob_lab, {**_obs(b, "laboratory", "x"), "id": bob_lab}, guard=guard))),
        ("move own observation to other", write_refused(lambda: update.update(
            store, BASE, "Observation", ids["alice_lab"], {**_obs(b, "laboratory", "x"), "id": ids["alice_lab"]},
            guard=guard))),
        ("delete other's observation", write_refused(lambda: delete.delete(store, "Observation", bob_lab,
                                                                           guard=guard))),
        ("create for other patient", write_refused(lambda: create.create(
            store, BASE, "Observation", _obs(b, "laboratory", "x"), guard=guard))),
        ("conditional create matching other", none_of_bob(lambda: search.search(
            store, BASE, "Observation", f"code=2339-0&patient={b}", PAGING, guard=guard))),
        ("conditional delete of other", lambda: _refused(lambda: delete.conditional_delete(
            store, "Observation", f"patient={b}", guard=guard)) or read.read(store, "Observation", bob_lab)),
        ("conditional update of other", write_refused(lambda: update.conditional_update(
            store, BASE, "Observation", f"_id={bob_lab}", _obs(b, "laboratory", "y"), guard=guard))),
        ("transaction writing other", write_refused(lambda: tx.run({"resourceType": "Bundle", "type": "transaction",
            "entry": [{"request": {"method": "PUT", "url": f"Observation/{bob_lab}"},
                       "resource": {**_obs(b, "laboratory", "z"), "id": bob_lab}}]}))),
        ("transaction deleting other", write_refused(lambda: tx.run({"resourceType": "Bundle", "type": "transaction",
            "entry": [{"request": {"method": "DELETE", "url": f"Patient/{b}"}}]}))),
        ("batch reading other", lambda: all(
            e["response"]["status"].startswith(("403", "404")) for e in transaction.batch(
                store, BASE, {"resourceType": "Bundle", "type": "batch", "entry": [
                    {"request": {"method": "GET", "url": f"Observation/{bob_lab}"}}]},
                lambda m, t, p, q: read.read(store, t, p, guard),
                lambda e: transaction.run_single(store, BASE, e, guard))["entry"])),
    ]


GUARD_NAMES = ["patient-scope", "patient-v1", "patient-user", "proxy-for-alice", "expired-proxy", "lab-only",
               "observations-only", "patient-user-v1"]


@pytest.mark.parametrize("who", GUARD_NAMES)
def test_no_path_reaches_another_patient(world, who):
    store, ids = world
    guard = _guards(ids)[who]
    failures = [name for name, check in _attempts(store, ids, guard) if not check()]
    assert not failures, f"{who} reached Bob's data through: {failures}"
    assert read.read(store, "Observation", ids["bob_lab"], OPEN).stored is not None  # nothing was changed
    assert read.read(store, "Patient", ids["bob"], OPEN).stored is not None


def test_matrix_size(world):
    store, ids = world
    attempts = len(GUARD_NAMES) * len(_attempts(store, ids, OPEN))
    assert attempts >= 200, attempts


def test_own_data_is_reachable(world):
    store, ids = world
    guards = _guards(ids)
    for who in ("patient-scope", "patient-user", "proxy-for-alice"):
        got = _ids_of(search.search(store, BASE, "Observation", "", PAGING, guard=guards[who]))
        assert got == {ids["alice_lab"], ids["alice_vital"]}, who
        assert read.read(store, "Patient", ids["alice"], guards[who]).stored.id == ids["alice"]
    assert _refused(lambda: search.search(store, BASE, "Observation", "", PAGING, guard=guards["expired-proxy"]))


def test_granular_category_scope(world):
    store, ids = world
    lab = _guards(ids)["lab-only"]
    assert _ids_of(search.search(store, BASE, "Observation", "", PAGING, guard=lab)) == {ids["alice_lab"]}
    assert _refused(lambda: read.read(store, "Observation", ids["alice_vital"], lab))
    assert read.read(store, "Observation", ids["alice_lab"], lab).stored is not None


def test_types_not_granted_are_403(world):
    store, ids = world
    only_obs = _guards(ids)["observations-only"]
    for fn in (lambda: read.read(store, "Patient", ids["alice"], only_obs),
               lambda: search.search(store, BASE, "Encounter", "", PAGING, guard=only_obs),
               lambda: create.create(store, BASE, "Observation", _obs(ids["alice"], "laboratory", "1"),
                                     guard=only_obs)):
        with pytest.raises(FHIRError) as err:
            fn()
        assert err.value.status == 403

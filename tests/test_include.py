"""_include/_revinclude resolution through the store on a real FerretDB, with data created over HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from fhirserver.errors import BadRequest
from fhirserver.search.include import IncludePlan, includes_from_query, parse_includes, resolve_includes
from fhirserver.store.database import Store
from fhirserver.store.resources import Stored
from tests.fhir import patient, post


def _create(base: str, body: dict) -> str:
    r = post(base, body["resourceType"], body)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _encounter(subject: str, participants: list[str], **extra) -> dict:
    return {"resourceType": "Encounter", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": subject},
            "participant": [{"individual": {"reference": p}} for p in participants], **extra}


def _observation(subject: str, encounter: str | None = None, members: list[str] = ()) -> dict:
    body: dict = {"resourceType": "Observation", "status": "final", "code": {"text": "glucose"},
                  "subject": {"reference": subject}}
    if encounter:
        body["encounter"] = {"reference": encounter}
    if members:
        body["hasMember"] = [{"reference": m} for m in members]
    return body


def _provenance(target: str, who: str) -> dict:
    return {"resourceType": "Provenance", "target": [{"reference": target}], "recorded": "2024-03-05T10:00:00Z",
            "agent": [{"who": {"reference": who}}]}


@pytest.fixture(scope="module")
def world(server) -> dict[str, str]:
    """Patients, practitioners (one deleted), a Group, two Encounters, Observations with a hasMember chain and
    Provenances; returns name -> id."""
    base = server.base
    w: dict[str, str] = {}
    w["p1"] = _create(base, patient("Include"))
    w["p2"] = _create(base, patient("Iterate"))
    w["dr"] = _create(base, {"resourceType": "Practitioner", "name": [{"family": "Who"}]})
    w["gone"] = _create(base, {"resourceType": "Practitioner", "name": [{"family": "Gone"}]})
    assert requests.delete(f"{base}/Practitioner/{w['gone']}").status_code == 204
    w["grp"] = _create(base, {"resourceType": "Group", "type": "person", "actual": True})
    w["e1"] = _create(base, _encounter(f"Patient/{w['p1']}", [
        f"Practitioner/{w['dr']}", f"Practitioner/{w['gone']}", "http://elsewhere.example/fhir/Practitioner/x1"]))
    w["e2"] = _create(base, _encounter(f"Group/{w['grp']}", [f"Practitioner/{w['dr']}"],
                                       partOf={"reference": f"Encounter/{w['e1']}"}))
    # hasMember chain o4 -> o5 -> o6 -> o7, reached from o1
    w["o7"] = _create(base, _observation(f"Patient/{w['p1']}"))
    w["o6"] = _create(base, _observation(f"Patient/{w['p1']}", members=[f"Observation/{w['o7']}"]))
    w["o5"] = _create(base, _observation(f"Patient/{w['p1']}", members=[f"Observation/{w['o6']}"]))
    w["o4"] = _create(base, _observation(f"Patient/{w['p1']}", members=[f"Observation/{w['o5']}"]))
    w["o1"] = _create(base, _observation(f"Patient/{w['p1']}", f"Encounter/{w['e1']}", [f"Observation/{w['o4']}"]))
    w["o2"] = _create(base, _observation(f"Patient/{w['p2']}", f"Encounter/{w['e2']}"))
    w["prov"] = _create(base, _provenance(f"Encounter/{w['e1']}", f"Practitioner/{w['dr']}"))
    w["prov_p"] = _create(base, _provenance(f"Patient/{w['p1']}", f"Practitioner/{w['dr']}"))
    return w


@pytest.fixture(scope="module")
def store(ferretdb, server) -> Iterator[Store]:
    """A Store on the session server's database."""
    s = Store(ferretdb.uri, "fhirtest")
    yield s
    s.close()


class CountingReader:
    """The store's reader, recording each query as (method, type)."""

    def __init__(self, reader) -> None:
        self.reader = reader
        self.calls: list[tuple[str, str]] = []

    def find(self, rtype: str, query: dict, limit: int, sort=None) -> list[Stored]:
        self.calls.append(("find", rtype))
        return self.reader.find(rtype, query, limit, sort)

    def find_raw(self, rtype: str, query: dict, projection: dict, limit: int = 0, sort=None) -> list[dict]:
        self.calls.append(("find_raw", rtype))
        return self.reader.find_raw(rtype, query, projection, limit, sort)


class CountingStore:
    """Just enough of a Store for resolve_includes, counting queries."""

    def __init__(self, store: Store) -> None:
        self.inner = store
        self.reader = CountingReader(store.reader)


def _encounters(store: Store, w: dict[str, str], *names: str) -> list[Stored]:
    return store.reader.find("Encounter", {"_id": {"$in": [w[n] for n in names]}, "del": False}, 100)


def _keys(w: dict[str, str], *pairs: tuple[str, str]) -> list[tuple[str, str]]:
    """Expected (type, id) pairs, in the result's order (type, then id)."""
    return sorted((t, w[n]) for t, n in pairs)


def _run(store, w, include=(), revinclude=(), matches=("e1", "e2"), **kw) -> list[tuple[str, str]]:
    plan = parse_includes("Encounter", list(include), list(revinclude))
    real = store.inner if isinstance(store, CountingStore) else store
    found = resolve_includes(store, plan, _encounters(real, w, *matches), **kw)
    assert all(s.text for s in found)
    return [(s.type, s.id) for s in found]


def test_include_practitioner_skips_deleted_and_absolute(store, world):
    # e1 points at dr, at a deleted Practitioner and at another server's Practitioner; e2 at dr again
    assert _run(store, world, ["Encounter:practitioner"]) == _keys(world, ("Practitioner", "dr"))


def test_include_target_type_restriction(store, world):
    assert _run(store, world, ["Encounter:subject:Patient"]) == _keys(world, ("Patient", "p1"))
    assert _run(store, world, ["Encounter:subject"]) == _keys(world, ("Patient", "p1"), ("Group", "grp"))
    assert _run(store, world, ["Encounter:subject:Group"]) == _keys(world, ("Group", "grp"))


def test_include_wildcard_and_matches_left_out(store, world):
    every = _keys(world, ("Patient", "p1"), ("Group", "grp"), ("Practitioner", "dr"))
    # e2.partOf -> e1 is a match already, so it is not added again
    assert _run(store, world, ["Encounter:*"]) == every
    assert _run(store, world, ["*"]) == every
    assert _run(store, world, ["Encounter:*"], matches=("e2",)) == _keys(
        world, ("Encounter", "e1"), ("Group", "grp"), ("Practitioner", "dr"))
    assert _run(store, world, ["Encounter:*:Practitioner"]) == _keys(world, ("Practitioner", "dr"))
    # `_include:iterate=*` follows every reference of every included resource too: e1 brings its subject p1
    assert _run(store, world, ["iterate:*"], matches=("e2",)) == _keys(
        world, ("Encounter", "e1"), ("Group", "grp"), ("Practitioner", "dr"), ("Patient", "p1"))


def test_revinclude(store, world):
    assert _run(store, world, revinclude=["Observation:encounter"]) == _keys(
        world, ("Observation", "o1"), ("Observation", "o2"))
    # the Provenance of the Patient is not about these Encounters
    assert _run(store, world, revinclude=["Provenance:target"]) == _keys(world, ("Provenance", "prov"))
    assert _run(store, world, revinclude=["Provenance:target"], matches=("e2",)) == []
    assert _run(store, world, revinclude=["Provenance:target:Patient"]) == []


def test_include_of_another_source_type_needs_iterate(store, world):
    counting = CountingStore(store)
    assert _run(counting, world, ["Observation:subject"]) == []
    assert counting.reader.calls == []  # nothing to apply it to: no query at all
    plain = _run(store, world, ["Observation:subject"], ["Observation:encounter"])
    assert plain == _keys(world, ("Observation", "o1"), ("Observation", "o2"))
    # :iterate follows the subjects of the revincluded Observations; p2 is reachable only that way
    chained = _keys(world, ("Observation", "o1"), ("Observation", "o2"), ("Patient", "p1"), ("Patient", "p2"))
    assert _run(store, world, ["iterate:Observation:subject"], ["Observation:encounter"]) == chained
    assert _run(store, world, ["recurse:Observation:subject"], ["Observation:encounter"]) == chained


def test_iterate_is_bounded_by_rounds(store, world):
    # round 1: o1, o2 (revinclude); rounds 2-4 follow hasMember o4, o5, o6; o7 would need a fifth round
    counting = CountingStore(store)
    found = _run(counting, world, ["iterate:Observation:has-member"], ["Observation:encounter"])
    assert found == _keys(world, *(("Observation", n) for n in ("o1", "o2", "o4", "o5", "o6")))
    # per round one find_raw of the Observations at hand and one find of their members; the Encounters have no
    # has-member parameter, so round 1 reads no reference fields
    assert counting.reader.calls == [("find", "Observation")] + [("find_raw", "Observation"),
                                                                  ("find", "Observation")] * 3


def test_max_results_cuts(store, world):
    found = _run(store, world, ["iterate:Observation:has-member"], ["Observation:encounter"], max_results=3)
    assert found == _keys(world, *(("Observation", n) for n in ("o1", "o2", "o4")))
    assert _run(store, world, ["Encounter:*"], max_results=0) == []


def test_queries_are_batched(store, world):
    counting = CountingStore(store)
    found = _run(counting, world, ["Encounter:*", "Encounter:practitioner"],
                 ["Observation:encounter", "Provenance:target", "Provenance:agent"])
    assert found == _keys(world, ("Patient", "p1"), ("Group", "grp"), ("Practitioner", "dr"),
                          ("Observation", "o1"), ("Observation", "o2"), ("Provenance", "prov"))
    # one read of the matches' reference fields, one find per target type (e1 of e2.partOf is a match: no query),
    # one find per revinclude source type (Provenance target and agent in one query)
    assert sorted(counting.reader.calls) == [
        ("find", "Group"), ("find", "Observation"), ("find", "Patient"), ("find", "Practitioner"),
        ("find", "Provenance"), ("find_raw", "Encounter")]


def test_restrict_narrows_included_types(store, world):
    def restrict(rtype: str) -> dict | None:
        if rtype == "Practitioner":
            return None
        return {"comp": f"Patient/{world['p2']}"} if rtype == "Observation" else {}

    found = _run(store, world, ["Encounter:*"], ["Observation:encounter"], restrict=restrict)
    assert found == _keys(world, ("Patient", "p1"), ("Group", "grp"), ("Observation", "o2"))


@pytest.mark.parametrize(("include", "revinclude", "name"), [
    (["Nope:subject"], [], "_include"),
    (["Encounter:nope"], [], "_include"),
    (["Encounter:status"], [], "_include"),  # a token parameter
    (["Encounter:subject:Practitioner"], [], "_include"),  # not a target of Encounter.subject
    (["Encounter:subject:Nope"], [], "_include"),
    (["Encounter:*:Questionnaire"], [], "_include"),
    (["Encounter"], [], "_include"),
    (["Encounter:subject:Patient:x"], [], "_include"),
    ([""], [], "_include"),
    ([], ["*"], "_revinclude"),
    ([], ["Observation:code"], "_revinclude"),
    ([], ["iterate:Observation"], "_revinclude"),
])
def test_bad_directives_are_400(include, revinclude, name):
    with pytest.raises(BadRequest) as err:
        parse_includes("Encounter", include, revinclude)
    assert err.value.status == 400
    assert err.value.issues[0].expression == [name]


def test_self_link_params_are_canonical():
    plan = parse_includes("Encounter", [" Encounter:subject:Patient", "recurse:Observation:subject",
                                        "iterate:Observation:subject", "*"],
                          ["Provenance:target", "Provenance:target"])
    assert plan.self_link_params() == [
        ("_include", "Encounter:subject:Patient"), ("_include:iterate", "Observation:subject"), ("_include", "*"),
        ("_revinclude", "Provenance:target")]
    assert not parse_includes("Encounter", [], [])
    assert isinstance(plan, IncludePlan) and plan


def test_includes_from_query_pairs():
    plan = includes_from_query("Encounter", [("status", "finished"), ("_include", "Encounter:subject"),
                                             ("_include:recurse", "Observation:subject"),
                                             ("_revinclude:iterate", "Observation:encounter")])
    assert plan.self_link_params() == [("_include", "Encounter:subject"), ("_include:iterate", "Observation:subject"),
                                       ("_revinclude:iterate", "Observation:encounter")]
    with pytest.raises(BadRequest) as err:
        includes_from_query("Encounter", [("_include:deep", "Encounter:subject")])
    assert err.value.issues[0].expression == ["_include"]

"""Seed data: deterministic, valid, referentially whole, and loaded through a real server twice without change."""

from __future__ import annotations

import itertools
import os
import stat
from collections import Counter
from datetime import date

import orjson
import pytest
import requests
from argon2 import PasswordHasher
from click.testing import CliRunner
from pymongo import MongoClient

from fhirserver.cli import main
from fhirserver.interactions.versions import check_valid
from fhirserver.resources.proxies import USER_SYSTEM
from fhirserver.store.database import Store
from seed_data import accounts, generator
from seed_data.common import SCALES
from seed_data.demo import is_empty
from seed_data.loader import KEYED_TYPES, HttpSink, StoreSink, group_entries, load, transaction
from seed_data.scheduling import VISIT_MODE
from smart_auth.clients import ClientRegistry
from smart_auth.users import UserStore
from tests.servers import serve

ANCHOR = date(2026, 11, 30)
DB_NAME = "seedtest"


def _small(seed: int = 7, anchor: date = ANCHOR) -> list[dict]:
    return list(generator.resources(seed, "small", anchor))


def _refs(value):
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "reference" and isinstance(v, str):
                yield v
            else:
                yield from _refs(v)
    elif isinstance(value, list):
        for v in value:
            yield from _refs(v)


def _canonical(resources: list[dict]) -> list[bytes]:
    return sorted(orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in resources)


@pytest.fixture(scope="module")
def small() -> list[dict]:
    return _small()


def test_same_seed_same_data_byte_for_byte(small):
    assert _canonical(small) == _canonical(_small())
    assert _canonical(small) != _canonical(_small(seed=8))
    # The anchor is an input: another day moves the dates (and the slots' days), not the members.
    moved = _small(anchor=date(2026, 12, 7))
    assert _canonical(moved) != _canonical(small)
    assert {r["id"] for r in moved if r["resourceType"] == "Patient"} == \
        {r["id"] for r in small if r["resourceType"] == "Patient"}


def test_every_small_resource_validates(small):
    for r in small:
        check_valid(r, r["resourceType"], r["id"])  # the server's write-path validation; raises 422 on any error


def test_ids_unique_and_every_reference_resolves(small):
    keys = Counter(f"{r['resourceType']}/{r['id']}" for r in small)
    assert max(keys.values()) == 1
    dangling = [(r["id"], ref) for r in small for ref in _refs(r) if ref not in keys]
    assert dangling == []


def test_groups_refer_outside_only_to_keyed_resources():
    """The loader POSTs non-keyed resources under urn:uuids: nothing outside their group may point at them."""
    for group in generator.groups(7, "small", ANCHOR):
        inside = {f"{r['resourceType']}/{r['id']}" for r in group}
        for r in group:
            for ref in _refs(r):
                assert ref in inside or ref.split("/")[0] in KEYED_TYPES, (r["id"], ref)
        entries = group_entries(group)
        assert entries[0]["request"]["method"] == "PUT"
        local = {e["fullUrl"] for e in entries if e["request"]["method"] == "POST"}
        assert all(ref in local or not ref.startswith("urn:") for e in entries for ref in _refs(e["resource"]))


def test_small_has_the_whole_health_system(small):
    by_type = Counter(r["resourceType"] for r in small)
    for rtype in ("Organization", "Location", "Practitioner", "PractitionerRole", "Schedule", "Slot", "Patient",
                  "RelatedPerson", "Coverage", "MedicationRequest", "Observation", "DiagnosticReport", "Encounter",
                  "DocumentReference", "Immunization", "Condition", "AllergyIntolerance", "Claim",
                  "ExplanationOfBenefit", "Communication", "Questionnaire", "QuestionnaireResponse"):
        assert by_type[rtype] > 0, rtype
    assert 20 <= by_type["Patient"] < 30
    orgs = {r["id"]: r for r in small if r["resourceType"] == "Organization"}
    assert "org-pharm-mail" in orgs and "org-insurer" in orgs
    specialties = {c["code"] for r in small if r["resourceType"] == "PractitionerRole" for s in r["specialty"]
                   for c in s["coding"]}
    assert {"207Q00000X", "208000000X", "207N00000X", "207RC0000X"} <= specialties
    slots = [r for r in small if r["resourceType"] == "Slot"]
    modes = Counter(c["code"] for s in slots for t in s["serviceType"] for c in t["coding"]
                    if c["system"] == VISIT_MODE)
    assert set(modes) == {"in-person", "video", "phone"}
    starts = sorted(s["start"] for s in slots)
    assert starts[0] >= ANCHOR.isoformat() and starts[-1] < date(2027, 1, 26).isoformat()  # 8 weeks
    assert any(s["start"].startswith(ANCHOR.isoformat()) for s in slots)  # same-day
    assert {s["status"] for s in slots} <= {"free", "busy-unavailable"}
    statuses = Counter(r["status"] for r in small if r["resourceType"] == "DiagnosticReport")
    assert statuses["final"] > 0 and statuses["preliminary"] > 0
    proxies = [r for r in small if r["resourceType"] == "RelatedPerson"]
    assert all(r["identifier"][1]["system"] == USER_SYSTEM for r in proxies)
    rel = {c["code"] for r in proxies for x in r["relationship"] for c in x["coding"]}
    assert rel & {"MTH", "FTH"} and rel & {"SON", "DAU"}  # parents of minors, an adult child for a parent
    meds = [r for r in small if r["resourceType"] == "MedicationRequest"]
    assert all(m["dispenseRequest"]["performer"]["reference"].startswith("Organization/org-pharm") for m in meds)
    coverage = next(r for r in small if r["resourceType"] == "Coverage")
    kinds = {c["code"] for x in coverage["costToBeneficiary"] for c in x["type"]["coding"]}
    assert {"gpvisit", "deductible", "maxoutofpocket"} <= kinds


def test_large_scale_is_large_enough():
    large = SCALES["large"]
    assert large.members >= 10_000
    w = generator.world(1, "large", ANCHOR)
    sample = list(itertools.islice(generator.member_groups(w), 60))
    members = sum(1 for g in sample for r in g if r["resourceType"] == "Patient")
    per_member = sum(len(g) for g in sample) / members
    assert per_member * large.members >= 1_000_000
    assert generator.estimate("large") >= 1_000_000


# -- through a real server -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(ferretdb, tmp_path_factory):
    proc = serve(ferretdb.uri, tmp_path_factory.mktemp("seed") / "server.log", FHIR_DB_NAME=DB_NAME)
    yield proc
    proc.stop()


def _snapshot(uri: str) -> dict[str, list]:
    """Every current resource's (id, version), by type, and the number of history records."""
    db = MongoClient(uri)[DB_NAME]
    out: dict[str, list] = {}
    for name in db.list_collection_names():
        if name[:1].isupper():
            out[name] = sorted((d["_id"], d["v"]) for d in db[name].find({}, {"_id": 1, "v": 1}))
    out["history"] = [db["history"].count_documents({})] if "history" in db.list_collection_names() else []
    return out


def test_load_small_twice_through_a_server(server, ferretdb, small):
    groups = list(generator.groups(7, "small", ANCHOR))
    first = load(groups, HttpSink(server.base), batch_size=250, workers=2)
    assert first.total_written == len(small) and first.skipped == 0
    before = _snapshot(ferretdb.uri)
    assert sum(len(v) for k, v in before.items() if k != "history") == len(small)
    # the second time through the command line: nothing written, nothing changed
    second = CliRunner().invoke(main, ["seed", "--url", server.base, "--seed", "7", "--today", ANCHOR.isoformat(),
                                       "--no-accounts", "--batch", "100", "--workers", "1"])
    assert second.exit_code == 0, second.output
    assert f"0 resources written, {len(small)} already present" in second.output
    assert _snapshot(ferretdb.uri) == before

    # Keyed resources are at their ids; the others were created under server ids and reference them correctly.
    patient = requests.get(f"{server.base}/Patient/pat-000001", timeout=30)
    assert patient.status_code == 200
    expected = sum(1 for r in small if r["resourceType"] == "Observation"
                   and r["subject"]["reference"] == "Patient/pat-000001")
    found = requests.get(f"{server.base}/Observation", params={"subject": "Patient/pat-000001", "_count": 500},
                         timeout=60).json()
    assert len(found.get("entry", [])) == expected > 0
    tested = next(r for r in small if r["resourceType"] == "DiagnosticReport")["subject"]["reference"]
    reports = [r for r in small if r["resourceType"] == "DiagnosticReport" and r["subject"]["reference"] == tested]
    bundle = requests.get(f"{server.base}/DiagnosticReport", params={"subject": tested, "_count": 500,
                                                                     "_include": "DiagnosticReport:result"},
                          timeout=60).json()
    kinds = Counter(e["resource"]["resourceType"] for e in bundle["entry"])
    # the reports' results point at the Observations created with them, under the server's ids
    assert kinds == {"DiagnosticReport": len(reports), "Observation": sum(len(r["result"]) for r in reports)}
    related = next(r for r in small if r["resourceType"] == "RelatedPerson")
    username = related["identifier"][1]["value"]
    proxy = requests.get(f"{server.base}/RelatedPerson", params={"identifier": f"{USER_SYSTEM}|{username}"},
                         timeout=30).json()
    cared_for = {e["resource"]["patient"]["reference"] for e in proxy["entry"]}
    assert related["patient"]["reference"] in cared_for  # the server resolved it to the Patient's keyed id


def test_demo_accounts_and_clients(ferretdb, tmp_path):
    db = MongoClient(ferretdb.uri)["seedaccounts"]
    light = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    made = accounts.create_accounts(db, 7, "small", ANCHOR, tmp_path / "keys", hasher=light)
    assert made.created_users == len(made.users) > 3 and made.created_clients == 3
    users = UserStore(db, hasher=light)
    member = next(a for a in made.users if "proxy for" in a.who)
    assert users.verify_password(member.username, accounts.DEMO_PASSWORD, "127.0.0.1").ok
    clinician = next(a for a in made.users if a.fhir_user.startswith("Practitioner/"))
    assert "admin" in users.get(clinician.username).roles
    # A proxy's username is the identifier of the RelatedPerson records naming the patients they act for.
    related = [r for r in generator.resources(7, "small", ANCHOR) if r["resourceType"] == "RelatedPerson"]
    assert any(r["identifier"][1]["value"] == member.username for r in related)
    registry = ClientRegistry(db)
    portal = registry.get(accounts.PORTAL_CLIENT)
    assert portal.token_endpoint_auth_method == "none"
    confidential = registry.get(accounts.CONFIDENTIAL_CLIENT)
    assert registry.check_secret(confidential, accounts.DEMO_CLIENT_SECRET)
    backend = registry.get(accounts.BACKEND_CLIENT)
    assert backend.grant_types == ("client_credentials",)
    private = orjson.loads(made.key_file.read_bytes())["keys"][0]
    assert "d" in private and private["kid"] == backend.jwks["keys"][0]["kid"]
    assert stat.S_IMODE(os.stat(made.key_file).st_mode) == 0o600
    again = accounts.create_accounts(db, 7, "small", ANCHOR, tmp_path / "keys", hasher=light)
    assert again.created_users == 0 and again.created_clients == 0
    assert registry.get(accounts.BACKEND_CLIENT).jwks == backend.jwks


def test_in_process_sink_and_conditional_creates(ferretdb):
    """`fhirserver run` loads through the Transaction interaction in-process; `--conditional` adds ifNoneExist, so
    even a batch sent again past the presence check creates nothing new."""
    store = Store(ferretdb.uri, "seedstore")
    assert is_empty(store)
    chosen = [next(generator.groups(7, "small", ANCHOR))]
    chosen.append(next(g for g in generator.groups(7, "small", ANCHOR) if g[0]["resourceType"] == "Patient"))
    sink = StoreSink(store, "http://127.0.0.1:9/fhir")
    first = load(chosen, sink, conditional=True)
    assert first.total_written == sum(len(g) for g in chosen) and not is_empty(store)

    def counts() -> dict[str, int]:
        return {t: store.db[t].count_documents({}) for t in {r["resourceType"] for g in chosen for r in g}}

    before = counts()
    sink.write(transaction(chosen[1:], conditional=True))  # bypasses the presence check on purpose
    assert counts() == before


def test_run_loads_the_demo_once(ferretdb, tmp_path):
    """What `fhirserver run` does before serving: the small demo and its accounts into an empty database, once."""
    from fhirserver.config import Settings
    from seed_data.demo import seed_if_empty

    settings = Settings.from_env({"MONGODB_URI": ferretdb.uri, "FHIR_DB_NAME": "seeddemo",
                                  "FHIR_STATE_DIR": str(tmp_path)})
    lines = seed_if_empty(settings, today=ANCHOR)
    assert lines[0].startswith("demo data: ") and " 0 already present" in lines[0]
    assert any(accounts.DEMO_PASSWORD in line for line in lines)
    assert (tmp_path / "keys" / f"{accounts.BACKEND_CLIENT}.private.jwks.json").exists()
    again = seed_if_empty(settings, today=ANCHOR)
    assert not any(line.startswith("demo data") for line in again)  # not empty any more: nothing loaded
    db = MongoClient(ferretdb.uri)["seeddemo"]
    assert db["Patient"].count_documents({}) == sum(1 for r in generator.resources(1, "small", ANCHOR)
                                                    if r["resourceType"] == "Patient")

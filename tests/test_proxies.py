"""Proxy relationships: own record, current proxies, and expired or inactive ones left out at once."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from fhirserver.interactions import create, update
from fhirserver.resources.proxies import USER_SYSTEM, patients_for
from fhirserver.store.database import Store

BASE = "http://test/fhir"


def _patient(store: Store, family: str) -> str:
    body = {"resourceType": "Patient", "name": [{"given": ["Kid"], "family": family}]}
    return create.create(store, BASE, "Patient", body).stored.id


def _proxy(store: Store, username: str, patient: str, **extra) -> str:
    body = {"resourceType": "RelatedPerson", "patient": {"reference": f"Patient/{patient}"},
            "identifier": [{"system": USER_SYSTEM, "value": username}], **extra}
    return create.create(store, BASE, "RelatedPerson", body).stored.id


def test_parent_of_two_children_and_expiry(ferretdb):
    store = Store(ferretdb.uri, f"proxy{uuid.uuid4().hex[:8]}")
    mum = _patient(store, "Mum")
    kid1, kid2, old = _patient(store, "One"), _patient(store, "Two"), _patient(store, "Old")
    _proxy(store, "mum", kid1, period={"start": "2020-01-01"})
    rp2 = _proxy(store, "mum", kid2)
    _proxy(store, "mum", old, period={"start": "2010-01-01", "end": "2019-12-31"})
    _proxy(store, "someone-else", kid1)
    now = datetime(2026, 11, 29, tzinfo=UTC)
    got = patients_for(store, "mum", f"Patient/{mum}", now)
    assert got[0][0] == f"Patient/{mum}"
    assert {ref for ref, _ in got[1:]} == {f"Patient/{kid1}", f"Patient/{kid2}"}
    assert dict(got)[f"Patient/{kid1}"] == "Kid One"
    # revoking (active: false) takes effect at the next check
    update.update(store, BASE, "RelatedPerson", rp2, {
        "resourceType": "RelatedPerson", "id": rp2, "active": False, "patient": {"reference": f"Patient/{kid2}"},
        "identifier": [{"system": USER_SYSTEM, "value": "mum"}]})
    assert f"Patient/{kid2}" not in dict(patients_for(store, "mum", f"Patient/{mum}", now))
    # before the start of a proxy period it does not count either
    assert f"Patient/{kid1}" not in dict(patients_for(store, "mum", f"Patient/{mum}", datetime(2019, 1, 1, tzinfo=UTC)))


def test_account_that_is_a_related_person(ferretdb):
    store = Store(ferretdb.uri, f"proxy{uuid.uuid4().hex[:8]}")
    dad = _patient(store, "Dad")
    carer = create.create(store, BASE, "RelatedPerson", {
        "resourceType": "RelatedPerson", "patient": {"reference": f"Patient/{dad}"}}).stored.id
    assert patients_for(store, "son", f"RelatedPerson/{carer}") == [(f"Patient/{dad}", "Kid Dad")]

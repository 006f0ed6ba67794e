"""AuditEvents: queued, written in the background, in the patient's compartment, readable by that patient."""

from __future__ import annotations

import uuid

from werkzeug.datastructures import MultiDict

from fhirserver.api.auditing import interaction_of, patients_concerned
from fhirserver.audit import AccessRecord, AuditTrail, audit_event
from fhirserver.interactions import search
from fhirserver.interactions.guard import Guard
from fhirserver.resources.validation import validate_resource
from fhirserver.store.database import Store
from smart_auth.access import Access


def test_interactions_from_requests():
    assert interaction_of("GET", "/fhir/Patient/1") == "read"
    assert interaction_of("GET", "/fhir/Patient/1/_history/2") == "vread"
    assert interaction_of("GET", "/fhir/Patient/1/_history") == "history"
    assert interaction_of("GET", "/fhir/Observation") == "search"
    assert interaction_of("POST", "/fhir/Observation/_search") == "search"
    assert interaction_of("POST", "/fhir/Observation") == "create"
    assert interaction_of("POST", "/fhir") == "transaction"
    assert interaction_of("PUT", "/fhir/Patient/1") == "update"
    assert interaction_of("POST", "/fhir/Patient/$validate") == "operation"


def test_patients_concerned():
    launch = Access("app", "patient/*.rs", "authorization_code", patient="p1")
    assert patients_concerned(launch, "/fhir/Observation", MultiDict()) == ("Patient/p1",)
    proxy = Access("portal", "user/*.rs", "authorization_code", fhir_user="Patient/mum",
                   proxied_patients=("Patient/mum", "Patient/k1", "Patient/k2"))
    assert patients_concerned(proxy, "/fhir/Observation", MultiDict({"patient": "k2"})) == ("Patient/k2",)
    assert patients_concerned(proxy, "/fhir/Patient/k1", MultiDict()) == ("Patient/k1",)
    assert set(patients_concerned(proxy, "/fhir/Observation", MultiDict())) == {"Patient/mum", "Patient/k1",
                                                                               "Patient/k2"}


def test_events_are_valid_and_readable_by_the_patient(ferretdb):
    store = Store(ferretdb.uri, f"audit{uuid.uuid4().hex[:8]}")
    trail = AuditTrail(store, interval=0.05)
    for n in range(25):
        trail.record(AccessRecord("read", f"GET /fhir/Observation/{n}", 200, "app", "alice", "Patient/p1",
                                  ("Patient/p1",)))
    trail.record(AccessRecord("read", "GET /fhir/Patient/p2", 200, "app", None, None, ("Patient/p2",)))
    trail.flush()
    assert not validate_resource(audit_event(AccessRecord("search", "GET /fhir/X", 500, "c", None, None, ())))
    mine = Guard(Access("app", "patient/AuditEvent.rs", "authorization_code", patient="p1"))
    got = search.search(store, "http://t/fhir", "AuditEvent", "", search.Paging(100, 100), guard=mine)
    assert got.body["total"] == 25
    theirs = Guard(Access("app", "patient/AuditEvent.rs", "authorization_code", patient="p2"))
    assert search.search(store, "http://t/fhir", "AuditEvent", "", search.Paging(100, 100),
                         guard=theirs).body["total"] == 1

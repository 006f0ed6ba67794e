"""The SMART Python client `fhirclient` (4.x, models generated from FHIR 4.0.1) drives the server, and every resource
it reads is parsed by its strict R4 models (`strict=True`: an unknown element, a wrong JSON type or a missing
required element raises `FHIRValidationError`).

Covered: the CapabilityStatement, create / read / vread / update / delete through the models, Patient, Observation,
Encounter and Condition, searches through `Model.where(...)` with `_include` and paging (`perform_iter`), searchset,
history and transaction-response Bundles, OperationOutcomes of errors and of `$validate`, and a whole Synthea patient
posted as a transaction Bundle and read back resource by resource and by compartment.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from fhirclient.client import FHIRClient
from fhirclient.models.bundle import Bundle
from fhirclient.models.capabilitystatement import CapabilityStatement
from fhirclient.models.condition import Condition
from fhirclient.models.encounter import Encounter
from fhirclient.models.fhirabstractresource import FHIRAbstractResource
from fhirclient.models.fhirelementfactory import FHIRElementFactory
from fhirclient.models.fhirsearch import FHIRSearch
from fhirclient.models.observation import Observation
from fhirclient.models.operationoutcome import OperationOutcome
from fhirclient.models.patient import Patient
from fhirclient.server import FHIRNotFoundException, FHIRServer

from tests.servers import REPO, ServerProcess, serve

SYNTHEA = REPO.parent / "shared" / "data" / "synthea-r4"
SYNTHEA_PATIENT = "Clemente_Kreiger_1484a42d-0eaf-4654-9cbf-6b050a5cd73b.json"
MRN = "urn:test:fhirclient"
UCUM = "http://unitsofmeasure.org"


def bundle(data: dict) -> Bundle:
    """A Bundle the server answered, parsed with fhirclient's strict R4 models."""
    return Bundle(data)


@pytest.fixture
def smart(server) -> FHIRServer:
    """fhirclient's server object on the shared test server (no SMART authorization: open endpoint)."""
    return FHIRServer(None, base_uri=server.base)


def strict(data: dict) -> FHIRAbstractResource:
    """The JSON of any resource parsed with fhirclient's strict R4 model of its type."""
    return FHIRElementFactory.instantiate(data["resourceType"], data)


def read_strict(smart: FHIRServer, path: str) -> FHIRAbstractResource:
    """GET `[base]/path` and parse the answer strictly."""
    return strict(smart.request_json(path))


def pages(search: FHIRSearch, smart: FHIRServer) -> list[Bundle]:
    """Every page of a search (`perform_iter` follows the next links; each page is a strict Bundle)."""
    found = list(search.perform_iter(smart))
    assert len(found) < 100
    return found


def _patient_json(family: str) -> dict:
    return {"resourceType": "Patient", "identifier": [{"system": MRN, "value": uuid.uuid4().hex}],
            "active": True, "name": [{"use": "official", "family": family, "given": ["Client", "Q"]}],
            "telecom": [{"system": "phone", "value": "555-0100", "use": "home"}], "gender": "female",
            "birthDate": "1975-04-03", "address": [{"line": ["1 Main St"], "city": "Springfield", "state": "IL",
                                                    "postalCode": "62701", "country": "US"}],
            "maritalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
                                          "code": "M"}]},
            "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "en-US"}]},
                               "preferred": True}]}


def _create(smart: FHIRServer, resource: FHIRAbstractResource) -> FHIRAbstractResource:
    """Create through the model and parse the server's answer strictly with the same model."""
    answer = resource.create(smart)
    assert answer is not None, "the server answered a create without a body"
    created = resource.__class__(answer)
    assert created.id and created.meta.versionId == "1"
    return created


@pytest.fixture
def patient(smart) -> Iterator[Patient]:
    """A Patient created through the model."""
    yield _create(smart, Patient(_patient_json(f"Fhirclient{uuid.uuid4().hex[:10]}"), strict=True))


def test_capability_statement_parses_strictly(smart):
    smart.get_capability()
    statement = smart.capabilityStatement
    assert isinstance(statement, CapabilityStatement)
    assert statement.fhirVersion == "4.0.1" and statement.kind == "instance"
    by_type = {r.type: r for r in statement.rest[0].resource}
    assert {"Patient", "Observation", "Encounter", "Condition"} <= set(by_type)
    assert {p.name for p in by_type["Observation"].searchParam} >= {"code", "subject", "date", "value-quantity"}
    assert {i.code for i in statement.rest[0].interaction} >= {"transaction", "batch"}


def test_patient_create_read_update_vread_history_delete(smart, patient):
    read = Patient.read(patient.id, smart)
    assert read.as_json() == patient.as_json()
    assert read.name[0].family == patient.name[0].family and read.birthDate.isostring == "1975-04-03"

    read.gender = "other"
    read.name[0].given = ["Renamed"]
    updated = Patient(read.update(smart))
    assert updated.meta.versionId == "2" and updated.gender == "other"
    assert Patient.read(patient.id, smart).name[0].given == ["Renamed"]

    first = read_strict(smart, f"Patient/{patient.id}/_history/1")
    assert isinstance(first, Patient) and first.gender == "female" and first.meta.versionId == "1"
    history = bundle(smart.request_json(f"Patient/{patient.id}/_history"))
    assert history.type == "history"
    assert [e.resource.meta.versionId for e in history.entry] == ["2", "1"]
    assert all(isinstance(e.resource, Patient) for e in history.entry)

    read.delete(smart)
    with pytest.raises(requests.HTTPError) as gone:
        Patient.read(patient.id, smart)
    assert gone.value.response.status_code == 410
    assert isinstance(strict(gone.value.response.json()), OperationOutcome)
    with pytest.raises(FHIRNotFoundException) as missing:
        Patient.read(f"no-such-{uuid.uuid4().hex}", smart)
    outcome = strict(missing.value.response.json())
    assert isinstance(outcome, OperationOutcome) and outcome.issue[0].code == "not-found"


def test_observation_encounter_condition_round_trip(smart, patient):
    subject = {"reference": f"Patient/{patient.id}"}
    encounter = _create(smart, Encounter({
        "resourceType": "Encounter", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "type": [{"coding": [{"system": "http://snomed.info/sct", "code": "185349003"}], "text": "Check up"}],
        "subject": subject, "period": {"start": "2024-03-01T09:00:00Z", "end": "2024-03-01T09:30:00Z"},
        "reasonCode": [{"text": "annual"}]}, strict=True))
    condition = _create(smart, Condition({
        "resourceType": "Condition",
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                       "code": "active"}]},
        "verificationStatus": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category",
                                  "code": "encounter-diagnosis"}]}],
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}], "text": "Diabetes"},
        "subject": subject, "encounter": {"reference": f"Encounter/{encounter.id}"},
        "onsetDateTime": "2020-05-06", "recordedDate": "2024-03-01"}, strict=True))
    observation = _create(smart, Observation({
        "resourceType": "Observation", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}], "text": "Blood pressure"},
        "subject": subject, "encounter": {"reference": f"Encounter/{encounter.id}"},
        "effectiveDateTime": "2024-03-01T09:10:00+01:00", "issued": "2024-03-01T09:15:00.123Z",
        "component": [
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
             "valueQuantity": {"value": 120.5, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}},
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
             "valueQuantity": {"value": 80, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}}],
        "interpretation": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "N"}]}],
        "referenceRange": [{"low": {"value": 90, "unit": "mmHg"}, "high": {"value": 130, "unit": "mmHg"}}]},
        strict=True))
    for model, created in ((Encounter, encounter), (Condition, condition), (Observation, observation)):
        read = model.read(created.id, smart)
        assert read.as_json() == created.as_json()
    assert Observation.read(observation.id, smart).component[0].valueQuantity.value == 120.5
    assert Condition.read(condition.id, smart).as_json()["onsetDateTime"] == "2020-05-06"


def test_search_with_where_include_and_paging(smart, patient):
    subject = {"reference": f"Patient/{patient.id}"}
    codes = [f"code-{i:02d}" for i in range(12)]
    transaction = Bundle({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "POST", "url": "Condition"},
         "resource": {"resourceType": "Condition", "subject": subject,
                      "code": {"coding": [{"system": "urn:test:codes", "code": code}]}}} for code in codes]},
        strict=True)
    answer = bundle(transaction.create(smart))
    assert answer.type == "transaction-response"
    assert [e.response.status for e in answer.entry] == ["201 Created"] * 12

    search = Condition.where(struct={"subject": f"Patient/{patient.id}", "_count": "5"})
    found = pages(search, smart)
    assert [len(b.entry) for b in found] == [5, 5, 2]
    assert found[0].total == 12
    conditions = list(search.perform_resources_iter(smart))
    assert all(isinstance(c, Condition) for c in conditions)
    assert sorted(c.code.coding[0].code for c in conditions) == codes

    one = Condition.where(struct={"subject": f"Patient/{patient.id}", "code": "urn:test:codes|code-07"})
    assert [c.code.coding[0].code for c in one.perform_resources_iter(smart)] == ["code-07"]
    with_patient = Condition.where(struct={"code": "urn:test:codes|code-03", "subject": f"Patient/{patient.id}"})
    kinds = Counter(type(r).__name__ for r in with_patient.include("subject").perform_resources_iter(smart))
    assert kinds == {"Condition": 1, "Patient": 1}
    reverse = Patient.where(struct={"_id": patient.id}).include("subject", Condition, reverse=True)
    assert Counter(type(r).__name__ for r in reverse.perform_resources_iter(smart)) == {"Patient": 1, "Condition": 12}
    found_patient = Patient.where(struct={"family": patient.name[0].family, "birthdate": "1975-04-03"})
    assert [p.id for p in found_patient.perform_resources_iter(smart)] == [patient.id]
    searchset = Bundle.read_from(f"Condition?subject=Patient/{patient.id}&_count=0", smart)
    assert searchset.type == "searchset" and searchset.total == 12 and not searchset.entry


def test_validate_outcomes_parse_strictly(smart):
    good = Patient(_patient_json("Valid"), strict=True)
    outcome = strict(smart.post_json("Patient/$validate", good.as_json()).json())
    assert isinstance(outcome, OperationOutcome)
    assert not [i for i in outcome.issue if i.severity in ("error", "fatal")]
    response = requests.post(f"{smart.base_uri}Patient/$validate",
                             json={"resourceType": "Patient", "gender": "neither", "birthDate": "soon"},
                             headers={"Content-Type": "application/fhir+json"})
    bad = strict(response.json())
    assert isinstance(bad, OperationOutcome)
    assert len([i for i in bad.issue if i.severity == "error"]) >= 2
    refused = requests.post(f"{smart.base_uri}Patient", json={"resourceType": "Patient", "gender": "neither"},
                            headers={"Content-Type": "application/fhir+json"})
    assert refused.status_code in (400, 422) and isinstance(strict(refused.json()), OperationOutcome)


def _synthea_bundle() -> dict:
    path = SYNTHEA / SYNTHEA_PATIENT
    if not path.exists():
        pytest.skip(f"sample data not found at {path}")
    return json.loads(Path(path).read_text())


def test_synthea_patient_transaction_reads_back_strictly(smart):
    sample = Bundle(_synthea_bundle(), strict=True)  # the sample itself is valid for the strict models
    sent = Counter(e.resource.resource_type for e in sample.entry)
    answer = bundle(sample.create(smart))
    assert answer.type == "transaction-response" and len(answer.entry) == len(sample.entry)
    assert {e.response.status for e in answer.entry} == {"201 Created"}

    locations = [e.response.location.split("/fhir/", 1)[1].split("/_history")[0] for e in answer.entry]
    read_back = [read_strict(smart, location) for location in locations]
    assert Counter(r.resource_type for r in read_back) == sent
    for original, stored in zip(sample.entry, read_back, strict=True):
        assert type(stored) is type(original.resource)
        assert stored.meta.versionId == "1"

    patient_id = next(r.id for r in read_back if r.resource_type == "Patient")
    in_compartment: Counter[str] = Counter()
    for rtype in ("Observation", "Encounter", "Condition", "Immunization", "DiagnosticReport", "Procedure",
                  "Claim", "ExplanationOfBenefit"):
        first = Bundle.read_from(f"Patient/{patient_id}/{rtype}?_count=10", smart)
        for page in [first, *_following(first, smart)]:
            for entry in page.entry or []:
                assert entry.resource.resource_type == rtype
                in_compartment[rtype] += 1
    assert in_compartment == {t: n for t, n in sent.items() if t not in ("Patient", "Organization", "Practitioner")}


def _following(bundle: Bundle, smart: FHIRServer) -> Iterator[Bundle]:
    """The pages after `bundle`, by its next links, each parsed as a strict Bundle."""
    while True:
        next_url = next((link.url for link in bundle.link or [] if link.relation == "next"), None)
        if next_url is None:
            return
        bundle = Bundle(smart.request_json(next_url))
        yield bundle


def test_history_bundle_parses_strictly(smart, patient):
    Bundle.read_from(f"Patient/{patient.id}/_history", smart)


def test_transaction_response_parses_strictly(smart):
    transaction = Bundle({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "POST", "url": "Patient"}, "resource": _patient_json("Transaction")}]})
    Bundle(transaction.create(smart))


def test_batch_response_parses_strictly(smart):
    batch = Bundle({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "POST", "url": "Patient"}, "resource": _patient_json("Batch")}]})
    Bundle(batch.create(smart))


@pytest.fixture(scope="module")
def secured_server(ferretdb, tmp_path_factory) -> Iterator[ServerProcess]:
    """A server with SMART authorization on."""
    proc = serve(ferretdb.uri, tmp_path_factory.mktemp("fhirclient-auth") / "server.log",
                 FHIR_DB_NAME="fhirclient_auth", FHIR_AUTH="on")
    yield proc
    proc.stop()


def test_smart_endpoints_discovered_from_the_capability_statement(secured_server):
    """fhirclient finds the OAuth endpoints only in rest.security's oauth-uris extension, parsing the statement
    strictly, and builds a PKCE (S256) authorization URL for this server as audience."""
    client = FHIRClient(settings={"app_id": "fhirclient-test", "api_base": secured_server.base,
                                  "redirect_uri": "http://localhost:9999/callback", "scope": "launch/patient openid"})
    statement = client.server.capabilityStatement
    assert isinstance(statement, CapabilityStatement) and statement.rest[0].security is not None
    url = client.authorize_url
    assert url is not None, "fhirclient found no authorize endpoint in the CapabilityStatement"
    smart = requests.get(f"{secured_server.base}/.well-known/smart-configuration", timeout=60).json()
    assert url.startswith(smart["authorization_endpoint"] + "?")
    assert "code_challenge_method=S256" in url and "aud=" in url
    assert client.server.auth._token_uri == smart["token_endpoint"]  # no public accessor in fhirclient 4.4

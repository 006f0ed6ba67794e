"""fhirpy's synchronous client (`SyncFHIRClient`) drives the server over HTTP: CRUD, searches with several
parameters, paging through every page, `fetch_all`, `count`, conditional create / update / delete, references and
`$validate`.

fhirpy speaks some dialects of its own that FHIR R4 does not define; the tests use its standard paths and say where:
- `get_or_create()` and `resource.create(**search)` send the search as a query string on `POST [type]?...` (Aidbox
  style) instead of the `If-None-Exist` header: R4 conditional create is done here with the header, through
  `extra_headers`.
- `patch()` sends a partial resource as `application/json` (a merge patch); R4 knows JSON Patch and FHIRPath Patch
  only, so the server must refuse it with an OperationOutcome, not apply or crash.
"""

from __future__ import annotations

import uuid

import pytest
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import MultipleResourcesFound, OperationOutcome, ResourceNotFound
from fhirpy.base.searchset import Raw
from fhirpy.lib import SyncFHIRResource

MRN = "urn:test:fhirpy"


@pytest.fixture
def client(server) -> SyncFHIRClient:
    """A fhirpy client on the shared test server."""
    return SyncFHIRClient(server.base, requests_config={"timeout": 60})


@pytest.fixture
def marker() -> str:
    """A family name no other test uses."""
    return f"Fhirpy{uuid.uuid4().hex[:12]}"


def _patient(client: SyncFHIRClient, family: str, mrn: str | None = None, **extra) -> SyncFHIRResource:
    """An unsaved Patient with an identifier of ours."""
    return client.resource("Patient", identifier=[{"system": MRN, "value": mrn or uuid.uuid4().hex}],
                           name=[{"family": family, "given": ["Py"]}], gender="male", birthDate="1980-01-02", **extra)


def _observation(client: SyncFHIRClient, subject: SyncFHIRResource, value: float,
                 code: str = "8867-4") -> SyncFHIRResource:
    """An unsaved heart-rate Observation of `subject`."""
    return client.resource("Observation", status="final",
                           code={"coding": [{"system": "http://loinc.org", "code": code}]},
                           subject=subject.to_reference(), effectiveDateTime="2024-02-03T04:05:06Z",
                           valueQuantity={"value": value, "unit": "/min", "system": "http://unitsofmeasure.org",
                                          "code": "/min"})


def test_create_read_update_delete(client, marker):
    patient = _patient(client, marker)
    patient.save()
    assert patient.id and patient["meta"]["versionId"] == "1"

    read = client.reference("Patient", patient.id).to_resource()
    assert read["name"][0]["family"] == marker
    assert read.serialize() == patient.serialize()

    read["active"] = True
    read.save()
    assert read["meta"]["versionId"] == "2"
    fetched = client.get("Patient", patient.id)
    assert fetched["active"] is True and fetched["meta"]["versionId"] == "2"

    patient.refresh()  # sends If-None-Match with the bare versionId it holds ("1"): a new version comes back
    assert patient["meta"]["versionId"] == "2" and patient["active"] is True

    read.delete()
    with pytest.raises(ResourceNotFound):
        client.get("Patient", patient.id)
    assert client.resources("Patient").search(_id=patient.id).fetch() == []


def test_search_with_several_parameters(client, marker):
    for given, gender, birth in (("Ann", "female", "1970-01-01"), ("Bob", "male", "1985-06-07"),
                                 ("Cid", "male", "1999-12-31"), ("Dee", "female", "2001-03-04")):
        client.resource("Patient", name=[{"family": marker, "given": [given]}], gender=gender,
                        birthDate=birth).save()
    people = client.resources("Patient").search(family=marker)
    assert people.count() == 4
    men_before_2000 = people.search(gender="male", birthdate__lt="2000-01-01").fetch()
    assert sorted(p["name"][0]["given"][0] for p in men_before_2000) == ["Bob", "Cid"]
    newest_first = people.sort("-birthdate").fetch()
    assert [p["birthDate"] for p in newest_first] == ["2001-03-04", "1999-12-31", "1985-06-07", "1970-01-01"]
    either = client.resources("Patient").search(family=marker, given="Ann,Dee").fetch()
    assert sorted(p["name"][0]["given"][0] for p in either) == ["Ann", "Dee"]
    assert people.search(Raw(**{"name:exact": marker.lower()})).fetch() == []
    assert people.search(birthdate__ge="1985", birthdate__le="1999").count() == 2
    only_ids = people.elements("id").fetch()
    assert all(set(p.serialize()) <= {"resourceType", "id", "meta"} for p in only_ids)


def test_search_through_references(client, marker):
    subject = _patient(client, marker)
    subject.save()
    for value in (61, 62, 63):
        _observation(client, subject, value).save()
    observations = client.resources("Observation").search(subject=subject.to_reference())
    assert observations.count() == 3
    chained = client.resources("Observation").search(subject__Patient__family=marker).fetch()
    assert len(chained) == 3
    with_patient = client.resources("Observation").search(subject=subject.id).include("Observation", "subject")
    bundle = with_patient.fetch_raw()
    kinds = sorted((e["search"]["mode"], e["resource"]["resourceType"]) for e in bundle["entry"])
    assert kinds == [("include", "Patient")] + [("match", "Observation")] * 3
    back = client.resources("Patient").search(_id=subject.id).revinclude("Observation", "subject").fetch_raw()
    assert len(back["entry"]) == 4
    has = client.resources("Patient").search(Raw(**{"_has:Observation:subject:value-quantity": "gt62"}), family=marker)
    assert [p.id for p in has.fetch()] == [subject.id]
    assert has.search(Raw(**{"_has:Observation:subject:value-quantity": "gt63"})).fetch() == []
    first = observations.sort("value-quantity").first()
    assert first["valueQuantity"]["value"] == 61
    assert first["subject"].to_resource().id == subject.id


def test_paging_through_all_pages_and_fetch_all(client, marker):
    subject = _patient(client, marker)
    subject.save()
    bundle = {"resourceType": "Bundle", "type": "transaction",
              "entry": [{"request": {"method": "POST", "url": "Observation"},
                         "resource": _observation(client, subject, 50 + i).serialize()} for i in range(23)]}
    response = client.execute("", method="post", data=bundle)
    assert response["type"] == "transaction-response" and len(response["entry"]) == 23
    expected = sorted(e["response"]["location"].split("/Observation/")[1].split("/")[0] for e in response["entry"])

    search = client.resources("Observation").search(subject=subject.to_reference()).limit(5)
    assert len(search.fetch()) == 5
    pages = []
    raw = search.fetch_raw()
    while True:
        pages.append([e["resource"]["id"] for e in raw.get("entry", [])])
        next_url = next((link["url"] for link in raw["link"] if link["relation"] == "next"), None)
        if next_url is None:
            break
        raw = client.execute(next_url, method="get")
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
    assert sorted(i for p in pages for i in p) == expected

    everything = search.fetch_all()
    assert sorted(o.id for o in everything) == expected
    assert sorted(o.id for o in search) == expected  # iterating follows the next links too
    assert search.count() == 23
    by_value = [o["valueQuantity"]["value"] for o in search.sort("-value-quantity").fetch_all()]
    assert by_value == list(range(72, 49, -1))


def test_conditional_create_with_if_none_exist(server, client, marker):
    mrn = uuid.uuid4().hex
    conditional = SyncFHIRClient(server.base, extra_headers={"If-None-Exist": f"identifier={MRN}|{mrn}"},
                                 requests_config={"timeout": 60})
    first = _patient(conditional, marker, mrn)
    first.save()
    again = _patient(conditional, marker, mrn)
    again.save()
    assert again.id == first.id
    assert client.resources("Patient").search(identifier=f"{MRN}|{mrn}").count() == 1
    _patient(client, marker, mrn).save()
    with pytest.raises(MultipleResourcesFound):  # 412: the condition matches two
        _patient(conditional, marker, mrn).save()


def test_conditional_update_and_delete(client, marker):
    mrn = uuid.uuid4().hex
    by_mrn = client.resources("Patient").search(identifier=f"{MRN}|{mrn}")
    created, was_created = by_mrn.update(_patient(client, marker, mrn))
    assert was_created and created["meta"]["versionId"] == "1"
    updated, was_created = by_mrn.update(_patient(client, marker, mrn, active=False))
    assert not was_created and updated.id == created.id and updated["meta"]["versionId"] == "2"
    assert by_mrn.get().id == created.id

    by_mrn.delete()
    with pytest.raises(ResourceNotFound):
        client.get("Patient", created.id)
    with pytest.raises(ResourceNotFound):
        by_mrn.get()

    twin = uuid.uuid4().hex
    _patient(client, marker, twin).save()
    _patient(client, marker, twin).save()
    with pytest.raises(MultipleResourcesFound):
        client.resources("Patient").search(identifier=f"{MRN}|{twin}").delete()


def test_validate_and_merge_patch_refused(client, marker):
    patient = _patient(client, marker)
    assert patient.is_valid()
    broken = client.resource("Patient", gender="not-a-gender")
    assert not broken.is_valid()
    with pytest.raises(OperationOutcome) as refused:
        broken.save()
    assert refused.value.resource["issue"][0]["severity"] == "error"

    patient.save()
    with pytest.raises(OperationOutcome) as merge:
        patient.patch(active=False)
    assert merge.value.resource["resourceType"] == "OperationOutcome"
    assert client.get("Patient", patient.id)["meta"]["versionId"] == "1"

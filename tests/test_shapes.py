"""The shapes registry (store/variants.py): what one process records, another process's cached shapes see at once."""

from __future__ import annotations

from fhirserver.interactions.create import create
from fhirserver.search.query import parse
from fhirserver.store.database import Store

DB = "shapes"
BASE = "http://example.org/fhir"


def _observation(subject: str) -> dict:
    return {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": subject}}


def test_a_shape_recorded_by_another_process_reaches_a_cached_reader(ferretdb):
    reader, writer = Store(ferretdb.uri, DB), Store(ferretdb.uri, DB)  # two processes' stores
    try:
        create(writer, BASE, "Patient", {"resourceType": "Patient"}, rid="p1")
        create(writer, BASE, "Observation", _observation("Patient/p1"))

        def patient_filter() -> object:
            return parse("Observation", [("patient", "p1")], BASE, finder=reader.reader).filter["idx.patient"]

        assert patient_filter() == "Patient/p1"
        assert reader.committer.variants.cache["Observation"]  # cached now
        assert patient_filter() == "Patient/p1"

        create(writer, BASE, "Observation", _observation(f"{BASE}/Patient/p1"))
        assert patient_filter() == {"$in": ["Patient/p1", f"{BASE}/Patient/p1"]}

        create(writer, BASE, "Group", {"resourceType": "Group", "type": "person", "actual": True}, rid="p1")
        create(writer, BASE, "Observation", _observation("Group/p1"))
        subject = parse("Observation", [("subject", "p1")], BASE, finder=reader.reader).filter["idx.subject"]
        assert set(subject["$in"]) == {"Patient/p1", "Group/p1", f"{BASE}/Patient/p1", f"{BASE}/Group/p1"}
    finally:
        reader.db.client.drop_database(DB)
        reader.close()
        writer.close()

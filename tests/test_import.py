"""`fhirserver import`: Synthea transaction Bundles and NDJSON through a real server, idempotent."""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import orjson
import pytest
import requests
from click.testing import CliRunner
from pymongo import MongoClient

from fhirserver.cli import main
from seed_data import importer
from seed_data.loader import KEYED_TYPES, HttpSink, load
from tests.servers import REPO, serve

SYNTHEA = REPO.parent / "shared" / "data" / "synthea-r4"
DB_NAME = "importtest"


@pytest.fixture(scope="module")
def server(ferretdb, tmp_path_factory):
    proc = serve(ferretdb.uri, tmp_path_factory.mktemp("import") / "server.log", FHIR_DB_NAME=DB_NAME)
    yield proc
    proc.stop()


def _synthea_files() -> list[Path]:
    if not SYNTHEA.exists():
        pytest.skip(f"sample data not found at {SYNTHEA}")
    patients = sorted(p for p in SYNTHEA.glob("*.json") if not p.name.startswith(("hospital", "practitioner")))
    return [*SYNTHEA.glob("hospitalInformation*.json"), *SYNTHEA.glob("practitionerInformation*.json"),
            *patients[:2]]


def _snapshot(uri: str) -> dict[str, list]:
    db = MongoClient(uri)[DB_NAME]
    out = {n: sorted((d["_id"], d["v"]) for d in db[n].find({}, {"_id": 1, "v": 1}))
           for n in db.list_collection_names() if n[:1].isupper()}
    out["history"] = [db["history"].count_documents({})]
    return out


def test_synthea_bundles_import_once(server, ferretdb):
    files = _synthea_files()
    entries = [e["resource"] for f in files for e in orjson.loads(f.read_bytes())["entry"]]
    keyed = {(r["resourceType"], r["id"]) for r in entries if r["resourceType"] in KEYED_TYPES}
    others = [r for r in entries if r["resourceType"] not in KEYED_TYPES]
    assert importer.count(files) == len(entries)

    first = load(importer.groups(files), HttpSink(server.base), batch_size=200, workers=2)
    # a hospital or clinician repeated by several files is written once, at its Synthea id
    assert first.total_written == len(keyed) + len(others)
    assert first.skipped == 0
    before = _snapshot(ferretdb.uri)
    again = load(importer.groups(files), HttpSink(server.base), batch_size=50, workers=1)
    assert again.total_written == 0 and again.skipped == len(keyed) + len(others)
    assert _snapshot(ferretdb.uri) == before

    bundle = orjson.loads(files[-1].read_bytes())
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    assert requests.get(f"{server.base}/Patient/{patient['id']}", timeout=30).status_code == 200
    expected = Counter(e["resource"]["resourceType"] for e in bundle["entry"]
                       if e["resource"]["resourceType"] not in KEYED_TYPES)
    found = requests.get(f"{server.base}/Observation", params={"subject": f"Patient/{patient['id']}",
                                                               "_count": 1000}, timeout=60).json()
    assert len(found["entry"]) == expected["Observation"]
    # urn:uuid references to the hospital became Organization/<id> and resolve
    encounters = requests.get(f"{server.base}/Encounter", params={"subject": f"Patient/{patient['id']}"},
                              timeout=60).json()["entry"]
    provider = encounters[0]["resource"]["serviceProvider"]["reference"]
    assert provider.startswith("Organization/")
    assert requests.get(f"{server.base}/{provider}", timeout=30).status_code == 200


def test_ndjson_import_keeps_ids_and_is_idempotent(server, tmp_path):
    lines = [
        {"resourceType": "Practitioner", "id": "nd-prac-1", "name": [{"family": "Ndjson", "given": ["Pat"]}]},
        {"resourceType": "Patient", "id": "nd-pat-1", "name": [{"family": "Lines", "given": ["Nora"]}],
         "generalPractitioner": [{"reference": "Practitioner/nd-prac-1"}]},
        {"resourceType": "Observation", "id": "nd-obs-1", "status": "final",
         "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
         "subject": {"reference": "Patient/nd-pat-1"}, "valueQuantity": {"value": 61, "unit": "/min",
                                                                          "system": "http://unitsofmeasure.org",
                                                                          "code": "/min"}},
    ]
    plain = tmp_path / "Patient.ndjson"
    plain.write_bytes(b"\n".join(orjson.dumps(r) for r in lines[:2]) + b"\n")
    with gzip.open(tmp_path / "Observation.ndjson.gz", "wb") as fh:
        fh.write(orjson.dumps(lines[2]) + b"\n")
    runner = CliRunner()
    result = runner.invoke(main, ["import", "--url", server.base, str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "3 resources written, 0 already present" in result.output
    obs = requests.get(f"{server.base}/Observation/nd-obs-1", timeout=30).json()
    assert obs["subject"]["reference"] == "Patient/nd-pat-1" and obs["meta"]["versionId"] == "1"
    result = runner.invoke(main, ["import", "--url", server.base, str(tmp_path)])
    assert result.exit_code == 0 and "0 resources written, 3 already present" in result.output
    assert requests.get(f"{server.base}/Patient/nd-pat-1", timeout=30).json()["meta"]["versionId"] == "1"


def test_bad_input_is_refused_with_a_reason(server, tmp_path):
    bad = tmp_path / "broken.ndjson"
    bad.write_text('{"resourceType": "Patient", "id": "ok-1"}\nnot json\n')
    result = CliRunner().invoke(main, ["import", "--url", server.base, str(bad)])
    assert result.exit_code == 1 and "broken.ndjson:2: not JSON" in result.output
    invalid = tmp_path / "invalid.ndjson"
    invalid.write_text('{"resourceType": "Patient", "id": "bad-gender", "gender": "sometimes"}\n')
    result = CliRunner().invoke(main, ["import", "--url", server.base, str(invalid)])
    assert result.exit_code == 1 and "422" in result.output and "gender" in result.output
    assert requests.get(f"{server.base}/Patient/bad-gender", timeout=30).status_code == 404

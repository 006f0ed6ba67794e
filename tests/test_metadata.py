"""GET /fhir/metadata, content negotiation and the health probes against a real server process."""

from __future__ import annotations

import requests


def test_metadata_is_a_capability_statement(server):
    r = requests.get(f"{server.base}/metadata")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/fhir+json")
    cs = r.json()
    assert cs["resourceType"] == "CapabilityStatement"
    assert cs["fhirVersion"] == "4.0.1"
    assert cs["kind"] == "instance" and cs["status"] == "active"
    assert "json" in cs["format"] and "application/fhir+json" in cs["format"]
    assert cs["rest"][0]["mode"] == "server"
    assert cs["implementation"]["url"] == server.base
    assert cs["software"]["name"] == "fhirserver"


def test_metadata_accepts_json_forms(server):
    for params, headers in (({"_format": "json"}, {}), ({"_format": "application/fhir+json"}, {}),
                            ({}, {"Accept": "application/json"}), ({}, {"Accept": "*/*"})):
        assert requests.get(f"{server.base}/metadata", params=params, headers=headers).status_code == 200


def test_pretty_output_is_indented(server):
    r = requests.get(f"{server.base}/metadata", params={"_pretty": "true"})
    assert r.text.startswith('{\n  "resourceType"')


def test_xml_is_not_acceptable(server):
    for params, headers in (({"_format": "xml"}, {}), ({}, {"Accept": "application/fhir+xml"})):
        r = requests.get(f"{server.base}/metadata", params=params, headers=headers)
        assert r.status_code == 406
        outcome = r.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert outcome["issue"][0]["code"] == "not-supported"


def test_unknown_path_is_an_operation_outcome(server):
    r = requests.get(f"{server.base}/no/such/thing/here")
    assert r.status_code == 404
    assert r.json()["resourceType"] == "OperationOutcome"


def test_wrong_method_is_405_operation_outcome(server):
    r = requests.delete(f"{server.base}/metadata")
    assert r.status_code == 405
    assert r.json()["issue"][0]["code"] == "not-supported"
    assert "GET" in r.headers["Allow"]


def test_health_and_readiness(server):
    assert requests.get(f"{server.url}/healthz").json() == {"status": "ok"}
    assert requests.get(f"{server.url}/readyz").json() == {"status": "ready"}


def test_logs_are_json_lines_without_bodies(server):
    secret = "BODY-SECRET-7d1f"
    requests.post(f"{server.base}/metadata?q=QUERY-SECRET", data=secret)
    lines = [line for line in server.log.read_text().splitlines() if line.startswith("{")]
    assert lines, "no JSON log lines"
    import json

    records = [json.loads(line) for line in lines]
    assert any(r.get("path") == "/fhir/metadata" and r.get("status") == 405 for r in records)
    text = server.log.read_text()
    assert secret not in text and "QUERY-SECRET" not in text


def test_capability_statement_declares_interactions_and_search(server):
    cs = requests.get(f"{server.base}/metadata").json()
    rest = cs["rest"][0]
    assert {i["code"] for i in rest["interaction"]} >= {"transaction", "batch", "history-system", "search-system"}
    by_type = {r["type"]: r for r in rest["resource"]}
    assert "MedicinalProduct" not in by_type and "Patient" in by_type and len(by_type) == 128
    obs = by_type["Observation"]
    assert {i["code"] for i in obs["interaction"]} >= {"read", "vread", "create", "update", "patch", "delete",
                                                       "search-type", "history-instance", "history-type"}
    params = {p["name"]: p for p in obs["searchParam"]}
    assert params["code"]["type"] == "token"
    assert params["code"]["definition"] == "http://hl7.org/fhir/SearchParameter/clinical-code"
    assert "code-value-quantity" in params and "_lastUpdated" in params
    assert "Observation:subject" in obs["searchInclude"]
    assert obs["conditionalCreate"] is True and obs["versioning"] == "versioned"
    assert "application/json-patch+json" in cs["patchFormat"]

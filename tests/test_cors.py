"""CORS on the FHIR API: browser apps on other origins may call it with bearer tokens."""

from __future__ import annotations

import requests

ORIGIN = "https://app.example"


def test_simple_requests_from_another_origin_get_cors_headers(server):
    r = requests.get(f"{server.base}/metadata", headers={"Origin": ORIGIN}, timeout=30)
    assert r.status_code == 200
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert "Location" in r.headers["Access-Control-Expose-Headers"]
    assert "Access-Control-Allow-Credentials" not in r.headers  # tokens, never cookies
    missing = requests.get(f"{server.base}/Patient/nobody-here", headers={"Origin": ORIGIN}, timeout=30)
    assert missing.status_code == 404 and missing.headers["Access-Control-Allow-Origin"] == "*"


def test_preflight_allows_the_methods_and_headers_of_fhir_clients(server):
    r = requests.options(f"{server.base}/Patient", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, prefer"}, timeout=30)
    assert r.status_code == 200
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in r.headers["Access-Control-Allow-Methods"]
    allowed = r.headers["Access-Control-Allow-Headers"].lower()
    assert all(h in allowed for h in ("authorization", "content-type", "prefer", "if-match"))
    op = requests.options(f"{server.base}/Appointment/$find", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST"}, timeout=30)
    assert op.status_code == 200 and op.headers["Access-Control-Allow-Origin"] == "*"


def test_same_origin_requests_carry_no_cors_headers(server):
    r = requests.get(f"{server.base}/metadata", timeout=30)
    assert "Access-Control-Allow-Origin" not in r.headers

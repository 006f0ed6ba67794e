"""SMART App Launch 2.2 and Backend Services end to end: real HTTP against a server process with FHIR_AUTH=on on a
real FerretDB, driven by authlib's own OAuth client (PKCE S256, private_key_jwt RS384/ES384) and a form-reading
browser. Users and clients are created through the stores on the same database (and once through the CLI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import pyotp
import pytest
import requests
from authlib.common.security import generate_token
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.jwk import KeySet
from pymongo import MongoClient
from pymongo.database import Database

from smart_auth.users import UserStore
from tests.servers import REPO, ServerProcess, serve
from tests.smart_helpers import (
    PASSWORD,
    REDIRECT,
    App,
    Backend,
    Browser,
    bearer,
    code_hash,
    create,
    forms_of,
    new_app,
    new_backend,
    new_user,
    query_of,
    text_of,
)

DB_NAME = "smartflows"
PATIENT_APP_SCOPE = "launch/patient openid fhirUser offline_access patient/Patient.rs patient/Observation.rs"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"


@dataclass
class World:
    server: ServerProcess
    db: Database
    system: Backend
    system_token: str
    app: App  # public
    confidential: App
    mum: str
    kid1: str
    kid2: str
    other: str
    rp_kid2: str
    encounter: str
    dr: str


@pytest.fixture(scope="module")
def world(ferretdb, tmp_path_factory) -> World:
    client: MongoClient = MongoClient(ferretdb.uri)
    client.drop_database(DB_NAME)
    db = client[DB_NAME]
    server = serve(ferretdb.uri, tmp_path_factory.mktemp("smart") / "server.log", FHIR_AUTH="on",
                   FHIR_DB_NAME=DB_NAME, FHIR_SECRET_KEY="smart-flows-test-secret-key-0123456789")
    try:
        system = new_backend(server, db, "system/*.cruds", client_id="ehr-system")
        token = system.fetch("system/*.cruds")["access_token"]

        def patient(given: str, family: str) -> str:
            return create(server, token, {"resourceType": "Patient", "name": [{"given": [given], "family": family}]})

        mum, kid1, kid2, other = (patient("Mary", "Mum"), patient("Kim", "One"), patient("Kai", "Two"),
                                  patient("Oscar", "Other"))

        def proxy(kid: str) -> str:
            return create(server, token, {
                "resourceType": "RelatedPerson", "patient": {"reference": f"Patient/{kid}"}, "active": True,
                "identifier": [{"system": "urn:fhirserver:user", "value": "mum"}]})

        proxy(kid1)
        rp_kid2 = proxy(kid2)
        for kid, category in ((kid1, "laboratory"), (kid1, "vital-signs"), (other, "laboratory")):
            create(server, token, {
                "resourceType": "Observation", "status": "final", "subject": {"reference": f"Patient/{kid}"},
                "category": [{"coding": [{"system": OBS_CATEGORY, "code": category}]}],
                "code": {"text": category}})
        dr = create(server, token, {"resourceType": "Practitioner", "name": [{"family": "Smith"}]})
        encounter = create(server, token, {"resourceType": "Encounter", "status": "finished",
                                           "class": {"code": "AMB"}, "subject": {"reference": f"Patient/{kid1}"}})
        new_user(db, "mum", f"Patient/{mum}", display="Mary Mum")
        new_user(db, "drsmith", f"Practitioner/{dr}", display="Dr Smith")
        new_user(db, "boss", f"Practitioner/{dr}", roles=("admin",))
        new_user(db, "oscar", f"Patient/{other}")
        world = World(server, db, system, token, new_app(server, db), new_app(server, db, confidential=True,
                      name="Portal"), mum, kid1, kid2, other, rp_kid2, encounter, dr)
        yield world
    finally:
        server.stop()
        client.close()


def fhir(world: World, path: str, token: str | None) -> requests.Response:
    headers = bearer(token) if token else {"Accept": "application/fhir+json"}
    return requests.get(f"{world.server.base}/{path}", headers=headers, timeout=30)


def ids(bundle: dict[str, Any]) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", []) if e.get("search", {}).get("mode") == "match"}


def raw_authorize(world: World, app: App, **params: str) -> requests.Response:
    verifier = generate_token(64)
    query = {"response_type": "code", "client_id": app.client_id, "redirect_uri": REDIRECT, "state": "st-123",
             "scope": "launch/patient patient/Patient.rs", "aud": world.server.base,
             "code_challenge": create_s256_code_challenge(verifier), "code_challenge_method": "S256", **params}
    query = {k: v for k, v in query.items() if v is not None}
    return requests.get(f"{world.server.url}/auth/authorize?{urlencode(query)}", allow_redirects=False, timeout=30)


def code_for(world: World, app: App, username: str, scope: str, **kw: Any) -> tuple[str, str]:
    """(code, code_verifier) from a browser walk, without the token request."""
    oauth, url, verifier = app.authorize_url(scope)
    location = Browser(world.server.url).authorize(url, username, **kw)
    return query_of(location)["code"], verifier


# -- discovery --------------------------------------------------------------------------------------------------------


def test_discovery_document(world: World):
    response = requests.get(f"{world.server.base}/.well-known/smart-configuration",
                            headers={"Accept": "text/html", "Origin": "https://app.example"}, timeout=30)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    doc = response.json()
    origin = world.server.url
    for key in ("issuer", "jwks_uri", "authorization_endpoint", "token_endpoint", "introspection_endpoint",
                "revocation_endpoint", "registration_endpoint", "management_endpoint"):
        assert doc[key].startswith(origin + "/auth"), key
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert {"authorization_code", "client_credentials"} <= set(doc["grant_types_supported"])
    assert {"RS384", "ES384"} <= set(doc["token_endpoint_auth_signing_alg_values_supported"])
    g10 = ("launch-standalone launch-ehr client-public client-confidential-symmetric client-confidential-asymmetric "
           "sso-openid-connect context-standalone-patient context-ehr-patient context-ehr-encounter context-banner "
           "context-style permission-offline permission-patient permission-user authorize-post permission-v1 "
           "permission-v2").split()
    assert set(g10) <= set(doc["capabilities"])
    oidc = requests.get(f"{doc['issuer']}/.well-known/openid-configuration", timeout=30)
    assert oidc.status_code == 200 and oidc.headers["Content-Type"].startswith("application/json")
    assert oidc.json()["issuer"] == doc["issuer"] and oidc.json()["jwks_uri"] == doc["jwks_uri"]
    for name in ("subject_types_supported", "id_token_signing_alg_values_supported", "response_types_supported"):
        assert oidc.json()[name]


def test_capability_statement_security(world: World):
    response = requests.get(f"{world.server.base}/metadata", headers={"Accept": "application/fhir+json"}, timeout=30)
    assert response.status_code == 200
    security = response.json()["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    uris = {e["url"]: e["valueUri"] for e in security["extension"][0]["extension"]}
    assert security["extension"][0]["url"] == "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
    assert uris["authorize"] == f"{world.server.url}/auth/authorize"
    assert uris["token"] == f"{world.server.url}/auth/token"
    assert set(uris) == {"authorize", "token", "register", "manage"}  # all that R4's oauth-uris definition allows


def test_fhirclient_finds_the_endpoints(world: World):
    """The Python `fhirclient` reads the endpoints from the CapabilityStatement's oauth-uris extension only."""
    from fhirclient import client as fhirclient

    smart = fhirclient.FHIRClient(settings={"app_id": world.app.client_id, "api_base": world.server.base,
                                            "redirect_uri": REDIRECT, "scope": "launch/patient patient/*.rs"})
    smart.prepare()
    url = smart.authorize_url
    assert url.startswith(f"{world.server.url}/auth/authorize?")
    params = query_of(url)
    assert params["aud"] == world.server.base and params["code_challenge_method"] == "S256"
    assert smart.server.auth._token_uri == f"{world.server.url}/auth/token"


def test_no_token_is_401_with_challenge(world: World):
    response = fhir(world, f"Patient/{world.kid1}", None)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["resourceType"] == "OperationOutcome"
    assert fhir(world, f"Patient/{world.kid1}", "not-a-token").status_code == 401


# -- standalone launch ------------------------------------------------------------------------------------------------


def test_standalone_proxy_picker_consent_pkce(world: World):
    browser = Browser(world.server.url)
    oauth, url, verifier = world.app.authorize_url(PATIENT_APP_SCOPE)
    browser.go(url)
    assert "password" in browser.form_names()
    browser.sign_in("mum")
    # the picker: the user's own record and both children she is a current proxy for, nobody else
    picker = browser.form("patient")
    assert set(picker.options("patient")) == {f"Patient/{world.mum}", f"Patient/{world.kid1}",
                                              f"Patient/{world.kid2}"}
    assert "Kim One" in text_of(browser.page.text)
    browser.submit("patient", choose={"patient": f"Patient/{world.kid1}"})
    consent = browser.form("decision")
    assert "patient/Observation.rs" in consent.options("scope")
    assert "until you revoke it" in text_of(browser.page.text)  # offline_access is explained
    browser.submit("decision", button="decision=allow", untick=("patient/Observation.rs",))
    location = browser.location
    assert location and location.startswith(REDIRECT) and "code=" in location
    token = dict(oauth.fetch_token(f"{world.app.auth}/token", authorization_response=location,
                                   code_verifier=verifier))
    assert token["token_type"].lower() == "bearer" and token["expires_in"] == 3600
    granted = token["scope"].split()
    assert "patient/Patient.rs" in granted and "patient/Observation.rs" not in granted
    assert {"openid", "fhirUser", "offline_access", "launch/patient"} <= set(granted)
    assert token["patient"] == world.kid1 and token["need_patient_banner"] is True
    assert token["refresh_token"] and token["id_token"]
    style = requests.get(token["smart_style_url"], timeout=30)
    assert style.status_code == 200 and style.json()["color_background"]

    access = token["access_token"]
    assert fhir(world, f"Patient/{world.kid1}", access).status_code == 200
    assert fhir(world, f"Patient/{world.kid2}", access).status_code in (403, 404)
    assert fhir(world, f"Patient/{world.other}", access).status_code in (403, 404)
    assert fhir(world, f"Observation?patient={world.kid1}", access).status_code == 403  # unticked

    # id_token: RS256 (OpenID Connect), verifies against the JWKS, iss/aud/sub and fhirUser
    discovery = requests.get(f"{world.server.base}/.well-known/smart-configuration", timeout=30).json()
    keys = KeySet.import_key_set(requests.get(discovery["jwks_uri"], timeout=30).json())
    decoded = jwt.decode(token["id_token"], keys, algorithms=["RS256"])
    assert decoded.header["alg"] == "RS256" and decoded.header["kid"]
    claims = decoded.claims
    assert claims["iss"] == discovery["issuer"] and claims["aud"] == world.app.client_id and claims["sub"] == "mum"
    assert claims["fhirUser"] == f"{world.server.base}/Patient/{world.mum}"
    assert claims["exp"] > time.time() and claims["auth_time"] <= time.time()


def test_user_scopes_of_a_proxy_reach_exactly_her_patients(world: World):
    token = world.app.launch(Browser(world.server.url), "mum", "openid fhirUser user/Patient.rs user/Observation.rs")
    assert "patient" not in token  # no patient/ scopes, no picker
    found = fhir(world, "Patient", token["access_token"])
    assert found.status_code == 200
    assert ids(found.json()) == {world.mum, world.kid1, world.kid2}
    observations = fhir(world, "Observation", token["access_token"]).json()
    assert len(ids(observations)) == 2  # kid1's two, not the other patient's


def test_single_candidate_skips_the_picker(world: World):
    browser = Browser(world.server.url)
    oauth, url, verifier = world.app.authorize_url("launch/patient patient/Patient.rs")
    browser.go(url)
    browser.sign_in("oscar")
    assert "decision" in browser.form_names()  # straight to consent: the only candidate is the user's own record
    browser.submit("decision", button="decision=allow")
    token = oauth.fetch_token(f"{world.app.auth}/token", authorization_response=browser.location,
                              code_verifier=verifier)
    assert token["patient"] == world.other and "refresh_token" not in token  # no offline_access asked


def test_consent_denied_redirects_access_denied(world: World):
    oauth, url, _ = world.app.authorize_url("launch/patient patient/Patient.rs")
    location = Browser(world.server.url).authorize(url, "oscar", deny=True)
    params = query_of(location)
    assert params["error"] == "access_denied" and "code" not in params and params["state"]


# -- authorization request errors -------------------------------------------------------------------------------------


def test_plain_pkce_and_missing_challenge_are_refused(world: World):
    verifier = generate_token(64)
    for params in ({"code_challenge": verifier, "code_challenge_method": "plain"},
                   {"code_challenge": None, "code_challenge_method": None},
                   {"code_challenge_method": None}):
        response = raw_authorize(world, world.app, **params)
        assert response.status_code in (302, 303)
        back = query_of(response.headers["Location"])
        assert response.headers["Location"].startswith(REDIRECT)
        assert back["error"] == "invalid_request" and "code" not in back and back["state"] == "st-123"


def test_bad_client_or_redirect_uri_is_an_error_page(world: World):
    for params in ({"redirect_uri": "http://127.0.0.1:9/elsewhere"}, {"redirect_uri": None},
                   {"client_id": "no-such-client"}, {"client_id": None}):
        response = raw_authorize(world, world.app, **params)
        assert response.status_code == 400, params
        assert "Location" not in response.headers
        assert response.headers["Content-Type"].startswith("text/html")
        assert response.headers["Cache-Control"] == "no-store"


def test_wrong_aud_gets_no_code(world: World):
    response = raw_authorize(world, world.app, aud="https://evil.example/fhir")
    back = query_of(response.headers["Location"])
    assert back["error"] == "invalid_request" and "code" not in back
    missing = raw_authorize(world, world.app, aud=None)
    assert "code" not in query_of(missing.headers["Location"])


def test_authorize_by_post(world: World):
    """SMART `authorize-post`: the same parameters as a form body."""
    _, url, _ = world.app.authorize_url("launch/patient patient/Patient.rs")
    response = requests.post(f"{world.server.url}/auth/authorize", data=query_of(url), allow_redirects=False,
                             timeout=30)
    assert response.status_code == 303 and response.headers["Location"].startswith("/auth/login?rid=")


def test_unsupported_response_type_and_bad_scope(world: World):
    back = query_of(raw_authorize(world, world.app, response_type="token").headers["Location"])
    assert back["error"] == "unsupported_response_type"
    back = query_of(raw_authorize(world, world.app, scope="patient/Observation.dus").headers["Location"])
    assert back["error"] == "invalid_scope"


def test_login_errors_and_csrf(world: World):
    browser = Browser(world.server.url)
    oauth, url, _ = world.app.authorize_url("launch/patient patient/Patient.rs")
    browser.go(url)
    page = browser.submit("password", {"username": "mum", "password": "wrong password!!"})
    assert page.status_code == 422 and "not correct" in text_of(page.text)
    form = browser.form("password")
    data = [(k, v) for k, v in form.values() if k != "csrf"] + [("username", "mum"), ("password", PASSWORD)]
    forged = browser.http.post(f"{world.server.url}/auth/login", data=data, allow_redirects=False, timeout=30)
    assert forged.status_code == 400
    # a pending request does not follow the user into another browser
    rid = dict(form.values())["rid"]
    other = requests.get(f"{world.server.url}/auth/login?rid={rid}", timeout=30)
    assert other.status_code == 400


# -- token endpoint ---------------------------------------------------------------------------------------------------


def test_code_is_single_use_and_reuse_revokes(world: World):
    code, verifier = code_for(world, world.app, "oscar", "launch/patient patient/Patient.rs")
    body = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "code_verifier": verifier}
    first = world.app.token_request(body)
    assert first.status_code == 200, first.text
    assert first.headers["Cache-Control"] == "no-store" and first.headers["Pragma"] == "no-cache"
    access = first.json()["access_token"]
    assert fhir(world, f"Patient/{world.other}", access).status_code == 200
    second = world.app.token_request(body)
    assert second.status_code == 400 and second.json()["error"] == "invalid_grant"
    assert second.headers["Cache-Control"] == "no-store"
    assert fhir(world, f"Patient/{world.other}", access).status_code == 401  # RFC 6749 §4.1.2 SHOULD revoke


def test_pkce_verifier_checks(world: World):
    code, verifier = code_for(world, world.confidential, "oscar", "launch/patient patient/Patient.rs")
    challenge = create_s256_code_challenge(verifier)
    base = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    for extra in ({}, {"code_verifier": ""}, {"code_verifier": generate_token(64)}, {"code_verifier": challenge}):
        response = world.confidential.token_request({**base, **extra})  # a confidential client needs it too
        assert response.status_code in (400, 401), extra
        assert response.json()["error"] in ("invalid_request", "invalid_grant")
    wrong_redirect = world.confidential.token_request({**base, "code_verifier": verifier,
                                                       "redirect_uri": "http://127.0.0.1:9/other"})
    assert wrong_redirect.status_code == 400
    ok = world.confidential.token_request({**base, "code_verifier": verifier})
    assert ok.status_code == 200, ok.text  # failed attempts did not spend the code


def test_code_bound_to_client_and_expiring(world: World):
    code, verifier = code_for(world, world.app, "oscar", "launch/patient patient/Patient.rs")
    body = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "code_verifier": verifier}
    other_client = new_app(world.server, world.db)
    assert other_client.token_request(body).status_code == 400
    world.db["auth_codes"].update_one({"_id": code_hash(code)}, {"$set": {"exp": time.time() - 1}})
    expired = world.app.token_request(body)
    assert expired.status_code == 400 and expired.json()["error"] == "invalid_grant"
    unknown = world.app.token_request({**body, "code": "nope"})
    assert unknown.status_code == 400
    bad_client = requests.post(f"{world.server.url}/auth/token", data={**body, "client_id": "nobody"}, timeout=30)
    assert bad_client.status_code in (400, 401) and bad_client.json()["error"] == "invalid_client"


def test_refresh_rotation_and_reuse_detection(world: World):
    app = world.confidential
    token = app.launch(Browser(world.server.url), "mum", PATIENT_APP_SCOPE, patient=f"Patient/{world.kid1}")
    first_refresh = token["refresh_token"]
    refreshed = app.token_request({"grant_type": "refresh_token", "refresh_token": first_refresh})
    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.headers["Cache-Control"] == "no-store" and refreshed.headers["Pragma"] == "no-cache"
    body = refreshed.json()
    for key in ("access_token", "token_type", "expires_in", "scope", "refresh_token"):
        assert key in body
    assert body["refresh_token"] != first_refresh and body["patient"] == world.kid1
    assert set(body["scope"].split()) == set(token["scope"].split())
    assert fhir(world, f"Patient/{world.kid1}", body["access_token"]).status_code == 200

    narrower = app.token_request({"grant_type": "refresh_token", "refresh_token": body["refresh_token"],
                                  "scope": "patient/Patient.rs offline_access"})
    assert narrower.status_code == 200, narrower.text
    assert set(narrower.json()["scope"].split()) == {"patient/Patient.rs", "offline_access"}
    latest = narrower.json()
    wider = app.token_request({"grant_type": "refresh_token", "refresh_token": latest["refresh_token"],
                               "scope": "patient/*.cruds"})
    assert wider.status_code == 400 and wider.json()["error"] == "invalid_scope"

    # the spent first refresh token comes back: refused, and every token of the grant dies
    reuse = app.token_request({"grant_type": "refresh_token", "refresh_token": first_refresh})
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"
    assert fhir(world, f"Patient/{world.kid1}", latest["access_token"]).status_code == 401
    dead = app.token_request({"grant_type": "refresh_token", "refresh_token": latest["refresh_token"]})
    assert dead.status_code == 400
    # a refresh token works only for its own client
    other = world.app.token_request({"grant_type": "refresh_token", "refresh_token": latest["refresh_token"]})
    assert other.status_code in (400, 401)


def test_ended_proxy_loses_access_at_once(world: World):
    token = world.app.launch(Browser(world.server.url), "mum", PATIENT_APP_SCOPE + " user/Patient.rs",
                             patient=f"Patient/{world.kid2}")
    assert token["patient"] == world.kid2
    assert fhir(world, f"Patient/{world.kid2}", token["access_token"]).status_code == 200
    ended = {"resourceType": "RelatedPerson", "id": world.rp_kid2, "active": False,
             "patient": {"reference": f"Patient/{world.kid2}"},
             "identifier": [{"system": "urn:fhirserver:user", "value": "mum"}]}
    put = requests.put(f"{world.server.base}/RelatedPerson/{world.rp_kid2}", data=json.dumps(ended),
                       headers={**bearer(world.system_token), "Content-Type": "application/fhir+json"}, timeout=30)
    assert put.status_code == 200, put.text
    deadline = time.monotonic() + 15
    status = 200
    while time.monotonic() < deadline:
        status = fhir(world, f"Patient/{world.kid2}", token["access_token"]).status_code
        if status == 401:
            break
        time.sleep(0.5)
    assert status == 401  # the patient in context is no longer hers: the token stops working
    refresh = world.app.token_request({"grant_type": "refresh_token", "refresh_token": token["refresh_token"]})
    assert refresh.status_code == 400
    # restore the proxy for the other tests
    ended["active"] = True
    requests.put(f"{world.server.base}/RelatedPerson/{world.rp_kid2}", data=json.dumps(ended),
                 headers={**bearer(world.system_token), "Content-Type": "application/fhir+json"}, timeout=30)


# -- EHR launch -------------------------------------------------------------------------------------------------------


def test_ehr_launch_single_use(world: World):
    browser = Browser(world.server.url)  # the clinician's browser: signs in once
    ehr = world.confidential.launch(browser, "drsmith", "openid fhirUser user/*.rs")
    launch_app = new_app(world.server, world.db, name="Launched App", launch_uri="https://app.example/launch")

    def new_launch(**extra: Any) -> dict[str, Any]:
        response = requests.post(f"{world.server.url}/auth/launch", headers=bearer(ehr["access_token"]), json={
            "patient": world.kid1, "encounter": world.encounter, "client_id": launch_app.client_id,
            "need_patient_banner": False, **extra}, timeout=30)
        assert response.status_code == 201, response.text
        return response.json()

    created = new_launch()
    assert created["iss"] == world.server.base
    assert created["launch_url"].startswith("https://app.example/launch?iss=")
    scope = "launch openid fhirUser patient/*.rs"
    token = launch_app.launch(browser, None, scope, launch=created["launch"])  # signed in already: consent only
    assert token["patient"] == world.kid1 and token["encounter"] == world.encounter
    assert token["need_patient_banner"] is False and token["smart_style_url"]
    assert "launch" in token["scope"].split()
    assert fhir(world, f"Encounter/{world.encounter}", token["access_token"]).status_code == 200
    assert fhir(world, f"Patient/{world.kid2}", token["access_token"]).status_code in (403, 404)

    # the launch is spent
    _, url, _ = launch_app.authorize_url(scope, launch=created["launch"])
    again = Browser(world.server.url).go(url)
    assert query_of(again.headers["Location"])["error"] == "invalid_request"
    # a launch made by the clinician is not for another user
    second = new_launch()
    _, url, _ = launch_app.authorize_url(scope, launch=second["launch"])
    location = Browser(world.server.url).authorize(url, "oscar")
    assert query_of(location)["error"] == "access_denied"
    # expired launches are refused
    third = new_launch()
    world.db["auth_launches"].update_many({}, {"$set": {"exp": time.time() - 1}})
    _, url, _ = launch_app.authorize_url(scope, launch=third["launch"])
    assert query_of(Browser(world.server.url).go(url).headers["Location"])["error"] == "invalid_request"


def test_launch_endpoint_is_for_clinicians_and_systems(world: World):
    patient_token = world.app.launch(Browser(world.server.url), "oscar", "launch/patient patient/Patient.rs")
    url = f"{world.server.url}/auth/launch"
    assert requests.post(url, json={"patient": world.kid1}, timeout=30).status_code == 401
    refused = requests.post(url, json={"patient": world.kid1}, headers=bearer(patient_token["access_token"]),
                            timeout=30)
    assert refused.status_code == 403
    by_system = requests.post(url, json={"patient": world.kid1}, headers=bearer(world.system_token), timeout=30)
    assert by_system.status_code == 201
    bad = requests.post(url, json={"patient": "../x"}, headers=bearer(world.system_token), timeout=30)
    assert bad.status_code == 400


# -- Backend Services -------------------------------------------------------------------------------------------------


def test_backend_services_rs384_es384_and_jti_replay(world: World):
    backend = new_backend(world.server, world.db, "system/Patient.rs system/Observation.rs")
    for alg in ("RS384", "ES384"):
        token = backend.fetch("system/Patient.rs", alg=alg)
        assert token["token_type"].lower() == "bearer" and 0 < token["expires_in"] <= 300
        assert token["scope"] == "system/Patient.rs" and "refresh_token" not in token
        found = fhir(world, "Patient?_count=100", token["access_token"])
        assert found.status_code == 200
        assert {world.mum, world.kid1, world.kid2, world.other} <= ids(found.json())
        assert fhir(world, "Practitioner", token["access_token"]).status_code == 403
    assertion = backend.assertion("ES384")
    assert backend.token_with(assertion, "system/Patient.rs").status_code == 200
    replay = backend.token_with(assertion, "system/Patient.rs")
    assert replay.status_code in (400, 401) and replay.json()["error"] == "invalid_client"
    # requested scope beyond the registration: only the pre-authorized part, or invalid_scope
    partial = backend.token_with(backend.assertion(), "system/*.rs").json()
    assert set(partial["scope"].split()) == {"system/Patient.rs", "system/Observation.rs"}
    refused = backend.token_with(backend.assertion(), "system/Practitioner.rs")
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_scope"
    # g10: invalid grant_type and client_assertion_type are 400
    wrong_grant = requests.post(backend.token_url, data={
        "grant_type": "password", "scope": "system/Patient.rs", "client_assertion": backend.assertion(),
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}, timeout=30)
    assert wrong_grant.status_code == 400
    wrong_type = requests.post(backend.token_url, data={
        "grant_type": "client_credentials", "scope": "system/Patient.rs", "client_assertion": backend.assertion(),
        "client_assertion_type": "urn:example:wrong"}, timeout=30)
    assert wrong_type.status_code == 400
    # a public app cannot use client_credentials
    public = world.app.token_request({"grant_type": "client_credentials", "scope": "system/Patient.rs"})
    assert public.status_code in (400, 401)


# -- introspection and revocation -------------------------------------------------------------------------------------


def test_introspection_then_revocation(world: World):
    app = world.confidential
    token = app.launch(Browser(world.server.url), "mum", PATIENT_APP_SCOPE, patient=f"Patient/{world.kid1}")
    url = f"{world.server.url}/auth/introspect"
    by_client = requests.post(url, data={"token": token["access_token"]}, auth=(app.client_id, app.secret),
                              headers={"Accept": "application/json"}, timeout=30)
    assert by_client.status_code == 200
    info = by_client.json()
    assert info["active"] is True and info["client_id"] == app.client_id
    assert set(info["scope"].split()) == set(token["scope"].split())
    assert info["patient"] == world.kid1 and isinstance(info["exp"], int)
    id_claims = jwt.decode(token["id_token"], KeySet.import_key_set(
        requests.get(f"{world.server.url}/auth/jwks", timeout=30).json()), algorithms=["RS256"]).claims
    assert info["iss"] == id_claims["iss"] and info["sub"] == id_claims["sub"]
    assert info["fhirUser"] == id_claims["fhirUser"]
    by_bearer = requests.post(url, data={"token": token["refresh_token"]}, headers=bearer(world.system_token),
                              timeout=30)
    assert by_bearer.json()["active"] is True and by_bearer.json()["token_type"] == "refresh_token"
    # another client may not look at this client's tokens; a bad caller is refused
    stranger = new_app(world.server, world.db, confidential=True)
    assert requests.post(url, data={"token": token["access_token"]}, auth=(stranger.client_id, stranger.secret),
                         timeout=30).json() == {"active": False}
    assert requests.post(url, data={"token": token["access_token"]}, timeout=30).status_code == 401
    assert requests.post(url, data={"token": "junk"}, auth=(app.client_id, app.secret),
                         timeout=30).json() == {"active": False}

    revoked = requests.post(f"{world.server.url}/auth/revoke", data={"token": token["access_token"]},
                            auth=(app.client_id, app.secret), timeout=30)
    assert revoked.status_code == 200
    after = requests.post(url, data={"token": token["access_token"]}, auth=(app.client_id, app.secret), timeout=30)
    assert after.json() == {"active": False}
    assert fhir(world, f"Patient/{world.kid1}", token["access_token"]).status_code == 401
    refresh = app.token_request({"grant_type": "refresh_token", "refresh_token": token["refresh_token"]})
    assert refresh.status_code == 400


def test_public_client_revokes_its_refresh_token(world: World):
    token = world.app.launch(Browser(world.server.url), "mum", PATIENT_APP_SCOPE, patient=f"Patient/{world.mum}")
    response = requests.post(f"{world.server.url}/auth/revoke", data={
        "token": token["refresh_token"], "token_type_hint": "refresh_token", "client_id": world.app.client_id},
        timeout=30)
    assert response.status_code == 200
    assert fhir(world, f"Patient/{world.mum}", token["access_token"]).status_code == 401


def test_manage_page_revokes_an_app(world: World):
    browser = Browser(world.server.url)
    token = world.app.launch(browser, "oscar", "launch/patient patient/Patient.rs offline_access")
    page = browser.go("/auth/manage")
    assert page.status_code == 200 and "Test App" in text_of(page.text)
    grants = [f for f in forms_of(page.text) if "grant" in f.names()]
    assert grants
    for _ in grants:
        browser.submit("grant")
    assert fhir(world, f"Patient/{world.other}", token["access_token"]).status_code == 401


# -- second factor, registration, CLI ---------------------------------------------------------------------------------


def test_second_factor_login(world: World):
    users = UserStore(world.db)
    users.create_user("tina", PASSWORD, f"Patient/{world.other}")
    secret, _, _ = users.enable_totp("tina")
    totp = pyotp.TOTP(secret)
    assert users.confirm_totp("tina", totp.now())
    browser = Browser(world.server.url)
    _, url, _ = world.app.authorize_url("launch/patient patient/Patient.rs")
    browser.go(url)
    browser.sign_in("tina")
    assert "code" in browser.form_names()
    wrong = browser.submit("code", {"code": "000000" if totp.now() != "000000" else "111111"})
    assert wrong.status_code == 422
    browser.submit("code", {"code": totp.at(datetime.now(UTC).timestamp() + 30)})
    assert "decision" in browser.form_names()


def test_registration_is_for_admins(world: World):
    url = f"{world.server.url}/auth/register"
    metadata = {"client_name": "Registered", "redirect_uris": ["https://app.example/cb"],
                "token_endpoint_auth_method": "client_secret_basic", "scope": "openid patient/*.rs"}
    anonymous = requests.post(url, json=metadata, timeout=30)
    assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    patient_token = world.app.launch(Browser(world.server.url), "oscar", "launch/patient patient/Patient.rs")
    assert requests.post(url, json=metadata, headers=bearer(patient_token["access_token"]),
                         timeout=30).status_code == 403
    admin_token = world.confidential.launch(Browser(world.server.url), "boss", "openid user/Patient.rs")
    created = requests.post(url, json=metadata, headers=bearer(admin_token["access_token"]), timeout=30)
    assert created.status_code == 201, created.text
    assert created.json()["client_id"] and created.json()["client_secret"]
    assert created.headers["Cache-Control"] == "no-store"
    bad = requests.post(url, json={"redirect_uris": ["ftp://x"]}, headers=bearer(admin_token["access_token"]),
                        timeout=30)
    assert bad.status_code == 400 and bad.json()["error"] in ("invalid_redirect_uri", "invalid_client_metadata")


def test_cli_adds_users_and_clients(world: World, ferretdb, tmp_path):
    env = {**os.environ, "MONGODB_URI": ferretdb.uri, "FHIR_DB_NAME": DB_NAME, "FHIR_USER_PASSWORD": PASSWORD}

    def cli(*args: str) -> dict[str, Any]:
        done = subprocess.run([sys.executable, "-m", "fhirserver.cli", "auth", *args], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    user = cli("add-user", "cli.user", "--fhir-user", f"Patient/{world.other}", "--admin")
    assert user == {"username": "cli.user", "fhirUser": f"Patient/{world.other}", "roles": ["admin"]}
    public = cli("add-client", "--name", "CLI App", "--public", "--redirect-uri", REDIRECT,
                 "--scope", "launch/patient patient/*.rs offline_access")
    assert public["token_endpoint_auth_method"] == "none" and "client_secret" not in public
    secret = cli("add-client", "--name", "CLI Portal", "--redirect-uri", REDIRECT, "--scope", "openid user/*.rs")
    assert secret["client_secret"]
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(KeySet.generate_key_set("RSA", 2048, count=1).as_dict(private=False)))
    backend = cli("add-client", "--name", "CLI Backend", "--backend", "--jwks", str(jwks), "--scope",
                  "system/*.rs")
    assert backend["grant_types"] == ["client_credentials"] and backend["token_endpoint_auth_method"] == \
        "private_key_jwt"
    # the CLI-made user and public client complete a launch
    token = App(world.server, public["client_id"]).launch(Browser(world.server.url), "cli.user",
                                                          "launch/patient patient/Patient.rs")
    assert token["patient"] == world.other


def test_token_endpoint_cors_preflight(world: World):
    response = requests.options(f"{world.server.url}/auth/token", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST"}, timeout=30)
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in response.headers["Access-Control-Allow-Methods"]


def test_wrong_method_and_bodies_do_not_crash(world: World):
    assert requests.get(f"{world.server.url}/auth/token", timeout=30).status_code == 405
    junk = requests.post(f"{world.server.url}/auth/token", data=b"\xff\x00garbage",
                         headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=30)
    assert junk.status_code == 400
    assert requests.post(f"{world.server.url}/auth/consent", data={"rid": "x"}, timeout=30).status_code == 400


# -- races: single use is a unique insert -----------------------------------------------------------------------------


def _race(n: int, call: Any) -> list[Any]:
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        results[i] = call()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_concurrent_uses_of_one_code_one_refresh_one_launch(world: World):
    code, verifier = code_for(world, world.app, "oscar", "launch/patient patient/Patient.rs offline_access")
    body = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "code_verifier": verifier}
    responses = _race(8, lambda: world.app.token_request(body))
    # one request spends the code; the others are reuse, which revokes the grant, so even a token the winner got
    # (if it was issued before the revocation) is dead
    assert [r.status_code for r in responses].count(200) <= 1
    assert all(r.json()["error"] == "invalid_grant" for r in responses if r.status_code != 200)
    for r in responses:
        if r.status_code == 200:
            assert fhir(world, f"Patient/{world.other}", r.json()["access_token"]).status_code == 401
    assert world.db["auth_consumed"].count_documents({"_id": f"code:{code_hash(code)}"}) == 1

    token = world.app.launch(Browser(world.server.url), "oscar", "launch/patient patient/Patient.rs offline_access")
    refresh = {"grant_type": "refresh_token", "refresh_token": token["refresh_token"]}
    statuses = [r.status_code for r in _race(8, lambda: world.app.token_request(refresh))]
    assert statuses.count(200) <= 1 and 400 in statuses

    launch = requests.post(f"{world.server.url}/auth/launch", json={"patient": world.kid1},
                           headers=bearer(world.system_token), timeout=30).json()["launch"]
    _, url, _ = world.app.authorize_url("launch patient/Patient.rs", launch=launch)
    locations = [r.headers["Location"] for r in _race(6, lambda: requests.get(url, allow_redirects=False,
                                                                               timeout=30))]
    assert sum(1 for loc in locations if loc.startswith("/auth/")) == 1  # one went on to sign-in
    assert sum(1 for loc in locations if "error=invalid_request" in loc) == 5

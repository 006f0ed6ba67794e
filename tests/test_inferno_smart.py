"""One test per assertion of the Inferno SMART App Launch STU2.2 kit and the ONC (g)(10) kit's authorization groups,
as listed in ../shared/reference/smart-fhir-checklist.md (sections 1 and 3.1-3.2), against a running server with
FHIR_AUTH=on on a real FerretDB. Each test is named after the Inferno test (or group + assertion) it mirrors.

Flows run once per module (a standalone launch of a patient with the g10 full-access scopes through a public client,
an EHR launch of a clinician through a confidential client) and the assertions read their recorded HTTP exchanges.
Not here: TLS version tests (the test server is loopback HTTP), the Access Brands suite, the Bulk Data groups
(no `$export` yet), visual-inspection attestations other than the offline_access notice.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from authlib.common.security import generate_token
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey

from smart_auth.access import Access
from smart_auth.clients import ClientRegistry
from smart_auth.tokens import ACCESS, Context, TokenStore
from tests.smart_helpers import REDIRECT, App, Backend, Browser, bearer, query_of, text_of
from tests.smart_world import COND_CATEGORY, OBS_CATEGORY, Health, health_system

G10_PATIENT_SCOPE = "launch/patient openid fhirUser offline_access patient/*.rs"
G10_EHR_SCOPE = "launch openid fhirUser offline_access user/*.rs"
US_CORE_CATEGORY = "http://hl7.org/fhir/us/core/CodeSystem"
G10_GRANULAR = [
    f"Condition.rs?category={COND_CATEGORY}|encounter-diagnosis",
    f"Condition.rs?category={COND_CATEGORY}|problem-list-item",
    f"Condition.rs?category={US_CORE_CATEGORY}/condition-category|health-concern",
    f"Observation.rs?category={OBS_CATEGORY}|laboratory",
    f"Observation.rs?category={OBS_CATEGORY}|social-history",
    f"Observation.rs?category={OBS_CATEGORY}|vital-signs",
    f"Observation.rs?category={OBS_CATEGORY}|survey",
    f"Observation.rs?category={US_CORE_CATEGORY}/us-core-category|sdoh",
]


@dataclass
class Launch:
    """One completed launch: the authorize redirect back to the app and the raw token response."""

    app: App
    location: str
    state: str
    token_response: requests.Response

    @property
    def token(self) -> dict[str, Any]:
        return self.token_response.json()


def code_walk(world: Health, app: App, username: str | None, scope: str, browser: Browser | None = None,
              **walk: Any) -> tuple[str, str, str]:
    """(redirect location, state, code_verifier) of an authorization through the pages."""
    extra = {k: walk.pop(k) for k in ("launch",) if k in walk}
    oauth, url, verifier = app.authorize_url(scope, **extra)
    location = (browser or Browser(world.server.url)).authorize(url, username, **walk)
    return location, query_of(url)["state"], verifier


def launch(world: Health, app: App, username: str | None, scope: str, browser: Browser | None = None,
           **walk: Any) -> Launch:
    location, state, verifier = code_walk(world, app, username, scope, browser, **walk)
    params = query_of(location)
    assert "code" in params, location
    response = app.token_request({"grant_type": "authorization_code", "code": params["code"],
                                  "redirect_uri": REDIRECT, "code_verifier": verifier})
    assert response.status_code == 200, response.text
    return Launch(app, location, state, response)


@pytest.fixture(scope="module")
def world(ferretdb, tmp_path_factory) -> Iterator[Health]:
    with health_system(ferretdb, tmp_path_factory.mktemp("inferno"), "infernosmart") as health:
        yield health


@pytest.fixture(scope="module")
def discovery(world: Health) -> requests.Response:
    return requests.get(f"{world.server.base}/.well-known/smart-configuration", timeout=30)


@pytest.fixture(scope="module")
def config(discovery: requests.Response) -> dict[str, Any]:
    return discovery.json()


@pytest.fixture(scope="module")
def standalone(world: Health) -> Launch:
    """g10 Standalone Patient App - Full Access: a public client, Oscar signs in for his own record."""
    return launch(world, world.app, "oscar", G10_PATIENT_SCOPE)


@pytest.fixture(scope="module")
def ehr(world: Health) -> Launch:
    """g10 EHR Practitioner App: the EHR creates a launch for kid1 and an encounter; the clinician approves."""
    clinician = Browser(world.server.url)
    portal = world.confidential.launch(clinician, "drsmith", "openid fhirUser user/*.rs")
    app = world.confidential
    made = requests.post(f"{world.server.url}/auth/launch", headers=bearer(portal["access_token"]), json={
        "patient": world["kid1"], "encounter": world["kid1_enc"], "client_id": app.client_id}, timeout=30)
    assert made.status_code == 201, made.text
    return launch(world, app, None, G10_EHR_SCOPE, clinician, launch=made.json()["launch"])


@pytest.fixture(scope="module")
def jwks(world: Health, config: dict[str, Any]) -> KeySet:
    return KeySet.import_key_set(requests.get(config["jwks_uri"], timeout=30).json())


def refresh(app: App, refresh_token: str, scope: str | None = None) -> requests.Response:
    return app.token_request({"grant_type": "refresh_token", "refresh_token": refresh_token,
                              **({"scope": scope} if scope else {})})


def granted(token: dict[str, Any]) -> set[str]:
    return set(token["scope"].split())


def match_ids(response: requests.Response) -> set[str]:
    assert response.status_code == 200, response.text
    return {e["resource"]["id"] for e in response.json().get("entry", []) if e["search"]["mode"] == "match"}


# == SMART App Launch STU2.2: Discovery =============================================================================


def test_well_known_endpoint_status_and_content_type(discovery: requests.Response):
    """`well_known_endpoint`: 200, JSON, Content-Type application/json."""
    assert discovery.status_code == 200
    assert discovery.headers["Content-Type"].startswith("application/json")


def test_well_known_endpoint_json_even_when_html_is_accepted(world: Health):
    """Discovery SHALL answer JSON regardless of Accept."""
    response = requests.get(f"{world.server.base}/.well-known/smart-configuration",
                            headers={"Accept": "text/html"}, timeout=30)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("application/json")
    assert response.json()["token_endpoint"]


def test_well_known_capabilities_stu2_required_fields(config: dict[str, Any]):
    """`well_known_capabilities_stu2`: required keys present, non-blank and of the right JSON type."""
    for key in ("authorization_endpoint", "token_endpoint"):
        assert isinstance(config[key], str) and config[key]
    for key in ("capabilities", "grant_types_supported", "code_challenge_methods_supported"):
        assert isinstance(config[key], list) and config[key]
    assert "authorization_code" in config["grant_types_supported"]


def test_well_known_code_challenge_methods_s256_not_plain(config: dict[str, Any]):
    assert "S256" in config["code_challenge_methods_supported"]
    assert "plain" not in config["code_challenge_methods_supported"]


def test_well_known_capabilities_are_strings(config: dict[str, Any]):
    assert all(isinstance(c, str) and c for c in config["capabilities"])


def test_well_known_issuer_and_jwks_uri_with_sso_openid_connect(config: dict[str, Any]):
    """`issuer` and `jwks_uri` are required when `sso-openid-connect` is advertised."""
    assert "sso-openid-connect" in config["capabilities"]
    assert config["issuer"] and config["jwks_uri"]
    assert requests.get(config["jwks_uri"], timeout=30).json()["keys"]


def test_well_known_endpoints_are_absolute_urls(config: dict[str, Any]):
    for key, value in config.items():
        if key.endswith("_endpoint") or key in ("issuer", "jwks_uri"):
            parts = urlsplit(value)
            assert parts.scheme in ("http", "https") and parts.netloc, key


def test_well_known_private_key_jwt_algorithms(config: dict[str, Any]):
    """With `private_key_jwt`, at least one of RS384/ES384 (this server: both)."""
    assert "private_key_jwt" in config["token_endpoint_auth_methods_supported"]
    assert {"RS384", "ES384"} <= set(config["token_endpoint_auth_signing_alg_values_supported"])


def test_g10_standalone_patient_required_capabilities(config: dict[str, Any]):
    required = ("launch-standalone client-public client-confidential-symmetric client-confidential-asymmetric "
                "sso-openid-connect context-standalone-patient permission-offline permission-patient authorize-post "
                "permission-v2 permission-v1").split()
    assert set(required) <= set(config["capabilities"])


def test_g10_ehr_practitioner_required_capabilities(config: dict[str, Any]):
    required = ("launch-ehr client-confidential-symmetric client-confidential-asymmetric sso-openid-connect "
                "context-banner context-style context-ehr-patient context-ehr-encounter permission-offline "
                "permission-user authorize-post permission-v2 permission-v1").split()
    assert set(required) <= set(config["capabilities"])


def test_cors_well_known_endpoint(world: Health):
    origin = "https://inferno.example"
    response = requests.get(f"{world.server.base}/.well-known/smart-configuration", headers={"Origin": origin},
                            timeout=30)
    assert response.status_code == 200
    assert response.headers.get("Access-Control-Allow-Origin") in (origin, "*")


def test_cors_metadata_request(world: Health):
    origin = "https://inferno.example"
    response = requests.get(f"{world.server.base}/metadata", headers={"Origin": origin,
                                                                      "Accept": "application/fhir+json"}, timeout=30)
    assert response.status_code == 200
    assert response.headers.get("Access-Control-Allow-Origin") in (origin, "*")


# == Standalone launch ==============================================================================================


def test_standalone_redirect_carries_code_and_state(standalone: Launch):
    back = query_of(standalone.location)
    assert standalone.location.startswith(REDIRECT)
    assert back["code"] and back["state"] == standalone.state


def test_standalone_token_exchange_body(standalone: Launch):
    """`token_response_body_test`: access_token, token_type bearer, expires_in numeric, scope string."""
    body = standalone.token
    assert isinstance(body["access_token"], str) and body["access_token"]
    assert body["token_type"].lower() == "bearer"
    assert isinstance(body["expires_in"], int) and 0 < body["expires_in"] <= 3600
    assert isinstance(body["scope"], str) and body["scope"]
    assert isinstance(body.get("refresh_token"), str)


def test_standalone_token_response_headers(standalone: Launch):
    """`token_response_headers_test`: Cache-Control no-store and Pragma no-cache."""
    assert "no-store" in standalone.token_response.headers["Cache-Control"]
    assert "no-cache" in standalone.token_response.headers["Pragma"]


def test_standalone_token_exchange_json_content_type(standalone: Launch):
    assert standalone.token_response.headers["Content-Type"].startswith("application/json")


def test_standalone_requested_scopes_granted(standalone: Launch):
    """Inferno warns when requested scopes are missing; the g10 full-access scopes are all granted."""
    assert set(G10_PATIENT_SCOPE.split()) <= granted(standalone.token)


def test_standalone_patient_context_read(world: Health, standalone: Launch):
    """The `patient` of the token response: `Patient/{patient}` read returns 200."""
    patient = standalone.token["patient"]
    assert patient == world["other"]
    response = world.get(f"Patient/{patient}", standalone.token["access_token"])
    assert response.status_code == 200 and response.json()["id"] == patient


def test_standalone_unauthorized_access(world: Health, standalone: Launch):
    """`unauthorized_access_test`: the launch patient's read without a token is 401."""
    response = world.get(f"Patient/{standalone.token['patient']}", None)
    assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")


def test_standalone_invalid_token_is_401(world: Health, standalone: Launch):
    response = world.get(f"Patient/{standalone.token['patient']}", standalone.token["access_token"] + "x")
    assert response.status_code == 401


def test_standalone_unrestricted_resource_type_access(world: Health, standalone: Launch):
    """g10 full access: a search of every patient-compartment type granted by `patient/*.rs` is 200."""
    token, pid = standalone.token["access_token"], standalone.token["patient"]
    for rtype in ("AllergyIntolerance", "Condition", "Encounter", "Observation", "Immunization",
                  "MedicationRequest", "Procedure", "CarePlan", "CareTeam", "DiagnosticReport", "DocumentReference",
                  "Goal", "Device", "Provenance"):
        assert world.get(f"{rtype}?patient={pid}", token).status_code == 200, rtype


def test_standalone_fhir_context_structure(standalone: Launch, ehr: Launch):
    """`fhirContext`, when present, is an array of objects each with a relative `reference`, a `canonical` or an
    `identifier`."""
    for body in (standalone.token, ehr.token):
        context = body.get("fhirContext", [])
        assert isinstance(context, list)
        for item in context:
            assert isinstance(item, dict) and ({"reference", "canonical", "identifier"} & set(item))
            if "reference" in item:
                assert "://" not in item["reference"] and item["reference"].count("/") == 1


def test_offline_access_is_explained_on_the_consent_page(world: Health):
    """g10 attestation: the user is told when `offline_access` is requested."""
    browser = Browser(world.server.url)
    _, url, _ = world.app.authorize_url(G10_PATIENT_SCOPE)
    browser.go(url)
    browser.sign_in("oscar")
    assert "decision" in browser.form_names()
    assert "until you revoke it" in text_of(browser.page.text)


# == OpenID Connect =================================================================================================


def test_openid_configuration(config: dict[str, Any]):
    response = requests.get(f"{config['issuer']}/.well-known/openid-configuration", timeout=30)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("application/json")
    doc = response.json()
    for key in ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri", "response_types_supported",
                "subject_types_supported", "id_token_signing_alg_values_supported"):
        assert doc[key], key
    assert doc["issuer"] == config["issuer"] and "RS256" in doc["id_token_signing_alg_values_supported"]


def test_openid_token_header(standalone: Launch, jwks: KeySet):
    """id_token header: alg RS256, a kid that names a key of the JWKS."""
    decoded = jwt.decode(standalone.token["id_token"], jwks, algorithms=["RS256"])
    assert decoded.header["alg"] == "RS256" and decoded.header["kid"]
    assert decoded.header["kid"] in {k.kid for k in jwks.keys}


def test_openid_token_payload(world: Health, standalone: Launch, config: dict[str, Any], jwks: KeySet):
    """Claims iss (= issuer), sub (non-blank, < 256), aud (= client_id), exp, iat; signature verified above."""
    claims = jwt.decode(standalone.token["id_token"], jwks, algorithms=["RS256"]).claims
    assert claims["iss"] == config["issuer"] and claims["aud"] == world.app.client_id
    assert 0 < len(claims["sub"]) < 256
    assert claims["exp"] > time.time() >= claims["iat"] - 5


def test_openid_token_signature_checked(standalone: Launch, jwks: KeySet):
    header, payload, signature = standalone.token["id_token"].split(".")
    forged = f"{header}.{payload}.{signature[:-4]}AAAA"
    with pytest.raises(Exception):  # noqa: B017 - joserfc's BadSignatureError
        jwt.decode(forged, jwks, algorithms=["RS256"])


def test_openid_fhir_user_claim_resolves(world: Health, standalone: Launch, jwks: KeySet):
    """`fhirUser` is a URL of an allowed type; GET it with the access token: 200 and the same type."""
    claims = jwt.decode(standalone.token["id_token"], jwks, algorithms=["RS256"]).claims
    fhir_user = claims["fhirUser"]
    rtype = fhir_user.rstrip("/").split("/")[-2]
    assert rtype in ("Patient", "Practitioner", "PractitionerRole", "RelatedPerson", "Person")
    response = requests.get(fhir_user, headers=bearer(standalone.token["access_token"]), timeout=30)
    assert response.status_code == 200 and response.json()["resourceType"] == rtype


def test_openid_fhir_user_of_a_practitioner_resolves(world: Health, ehr: Launch, jwks: KeySet):
    claims = jwt.decode(ehr.token["id_token"], jwks, algorithms=["RS256"]).claims
    assert claims["fhirUser"].endswith(f"/Practitioner/{world['dr']}")
    response = requests.get(claims["fhirUser"], headers=bearer(ehr.token["access_token"]), timeout=30)
    assert response.status_code == 200 and response.json()["resourceType"] == "Practitioner"


# == Token refresh ==================================================================================================


def test_token_refresh_without_scope(world: Health):
    first = launch(world, world.app, "oscar", G10_PATIENT_SCOPE).token
    response = refresh(world.app, first["refresh_token"])
    assert response.status_code == 200, response.text
    body = response.json()
    for key in ("access_token", "token_type", "expires_in", "scope"):
        assert key in body
    assert body["token_type"].lower() == "bearer" and isinstance(body["expires_in"], int)
    assert granted(body) == granted(first)


def test_token_refresh_with_scope_subset(world: Health):
    first = launch(world, world.app, "oscar", G10_PATIENT_SCOPE).token
    response = refresh(world.app, first["refresh_token"], "patient/*.rs offline_access")
    assert response.status_code == 200, response.text
    assert granted(response.json()) <= granted(first)
    assert granted(response.json()) == {"patient/*.rs", "offline_access"}


def test_token_refresh_response_headers(world: Health):
    first = launch(world, world.app, "oscar", G10_PATIENT_SCOPE).token
    response = refresh(world.app, first["refresh_token"])
    assert "no-store" in response.headers["Cache-Control"] and "no-cache" in response.headers["Pragma"]


def test_token_refresh_keeps_patient_context(world: Health):
    """g10: the patient context is in the refreshed token response and still reads 200."""
    first = launch(world, world.app, "oscar", G10_PATIENT_SCOPE).token
    body = refresh(world.app, first["refresh_token"]).json()
    assert body["patient"] == first["patient"]
    assert world.get(f"Patient/{body['patient']}", body["access_token"]).status_code == 200


def test_token_refresh_public_client_without_client_id(world: Health):
    """SMART's refresh request has no client_id; a public client's refresh token names its client."""
    first = launch(world, world.app, "oscar", G10_PATIENT_SCOPE).token
    response = requests.post(f"{world.server.url}/auth/token", data={
        "grant_type": "refresh_token", "refresh_token": first["refresh_token"]}, timeout=30)
    assert response.status_code == 200, response.text
    confidential = launch(world, world.confidential, "oscar", G10_PATIENT_SCOPE).token
    unauthenticated = requests.post(f"{world.server.url}/auth/token", data={
        "grant_type": "refresh_token", "refresh_token": confidential["refresh_token"]}, timeout=30)
    assert unauthenticated.status_code in (400, 401)  # a confidential client must still authenticate


def test_invalid_refresh_token_is_refused(world: Health):
    """`smart_invalid_token_refresh_test`: 400 or 401."""
    response = refresh(world.app, "not-a-refresh-token")
    assert response.status_code in (400, 401) and response.json()["error"] == "invalid_grant"


# == EHR launch =====================================================================================================


def test_ehr_launch_redirect_carries_code_and_state(ehr: Launch):
    back = query_of(ehr.location)
    assert back["code"] and back["state"] == ehr.state


def test_ehr_token_exchange_body_and_headers(ehr: Launch):
    body = ehr.token
    assert body["token_type"].lower() == "bearer" and isinstance(body["expires_in"], int)
    assert set(G10_EHR_SCOPE.split()) <= granted(body)
    assert "no-store" in ehr.token_response.headers["Cache-Control"]


def test_ehr_patient_context_read(world: Health, ehr: Launch):
    assert ehr.token["patient"] == world["kid1"]
    assert world.get(f"Patient/{ehr.token['patient']}", ehr.token["access_token"]).status_code == 200


def test_ehr_encounter_context_read(world: Health, ehr: Launch):
    assert ehr.token["encounter"] == world["kid1_enc"]
    response = world.get(f"Encounter/{ehr.token['encounter']}", ehr.token["access_token"])
    assert response.status_code == 200 and response.json()["id"] == world["kid1_enc"]


def test_ehr_need_patient_banner_present(ehr: Launch):
    assert isinstance(ehr.token["need_patient_banner"], bool)


def test_ehr_smart_style_url_resolves(ehr: Launch):
    response = requests.get(ehr.token["smart_style_url"], timeout=30)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("application/json")
    assert isinstance(response.json(), dict)


def test_ehr_unauthorized_access(world: Health, ehr: Launch):
    assert world.get(f"Patient/{ehr.token['patient']}", None).status_code == 401


def test_ehr_launch_id_is_required_to_match(world: Health):
    """An unknown `launch` gets no code."""
    _, url, _ = world.confidential.authorize_url(G10_EHR_SCOPE, launch="no-such-launch")
    response = requests.get(url, allow_redirects=False, timeout=30)
    assert "code" not in query_of(response.headers.get("Location", ""))


# == Token introspection ============================================================================================


def test_token_introspection_active(world: Health, ehr: Launch, jwks: KeySet):
    app = world.confidential
    response = requests.post(f"{world.server.url}/auth/introspect", data={"token": ehr.token["access_token"]},
                             auth=(app.client_id, app.secret), headers={"Accept": "application/json"}, timeout=30)
    assert response.status_code == 200
    info = response.json()
    assert info["active"] is True and info["client_id"] == app.client_id
    assert set(info["scope"].split()) == granted(ehr.token) and isinstance(info["exp"], int)
    assert info["patient"] == ehr.token["patient"] and info["encounter"] == ehr.token["encounter"]
    claims = jwt.decode(ehr.token["id_token"], jwks, algorithms=["RS256"]).claims
    assert info["iss"] == claims["iss"] and info["sub"] == claims["sub"]


def test_token_introspection_invalid_token(world: Health):
    app = world.confidential
    response = requests.post(f"{world.server.url}/auth/introspect", data={"token": "invalid-token"},
                             auth=(app.client_id, app.secret), timeout=30)
    assert response.status_code == 200 and response.json() == {"active": False}


def test_token_introspection_with_bearer_authorization(world: Health, standalone: Launch):
    response = requests.post(f"{world.server.url}/auth/introspect", data={"token": standalone.token["access_token"]},
                             headers=bearer(world.system_token), timeout=30)
    assert response.status_code == 200 and response.json()["active"] is True


# == Backend Services ===============================================================================================


def test_backend_services_invalid_grant_type(world: Health):
    response = world.system.token_with(world.system.assertion(), "system/Patient.rs")
    assert response.status_code == 200
    bad = requests.post(world.system.token_url, data={
        "grant_type": "not_a_grant_type", "scope": "system/Patient.rs", "client_assertion": world.system.assertion(),
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}, timeout=30)
    assert bad.status_code == 400


def test_backend_services_invalid_client_assertion_type(world: Health):
    bad = requests.post(world.system.token_url, data={
        "grant_type": "client_credentials", "scope": "system/Patient.rs", "client_assertion": world.system.assertion(),
        "client_assertion_type": "not_an_assertion_type"}, timeout=30)
    assert bad.status_code == 400


@pytest.mark.parametrize("forgery", ["wrong aud", "exp too far", "iss not the client", "unknown kid", "bad signature"])
def test_backend_services_invalid_jwt(world: Health, forgery: str):
    backend = world.system
    if forgery == "bad signature":
        head, body, sig = backend.assertion().split(".")
        assertion = f"{head}.{body}.{sig[::-1]}"
    elif forgery == "unknown kid":
        other = RSAKey.generate_key(2048, parameters={"kid": "rs384-1"}, private=True)
        assertion = Backend(backend.server, backend.client_id, other, backend.ec).assertion()
    else:
        claims = {"wrong aud": {"aud": f"{world.server.url}/elsewhere"},
                  "exp too far": {"exp": int(time.time()) + 3600},
                  "iss not the client": {"iss": "someone-else"}}[forgery]
        assertion = backend.assertion(**claims)
    response = backend.token_with(assertion, "system/Patient.rs")
    assert response.status_code in (400, 401) and response.json()["error"] == "invalid_client"


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_backend_services_token_response(world: Health, alg: str):
    response = world.system.token_with(world.system.assertion(alg), "system/Patient.rs")
    assert response.status_code in (200, 201)
    body = response.json()
    assert body["access_token"] and body["token_type"].lower() == "bearer"
    assert isinstance(body["expires_in"], int) and body["expires_in"] <= 300 and body["scope"] == "system/Patient.rs"
    assert world.get(f"Patient/{world['kid2']}", body["access_token"]).status_code == 200


# == g10 Additional Authorization Tests =============================================================================


def test_g10_public_client_standalone_launch(world: Health):
    result = launch(world, world.app, "kim", "launch/patient openid fhirUser patient/*.rs")
    assert world.app.secret is None and result.token["patient"] == world["kid1"]
    assert world.get(f"Patient/{world['kid1']}", result.token["access_token"]).status_code == 200


def test_g10_token_revocation(world: Health):
    """After revocation: FHIR read with the access token 401/403/404; refresh with the refresh token 400/401."""
    app = world.confidential
    token = launch(world, app, "oscar", G10_PATIENT_SCOPE).token
    revoked = requests.post(f"{world.server.url}/auth/revoke", data={"token": token["access_token"]},
                            auth=(app.client_id, app.secret), timeout=30)
    assert revoked.status_code == 200
    assert world.get(f"Patient/{token['patient']}", token["access_token"]).status_code in (401, 403, 404)
    assert refresh(app, token["refresh_token"]).status_code in (400, 401)


def test_g10_invalid_aud_gets_no_code(world: Health):
    _, url, _ = world.app.authorize_url("launch/patient patient/*.rs", aud="https://inferno.example/fhir")
    location = Browser(world.server.url).authorize(url, "oscar")
    assert "code" not in query_of(location)


def test_g10_invalid_code_is_400(world: Health):
    response = world.app.token_request({"grant_type": "authorization_code", "code": "INVALID_CODE",
                                        "redirect_uri": REDIRECT, "code_verifier": generate_token(64)})
    assert response.status_code == 400


def test_g10_invalid_client_id(world: Health):
    location, _, verifier = code_walk(world, world.app, "oscar", "launch/patient patient/*.rs")
    response = requests.post(f"{world.server.url}/auth/token", data={
        "grant_type": "authorization_code", "code": query_of(location)["code"], "redirect_uri": REDIRECT,
        "code_verifier": verifier, "client_id": "INVALID_CLIENT_ID"}, timeout=30)
    assert response.status_code in (400, 401)


@pytest.mark.parametrize("variant", ["missing code_verifier", "blank code_verifier", "wrong code_verifier",
                                     "code_verifier equal to code_challenge"])
def test_g10_invalid_pkce(world: Health, variant: str):
    location, _, verifier = code_walk(world, world.app, "oscar", "launch/patient patient/*.rs")
    body = {"grant_type": "authorization_code", "code": query_of(location)["code"], "redirect_uri": REDIRECT}
    body.update({"missing code_verifier": {}, "blank code_verifier": {"code_verifier": ""},
                 "wrong code_verifier": {"code_verifier": generate_token(64)},
                 "code_verifier equal to code_challenge": {
                     "code_verifier": create_s256_code_challenge(verifier)}}[variant])
    response = world.app.token_request(body)
    assert response.status_code in (400, 401)


def test_g10_ehr_patient_launch(world: Health, ehr: Launch):
    """EHR launch with `patient/` scopes: the context patient only."""
    clinician = Browser(world.server.url)
    portal = world.confidential.launch(clinician, "drsmith", "openid fhirUser user/*.rs")
    made = requests.post(f"{world.server.url}/auth/launch", headers=bearer(portal["access_token"]), json={
        "patient": world["kid1"], "client_id": world.app.client_id}, timeout=30).json()
    token = launch(world, world.app, None, "launch openid fhirUser patient/*.rs", clinician,
                   launch=made["launch"]).token
    assert token["patient"] == world["kid1"]
    assert world.get(f"Patient/{world['kid1']}", token["access_token"]).status_code == 200
    assert world.get(f"Patient/{world['other']}", token["access_token"]).status_code in (403, 404)


def test_g10_asymmetric_client_launch(world: Health):
    """A confidential-asymmetric client: the code exchange authenticated by a private_key_jwt assertion."""
    rsa = RSAKey.generate_key(2048, parameters={"kid": "app-rs384"}, private=True)
    ec = ECKey.generate_key("P-384", parameters={"kid": "app-es384"}, private=True)
    client, _ = ClientRegistry(world.db).register({
        "client_id": f"asym-{uuid.uuid4().hex[:8]}", "client_name": "Asymmetric App", "redirect_uris": [REDIRECT],
        "grant_types": ["authorization_code", "refresh_token"], "token_endpoint_auth_method": "private_key_jwt",
        "jwks": KeySet([rsa, ec]).as_dict(private=False)}, admin=True)
    app = App(world.server, client.client_id)
    signer = Backend(world.server, client.client_id, rsa, ec)
    for alg in ("RS384", "ES384"):
        location, _, verifier = code_walk(world, app, "oscar", "launch/patient openid fhirUser patient/*.rs")
        response = requests.post(signer.token_url, data={
            "grant_type": "authorization_code", "code": query_of(location)["code"], "redirect_uri": REDIRECT,
            "code_verifier": verifier, "client_assertion": signer.assertion(alg),
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}, timeout=30)
        assert response.status_code == 200, response.text
        assert world.get(f"Patient/{world['other']}", response.json()["access_token"]).status_code == 200
    unsigned = code_walk(world, app, "oscar", "launch/patient patient/*.rs")
    response = requests.post(signer.token_url, data={
        "grant_type": "authorization_code", "code": query_of(unsigned[0])["code"], "redirect_uri": REDIRECT,
        "code_verifier": unsigned[2], "client_id": client.client_id}, timeout=30)
    assert response.status_code in (400, 401)  # without its assertion the client is not authenticated


def test_g10_smart_v1_scopes_launch(world: Health):
    """SMART v1 scopes requested: v1 scopes granted back, and they work."""
    token = launch(world, world.app, "oscar",
                   "launch/patient openid fhirUser patient/Patient.read patient/Observation.read").token
    assert {"patient/Patient.read", "patient/Observation.read"} <= granted(token)
    assert world.get(f"Patient/{world['other']}", token["access_token"]).status_code == 200
    assert world.get("Condition", token["access_token"]).status_code in (401, 403)


@pytest.mark.parametrize("subset", [
    ("Condition", "encounter-diagnosis", "Observation", "laboratory"),
    ("Condition", "problem-list-item", "Observation", "vital-signs"),
])
def test_g10_fine_grained_scopes_search_results_exact(world: Health, subset: tuple[str, str, str, str]):
    """Two launches with different granular subsets: each search returns exactly the granted categories."""
    ctype, ccode, otype, ocode = subset
    scope = (f"launch/patient patient/Patient.rs patient/{ctype}.rs?category={COND_CATEGORY}|{ccode} "
             f"patient/{otype}.rs?category={OBS_CATEGORY}|{ocode}")
    token = launch(world, world.app, "oscar", scope).token["access_token"]
    assert match_ids(world.get("Condition", token)) == {world[f"other_{ccode}"]}
    assert match_ids(world.get(f"Condition?patient={world['other']}", token)) == {world[f"other_{ccode}"]}
    expected = {"laboratory": "other_lab", "vital-signs": "other_vital"}[ocode]
    assert match_ids(world.get("Observation", token)) == {world[expected]}


def test_g10_granular_scope_read_out_of_scope(world: Health):
    """`granular_scope_read_test`: a read of a resource outside the granted categories is a 4xx."""
    scope = f"launch/patient patient/Patient.rs patient/Observation.rs?category={OBS_CATEGORY}|laboratory"
    token = launch(world, world.app, "oscar", scope).token["access_token"]
    assert world.get(f"Observation/{world['other_lab']}", token).status_code == 200
    refused = world.get(f"Observation/{world['other_vital']}", token)
    assert 400 <= refused.status_code < 500


def test_g10_granular_scope_selection(world: Health):
    """`smart_granular_scope_selection_test`: only granular scopes requested -> only granular granted (no
    resource-level Condition/Observation scope), every g10 granular scope is grantable, plus Patient v2 read."""
    scope = "launch/patient openid fhirUser patient/Patient.rs " + " ".join(f"patient/{g}" for g in G10_GRANULAR)
    token = launch(world, world.app, "oscar", scope).token
    got = granted(token)
    assert {f"patient/{g}" for g in G10_GRANULAR} <= got and "patient/Patient.rs" in got
    assert not {s for s in got if s.startswith(("patient/Condition.", "patient/Observation.")) and "?" not in s}


def test_g10_limited_scope_grant(world: Health):
    """Standalone Patient App - Limited Access: the user deselects types at consent; the token grants exactly
    the selected ones; restricted types are 401/403, granted ones 200."""
    requested = "launch/patient patient/Patient.rs patient/Observation.rs patient/Condition.rs patient/Encounter.rs"
    token = launch(world, world.app, "oscar", requested,
                   untick=("patient/Condition.rs", "patient/Encounter.rs")).token
    assert granted(token) == {"launch/patient", "patient/Patient.rs", "patient/Observation.rs"}
    access = token["access_token"]
    for rtype in ("Condition", "Encounter"):
        assert world.get(f"{rtype}?patient={world['other']}", access).status_code in (401, 403)
    assert world.get(f"Observation?patient={world['other']}", access).status_code == 200


def test_g10_restricted_resource_type_access(world: Health):
    """`resource_access_test`: a type covered by no granted scope is 401 or 403, with an OperationOutcome."""
    token = launch(world, world.app, "oscar", "launch/patient patient/Patient.rs").token["access_token"]
    response = world.get(f"AllergyIntolerance?patient={world['other']}", token)
    assert response.status_code in (401, 403) and response.json()["resourceType"] == "OperationOutcome"


def test_g10_write_scope_does_not_imply_read(world: Health):
    token = launch(world, world.app, "oscar", "launch/patient patient/Observation.c").token["access_token"]
    assert world.get(f"Observation/{world['other_lab']}", token).status_code == 403
    created = world.post("Observation", token, {"resourceType": "Observation", "status": "final",
                                                "code": {"text": "home glucose"},
                                                "subject": {"reference": f"Patient/{world['other']}"}})
    assert created.status_code == 201, created.text


def test_g10_refresh_token_valid_at_least_three_months(world: Health, standalone: Launch):
    """g10 attestation, checked: a patient app's offline refresh token lives >= 3 months (introspection `exp`)."""
    info = requests.post(f"{world.server.url}/auth/introspect", data={"token": standalone.token["refresh_token"]},
                         headers=bearer(world.system_token), timeout=30).json()
    assert info["active"] is True and info["exp"] - time.time() >= 90 * 86400 - 600


def test_cors_token_exchange(world: Health):
    """`cors_token_exchange`: the token endpoint answers a browser app's origin."""
    location, _, verifier = code_walk(world, world.app, "oscar", "launch/patient patient/*.rs")
    origin = "https://inferno.example"
    response = requests.post(f"{world.server.url}/auth/token", headers={"Origin": origin}, data={
        "grant_type": "authorization_code", "code": query_of(location)["code"], "redirect_uri": REDIRECT,
        "code_verifier": verifier, "client_id": world.app.client_id}, timeout=30)
    assert response.status_code == 200
    assert response.headers.get("Access-Control-Allow-Origin") in (origin, "*")


def test_cors_openid_fhir_user_claim(world: Health, standalone: Launch, jwks: KeySet):
    """`cors_openid_fhir_user_claim`: the fhirUser read with an Origin gets Access-Control-Allow-Origin."""
    claims = jwt.decode(standalone.token["id_token"], jwks, algorithms=["RS256"]).claims
    origin = "https://inferno.example"
    response = requests.get(claims["fhirUser"], headers={**bearer(standalone.token["access_token"]), "Origin": origin},
                            timeout=30)
    assert response.status_code == 200
    assert response.headers.get("Access-Control-Allow-Origin") in (origin, "*")


def test_access_token_for_another_audience_is_401(world: Health):
    """The resource server SHALL check that the authorization's `aud` is its own base: a live token whose grant was
    made for another FHIR server is refused."""
    claims = Access(world.app.client_id, "patient/*.rs", "authorization_code", patient=world["other"]).to_claims()
    tokens = TokenStore(world.db)
    foreign, _ = tokens.issue(kind=ACCESS, grant=f"g-{uuid.uuid4().hex}", client_id=world.app.client_id,
                              scope="patient/*.rs", grant_type="authorization_code", aud="https://other.example/fhir",
                              ttl=300, claims=claims, context=Context(patient=world["other"]))
    own, _ = tokens.issue(kind=ACCESS, grant=f"g-{uuid.uuid4().hex}", client_id=world.app.client_id,
                          scope="patient/*.rs", grant_type="authorization_code", aud=world.server.base, ttl=300,
                          claims=claims, context=Context(patient=world["other"]))
    assert world.get(f"Patient/{world['other']}", own).status_code == 200  # the same token for this server works
    assert world.get(f"Patient/{world['other']}", foreign).status_code == 401

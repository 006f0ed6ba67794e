"""The Python SMART client `fhirclient` (4.4.0) against a running server with FHIR_AUTH=on.

What that version supports and what is tested here: endpoint discovery from the CapabilityStatement's `oauth-uris`
extension only (it does not read .well-known/smart-configuration), an authorize URL with `aud` and PKCE S256 (it
always sends a code_challenge), the code exchange in `handle_callback` (public client with `client_id`, confidential
with HTTP Basic), the launch context (`patient`), reads and searches parsed by its strict R4 models, `reauthorize()`
(refresh token grant) and the client_credentials grant with a caller-made `private_key_jwt` assertion (`jwt_token`).
It ignores the id_token and has no EHR-launch helper beyond passing `launch` through (tested below).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from fhirclient import client as fhirclient
from fhirclient.models.condition import Condition
from fhirclient.models.encounter import Encounter
from fhirclient.models.observation import Observation
from fhirclient.models.patient import Patient
from fhirclient.server import FHIRNotFoundException, FHIRPermissionDeniedException, FHIRUnauthorizedException

from tests.smart_helpers import REDIRECT, App, Browser, bearer, query_of
from tests.smart_world import Health, health_system

SCOPE = "launch/patient openid fhirUser offline_access patient/*.rs"


@pytest.fixture(scope="module")
def world(ferretdb, tmp_path_factory) -> Iterator[Health]:
    with health_system(ferretdb, tmp_path_factory.mktemp("smartpy"), "smartpy") as health:
        yield health


def smart_client(world: Health, app: App, scope: str = SCOPE, **settings: str) -> fhirclient.FHIRClient:
    config = {"app_id": app.client_id, "api_base": world.server.base, "redirect_uri": REDIRECT, "scope": scope,
              **settings}
    if app.secret:
        config["app_secret"] = app.secret
    smart = fhirclient.FHIRClient(settings=config)
    assert smart.prepare() is False  # not ready: it fetched the CapabilityStatement and found the OAuth endpoints
    return smart


def sign_in(world: Health, smart: fhirclient.FHIRClient, username: str, **walk: str) -> dict[str, str]:
    """The user's browser from fhirclient's authorize URL to the redirect; fhirclient exchanges the code."""
    url = smart.authorize_url
    location = Browser(world.server.url).authorize(url, username, **walk)
    smart.handle_callback(location)
    return query_of(url)


def test_discovery_authorize_url_and_pkce(world: Health):
    smart = smart_client(world, world.app)
    params = query_of(smart.authorize_url)
    assert smart.authorize_url.startswith(f"{world.server.url}/auth/authorize?")
    assert params["aud"] == world.server.base and params["client_id"] == world.app.client_id
    assert params["code_challenge_method"] == "S256" and len(params["code_challenge"]) == 43
    assert params["scope"].split()[0] == "launch/patient" and params["redirect_uri"] == REDIRECT
    assert smart.server.auth._token_uri == f"{world.server.url}/auth/token"


def test_public_client_standalone_launch_strict_reads_and_refresh(world: Health):
    smart = smart_client(world, world.app)
    sign_in(world, smart, "oscar")
    assert smart.ready and smart.patient_id == world["other"]
    assert set(smart.launch_context["scope"].split()) == set(SCOPE.split())
    patient = smart.patient  # Patient.read through the strict models
    assert isinstance(patient, Patient) and patient.id == world["other"]
    assert smart.human_name(patient.name[0]) == "Oscar Other"
    server = smart.server
    observations = list(Observation.where({"patient": world["other"]}).perform_resources_iter(server))
    assert {o.id for o in observations} == {world["other_lab"], world["other_vital"], world["other_social"]}
    assert all(o.subject.reference == f"Patient/{world['other']}" for o in observations)
    conditions = list(Condition.where({"category": "problem-list-item"}).perform_resources_iter(server))
    assert [c.id for c in conditions] == [world["other_problem-list-item"]]
    assert Encounter.read(world["other_enc"], server).subject.reference == f"Patient/{world['other']}"
    # another patient's record is out of reach (404: existence does not leak)
    with pytest.raises((FHIRNotFoundException, FHIRPermissionDeniedException)):
        Patient.read(world["kid1"], server)
    assert list(Observation.where({"patient": world["kid1"]}).perform_resources_iter(server)) == []

    before_access, before_refresh = server.auth.access_token, server.auth.refresh_token
    assert before_refresh
    assert smart.reauthorize() is True
    assert server.auth.access_token != before_access and server.auth.refresh_token != before_refresh
    assert smart.patient_id == world["other"]
    assert Patient.read(world["other"], server).id == world["other"]


def test_confidential_client_proxy_picks_a_child(world: Health):
    smart = smart_client(world, world.confidential)
    sign_in(world, smart, "mum", patient=f"Patient/{world['kid1']}")
    assert smart.patient_id == world["kid1"] and smart.patient.id == world["kid1"]
    server = smart.server
    labs = list(Observation.where({"category": "laboratory"}).perform_resources_iter(server))
    assert [o.id for o in labs] == [world["kid1_lab"]]
    with pytest.raises((FHIRNotFoundException, FHIRPermissionDeniedException)):
        Patient.read(world["kid2"], server)  # her other child, but not the patient in context
    assert smart.reauthorize() is True and smart.patient.id == world["kid1"]


def test_revoked_token_then_refresh_fails(world: Health):
    smart = smart_client(world, world.app)
    sign_in(world, smart, "kim")
    server = smart.server
    assert Patient.read(world["kid1"], server).id == world["kid1"]
    revoked = server.session.post(f"{world.server.url}/auth/revoke", data={
        "token": server.auth.refresh_token, "client_id": world.app.client_id}, timeout=30)
    assert revoked.status_code == 200
    with pytest.raises(FHIRUnauthorizedException):
        Patient.read(world["kid1"], server)  # revoking the refresh token ends the whole grant
    with pytest.raises(Exception, match="400|invalid_grant"):
        smart.reauthorize()


def test_ehr_launch_token_passes_through(world: Health):
    clinician = Browser(world.server.url)
    ehr = world.confidential.launch(clinician, "drsmith", "openid fhirUser user/*.rs")
    made = requests.post(f"{world.server.url}/auth/launch", headers=bearer(ehr["access_token"]),
                         json={"patient": world["kid1"], "client_id": world.app.client_id}, timeout=30)
    assert made.status_code == 201, made.text
    smart = smart_client(world, world.app, scope="launch openid fhirUser patient/*.rs",
                         launch_token=made.json()["launch"])
    url = smart.authorize_url
    assert query_of(url)["launch"] == made.json()["launch"]
    smart.handle_callback(clinician.authorize(url, None))
    assert smart.patient_id == world["kid1"] and smart.patient.id == world["kid1"]


def test_backend_services_with_jwt_token(world: Health):
    for alg in ("RS384", "ES384"):
        smart = fhirclient.FHIRClient(settings={
            "app_id": world.system.client_id, "api_base": world.server.base, "scope": "system/Patient.rs",
            "jwt_token": world.system.assertion(alg)})
        smart.prepare()
        smart.authorize()
        assert smart.ready and smart.launch_context["scope"] == "system/Patient.rs"
        found = list(Patient.where({"_id": world["kid2"]}).perform_resources_iter(smart.server))
        assert [p.id for p in found] == [world["kid2"]]
        with pytest.raises(FHIRPermissionDeniedException):
            list(Observation.where({}).perform_resources_iter(smart.server))

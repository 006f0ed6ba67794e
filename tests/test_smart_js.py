"""The npm SMART client `fhirclient` (2.6.3, its Node adapter, headless) completes SMART App Launch against a running
server with FHIR_AUTH=on: standalone launch with a patient picker and EHR launch, both with PKCE S256 required
(`pkceMode: "required"`), the code exchange inside fhirclient's ready(), reads with the token, and a refresh.

The app is tests/js/smart_app.mjs (a Node http server around fhirclient's authorize()/ready()); the user's browser
is tests.smart_helpers.Browser, which signs in and submits the picker and consent forms with plain HTTP.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
import requests

from smart_auth.clients import ClientRegistry
from tests.servers import free_port
from tests.smart_helpers import Browser, bearer, query_of
from tests.smart_world import Health, health_system
from tests.test_client_fhir_kit import JS, _ensure_node_modules, _tool


@pytest.fixture(scope="module")
def world(ferretdb, tmp_path_factory) -> Iterator[Health]:
    _ensure_node_modules()
    with health_system(ferretdb, tmp_path_factory.mktemp("smartjs"), "smartjs") as health:
        yield health


@dataclass
class NodeApp:
    url: str
    client_id: str

    def get(self, path: str) -> requests.Response:
        return requests.get(f"{self.url}{path}", allow_redirects=False, timeout=60)


@contextmanager
def node_app(world: Health, scope: str, *, pkce: str = "required", confidential: bool = False,
             launch: bool = False) -> Iterator[NodeApp]:
    """Register an app whose redirect URI is the Node process's /callback and run it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    metadata: dict[str, Any] = {
        "client_name": "fhirclient.js app", "redirect_uris": [f"{url}/callback"],
        "grant_types": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_method": "client_secret_basic" if confidential else "none"}
    if launch:
        metadata["launch_uri"] = f"{url}/launch"
    client, secret = ClientRegistry(world.db).register(metadata, admin=True)
    env = {**os.environ, "APP_PORT": str(port), "OTHER_PATIENT": world["other"], "NO_COLOR": "1"}
    proc = subprocess.Popen([_tool("node"), "smart_app.mjs", client.client_id, scope, pkce, secret or ""], cwd=JS,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("listening"), f"the Node app did not start: {line}"
        yield NodeApp(url, client.client_id)
    finally:
        proc.terminate()
        proc.wait(10)


def launch_and_report(world: Health, app: NodeApp, start: str, browser: Browser, username: str | None,
                      **walk: Any) -> tuple[str, requests.Response]:
    """The app's launch URL -> fhirclient's redirect to /auth/authorize -> the browser walk -> the app's callback."""
    first = app.get(start)
    assert first.status_code == 302, first.text
    authorize = first.headers["Location"]
    assert authorize.startswith(f"{world.server.url}/auth/authorize?")
    back = browser.authorize(authorize, username, **walk)
    assert back.startswith(f"{app.url}/callback?")
    return authorize, requests.get(back, timeout=60)


def test_standalone_launch_pkce_and_refresh(world: Health):
    scope = "launch/patient openid fhirUser offline_access patient/Patient.rs patient/Observation.rs"
    with node_app(world, scope) as app:
        authorize, callback = launch_and_report(world, app, f"/launch?iss={quote(world.server.base)}",
                                                Browser(world.server.url), "mum", patient=f"Patient/{world['kid1']}")
        params = query_of(authorize)
        assert params["code_challenge_method"] == "S256" and len(params["code_challenge"]) == 43
        assert params["aud"] == world.server.base and params["client_id"] == app.client_id
        assert callback.status_code == 200, callback.text
        report = callback.json()
    assert report["patient"] == world["kid1"] and report["patientRead"] == f"Patient/{world['kid1']}"
    assert report["codeVerifierSent"] is True
    # the proxy's own record is outside kid1's compartment, which is all that patient/ scopes reach
    assert report["fhirUser"] == f"Patient/{world['mum']}" and report["userRead"] in (403, 404)
    assert set(report["scope"].split()) == set(scope.split())
    assert report["observations"] and set(report["observations"]) == {f"Patient/{world['kid1']}"}
    assert report["otherPatient"] in (403, 404)
    assert report["hasRefreshToken"] and report["refreshed"] is True
    assert set(report["refreshedScope"].split()) == set(scope.split())
    assert report["readAfterRefresh"] == f"Patient/{world['kid1']}"
    assert report["oldTokenAfterRefresh"] == 200  # rotation keeps the old access token until it expires


def test_ehr_launch_with_confidential_client(world: Health):
    scope = "launch openid fhirUser online_access patient/*.rs user/Practitioner.rs"
    clinician = Browser(world.server.url)
    ehr = world.confidential.launch(clinician, "drsmith", "openid fhirUser user/*.rs")
    with node_app(world, scope, confidential=True, launch=True) as app:
        made = requests.post(f"{world.server.url}/auth/launch", headers=bearer(ehr["access_token"]), json={
            "patient": world["kid1"], "encounter": world["kid1_enc"], "client_id": app.client_id}, timeout=30)
        assert made.status_code == 201, made.text
        launch_url = made.json()["launch_url"]
        assert launch_url.startswith(f"{app.url}/launch?")
        authorize, callback = launch_and_report(world, app, launch_url[len(app.url):], clinician, None)
        assert query_of(authorize)["launch"] == made.json()["launch"]
        assert query_of(authorize)["code_challenge_method"] == "S256"
        assert callback.status_code == 200, callback.text
        report = callback.json()
    assert report["patient"] == world["kid1"] and report["encounter"] == world["kid1_enc"]
    assert report["fhirUser"] == f"Practitioner/{world['dr']}" and report["userRead"] == f"Practitioner/{world['dr']}"
    assert set(report["observations"]) == {f"Patient/{world['kid1']}"}
    assert report["otherPatient"] in (403, 404)
    assert report["refreshed"] is True and report["readAfterRefresh"] == f"Patient/{world['kid1']}"


def test_app_without_pkce_is_refused(world: Health):
    """fhirclient with PKCE disabled sends no code_challenge: the server answers the app with an error, no code."""
    with node_app(world, "launch/patient patient/Patient.rs", pkce="disabled") as app:
        first = app.get(f"/launch?iss={quote(world.server.base)}")
        assert "code_challenge" not in query_of(first.headers["Location"])
        back = Browser(world.server.url).authorize(first.headers["Location"], "oscar")
        assert query_of(back)["error"] == "invalid_request" and "code" not in query_of(back)
        answer = requests.get(back, timeout=60)
    assert answer.status_code == 500 and "invalid_request" in answer.json()["error"]


def test_package_lock_pins_fhirclient() -> None:
    """`npm ci` installs the fhirclient these tests were written against."""
    lock = json.loads((JS / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/fhirclient"]["version"] == "2.6.3"
    assert json.loads((JS / "package.json").read_text())["dependencies"]["fhirclient"] == "2.6.3"

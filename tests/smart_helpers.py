"""Helpers for the SMART flow tests: a browser that reads and submits the server's HTML forms (no JavaScript, as the
pages need none), SMART apps built on authlib's own OAuth client (PKCE S256, private_key_jwt), and setup through the
stores on the same database the server uses."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey
from pymongo import MongoClient
from pymongo.database import Database

from smart_auth.clients import ClientRegistry
from smart_auth.users import UserStore

REDIRECT = "http://127.0.0.1:9/callback"  # never fetched: the browser stops at the app's redirect
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
PASSWORD = "correct horse battery staple"


# -- forms -----------------------------------------------------------------------------------------------------------


@dataclass
class Form:
    """One <form>: where it goes and its controls (name, type, value, checked)."""

    action: str
    method: str
    controls: list[dict[str, Any]] = field(default_factory=list)

    def names(self) -> set[str]:
        return {c["name"] for c in self.controls}

    def options(self, name: str) -> list[str]:
        return [c["value"] for c in self.controls if c["name"] == name]

    def values(self, button: str | None = None) -> list[tuple[str, str]]:
        """What a browser sends: hidden and text fields, checked boxes and radios, and the pressed button."""
        out = []
        for c in self.controls:
            kind = c["type"]
            if kind in ("checkbox", "radio") and not c["checked"]:
                continue
            if kind in ("submit", "button"):
                continue
            out.append((c["name"], c["value"]))
        if button is not None:
            name, _, value = button.partition("=")
            out.append((name, value))
        return out


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(Form(a.get("action", ""), a.get("method", "get").lower()))
        elif tag in ("input", "button") and self.forms and a.get("name"):
            kind = a.get("type", "submit" if tag == "button" else "text").lower()
            self.forms[-1].controls.append({"name": a["name"], "type": kind, "value": a.get("value", ""),
                                            "checked": "checked" in a})

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def forms_of(html: str) -> list[Form]:
    parser = _FormParser()
    parser.feed(html)
    return parser.forms


def text_of(html: str) -> str:
    parser = _FormParser()
    parser.feed(html)
    return " ".join(" ".join(parser.text).split())


# -- the browser -----------------------------------------------------------------------------------------------------


class Browser:
    """A person's browser on the server's pages: follows redirects on the server, stops at the app's redirect."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.http = requests.Session()
        self.page: requests.Response | None = None

    def go(self, url: str, method: str = "GET", data: Any = None) -> requests.Response:
        """Request `url` and follow redirects that stay on the server; `self.page` is the last response."""
        response = self.http.request(method, urljoin(self.origin, url), data=data, allow_redirects=False, timeout=30)
        while response.is_redirect:
            target = urljoin(response.url, response.headers["Location"])
            if not target.startswith(self.origin):
                break
            response = self.http.get(target, allow_redirects=False, timeout=30)
        self.page = response
        return response

    def form(self, has: str) -> Form:
        """The form on the current page that has a control named `has`."""
        assert self.page is not None
        for form in forms_of(self.page.text):
            if has in form.names():
                return form
        raise AssertionError(f"no form with {has!r} on {self.page.url}: {text_of(self.page.text)[:500]}")

    def submit(self, has: str, fill: dict[str, str] | None = None, *, button: str | None = None,
               untick: tuple[str, ...] = (), choose: dict[str, str] | None = None) -> requests.Response:
        form = self.form(has)
        data = [(k, v) for k, v in form.values(button) if k not in (fill or {}) and k not in (choose or {})
                and not (k == "scope" and v in untick)]
        data += list((fill or {}).items()) + list((choose or {}).items())
        return self.go(urljoin(self.page.url, form.action or self.page.url), form.method.upper(), data)

    @property
    def location(self) -> str | None:
        """Where the server sent the browser off-site (the app's redirect URI), or None."""
        if self.page is not None and self.page.is_redirect:
            return urljoin(self.page.url, self.page.headers["Location"])
        return None

    def sign_in(self, username: str, password: str = PASSWORD, totp: str | None = None) -> requests.Response:
        self.submit("password", {"username": username, "password": password})
        if totp is not None:
            self.submit("code", {"code": totp})
        return self.page

    def authorize(self, url: str, username: str | None, *, password: str = PASSWORD, patient: str | None = None,
                  untick: tuple[str, ...] = (), deny: bool = False, totp: str | None = None) -> str:
        """Walk authorize -> sign-in -> (second factor) -> (picker) -> consent; return the app redirect URL."""
        self.go(url)
        if self.location:
            return self.location
        if username is not None and "password" in {n for f in forms_of(self.page.text) for n in f.names()}:
            self.sign_in(username, password, totp)
        if "patient" in self.form_names() and "decision" not in self.form_names():
            self.submit("patient", choose={"patient": patient} if patient else None)
        if self.location:
            return self.location
        self.submit("decision", button="decision=deny" if deny else "decision=allow", untick=untick)
        assert self.location, f"no redirect to the app: {self.page.status_code} {text_of(self.page.text)[:500]}"
        return self.location

    def form_names(self) -> set[str]:
        assert self.page is not None
        return {n for f in forms_of(self.page.text) for n in f.names()}


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


# -- apps ------------------------------------------------------------------------------------------------------------


@dataclass
class App:
    """A SMART app on authlib's OAuth 2.0 client: PKCE S256 and the client authentication it registered."""

    server: Any  # tests.servers.ServerProcess
    client_id: str
    secret: str | None = None
    redirect_uri: str = REDIRECT

    @property
    def auth(self) -> str:
        return f"{self.server.url}/auth"

    def session(self, scope: str) -> OAuth2Session:
        method = "client_secret_basic" if self.secret else "none"
        return OAuth2Session(self.client_id, self.secret, scope=scope, redirect_uri=self.redirect_uri,
                             code_challenge_method="S256", token_endpoint_auth_method=method)

    def authorize_url(self, scope: str, **extra: str) -> tuple[OAuth2Session, str, str]:
        """(session, URL, code_verifier) of a standalone authorization request with `aud` = the FHIR base."""
        oauth = self.session(scope)
        verifier = generate_token(64)
        extra.setdefault("aud", self.server.base)
        url, _ = oauth.create_authorization_url(f"{self.auth}/authorize", code_verifier=verifier, **extra)
        return oauth, url, verifier

    def launch(self, browser: Browser, username: str | None, scope: str, **kw: Any) -> dict[str, Any]:
        """A whole authorization: the browser walk, then the token request with the code_verifier."""
        extra = {k: kw.pop(k) for k in ("launch", "nonce") if k in kw}
        oauth, url, verifier = self.authorize_url(scope, **extra)
        location = browser.authorize(url, username, **kw)
        return dict(oauth.fetch_token(f"{self.auth}/token", authorization_response=location, code_verifier=verifier))

    def token_request(self, data: dict[str, str]) -> requests.Response:
        """A raw token request authenticated as this client."""
        auth = (self.client_id, self.secret) if self.secret else None
        body = dict(data) if self.secret else {"client_id": self.client_id, **data}
        return requests.post(f"{self.auth}/token", data=body, auth=auth, timeout=30)


class SmartPrivateKeyJWT(PrivateKeyJWT):
    """authlib's client assertion with a SMART lifetime: authlib's default `exp` is an hour ahead, SMART allows at
    most five minutes (and the server refuses more)."""

    def sign(self, auth: Any, token_endpoint: str) -> str:
        self.claims = {"exp": int(time.time()) + 240}  # a fresh dict: authlib adds the jti to it
        return super().sign(auth, token_endpoint)


@dataclass
class Backend:
    """A SMART Backend Services client: an RSA (RS384) and an EC P-384 (ES384) key."""

    server: Any
    client_id: str
    rsa: RSAKey
    ec: ECKey

    @property
    def token_url(self) -> str:
        return f"{self.server.url}/auth/token"

    def assertion(self, alg: str = "RS384", **claims: Any) -> str:
        key = self.rsa if alg.startswith("RS") else self.ec
        now = int(time.time())
        body = {"iss": self.client_id, "sub": self.client_id, "aud": self.token_url, "exp": now + 240,
                "jti": uuid.uuid4().hex, **claims}
        return jwt.encode({"alg": alg, "kid": key.kid, "typ": "JWT"}, body, key, algorithms=[alg])

    def token_with(self, assertion: str, scope: str) -> requests.Response:
        return requests.post(self.token_url, data={
            "grant_type": "client_credentials", "scope": scope, "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": assertion}, timeout=30)

    def fetch(self, scope: str, alg: str = "RS384") -> dict[str, Any]:
        """A token through authlib's client (`PrivateKeyJWT`), as a third-party backend would get one."""
        key = self.rsa if alg.startswith("RS") else self.ec
        oauth = OAuth2Session(self.client_id, key, scope=scope,
                              token_endpoint_auth_method=SmartPrivateKeyJWT(self.token_url, alg=alg,
                                                                            headers={"kid": key.kid}))
        return dict(oauth.fetch_token(self.token_url, grant_type="client_credentials"))


def new_backend(server: Any, db: Database, scope: str, client_id: str | None = None) -> Backend:
    rsa = RSAKey.generate_key(2048, parameters={"kid": "rs384-1", "alg": "RS384"}, private=True)
    ec = ECKey.generate_key("P-384", parameters={"kid": "es384-1", "alg": "ES384"}, private=True)
    jwks = KeySet([rsa, ec]).as_dict(private=False)
    client, _ = ClientRegistry(db).register({
        "client_id": client_id or f"backend-{uuid.uuid4().hex[:8]}", "client_name": "Backend",
        "token_endpoint_auth_method": "private_key_jwt", "grant_types": ["client_credentials"], "scope": scope,
        "jwks": jwks}, admin=True)
    return Backend(server, client.client_id, rsa, ec)


def new_app(server: Any, db: Database, *, confidential: bool = False, scope: str | None = None,
            name: str = "Test App", launch_uri: str | None = None) -> App:
    metadata: dict[str, Any] = {
        "client_name": name, "redirect_uris": [REDIRECT], "grant_types": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_method": "client_secret_basic" if confidential else "none",
    }
    if scope is not None:
        metadata["scope"] = scope
    if launch_uri:
        metadata["launch_uri"] = launch_uri
    client, secret = ClientRegistry(db).register(metadata, admin=True)
    return App(server, client.client_id, secret)


def new_user(db: Database, username: str, fhir_user: str, *, roles: tuple[str, ...] = (),
             display: str | None = None) -> None:
    UserStore(db).create_user(username, PASSWORD, fhir_user, roles=roles, display=display)


# -- FHIR ------------------------------------------------------------------------------------------------------------


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}


def create(server: Any, token: str, resource: dict[str, Any]) -> str:
    """POST a resource with a token; its new id."""
    response = requests.post(f"{server.base}/{resource['resourceType']}", data=json.dumps(resource),
                             headers={**bearer(token), "Content-Type": "application/fhir+json"}, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def code_hash(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def fresh_database(uri: str, prefix: str) -> Iterator[Database]:
    """A database of its own (`<prefix><random>`), dropped afterwards: the body of a test's `db` fixture."""
    client: MongoClient = MongoClient(uri)
    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    yield client[name]
    client.drop_database(name)
    client.close()


def together(n: int, fn: Callable[[int], Any]) -> list:
    """`fn(0)` .. `fn(n - 1)` in n threads released at once behind a barrier; their results in order."""
    barrier = threading.Barrier(n)
    out: list = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        out[i] = fn(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out

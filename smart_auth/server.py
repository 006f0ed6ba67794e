"""The SMART authorization server: authorization-request checks, the token endpoint (authlib `AuthorizationServer` with
the authorization_code + PKCE, refresh_token and client_credentials grants), id_tokens, introspection, revocation and
the access-token verifier the FHIR API consults.

Where authlib is used and where not (reference/dependencies.md §3):
- The token endpoint, client authentication (`client_secret_basic`, `client_secret_post`, `none`, and
  `private_key_jwt` through smart_auth.assertions), introspection (RFC 7662) and revocation (RFC 7009) run on authlib.
- The authorization endpoint is checked here (`check_authorization_request`) and driven by smart_auth.pages: its
  rules (SMART `aud`, PKCE S256 for every client, `launch`, an error page for a bad client or redirect URI) and its
  several pages fit authlib's one-call `create_authorization_response` poorly.
- PKCE (RFC 7636) as SMART 2.2 profiles it: `code_challenge_method` S256 only ("plain" refused at /authorize) and a
  `code_verifier` required from every client, confidential or not (`S256Challenge`, caveat 3).
- Single use of codes and refresh tokens is a unique insert (smart_auth.tokens), done after every other check passed.
- id_tokens are signed by smart_auth.keys (RS384), not by authlib's `OpenIDCode`.
- authlib refuses plain-http URIs except on loopback hosts; requests are shown to it under the configured public URL
  (FHIR_BASE_URL), so a TLS-terminating proxy in front of gunicorn does not make every request "insecure".
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import flask
from authlib.consts import default_json_headers
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import OAuth2Payload, OAuth2Request
from authlib.oauth2.rfc6749.errors import (
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    UnauthorizedClientError,
)
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant, ClientCredentialsGrant, RefreshTokenGrant
from authlib.oauth2.rfc6750.errors import InvalidTokenError
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7636.challenge import CODE_CHALLENGE_PATTERN, compare_s256_code_challenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from werkzeug.datastructures import MultiDict

from smart_auth.access import UNCONFINED_USER_TYPES, Access
from smart_auth.assertions import AuthlibPrivateKeyJWT, ClientAssertionVerifier
from smart_auth.clients import AuthlibClient, Client, ClientRegistry, allowed_scope
from smart_auth.keys import KeyRing
from smart_auth.launch import LaunchContext, LaunchStore
from smart_auth.scopes import ScopeError, ScopeKind, covers_all, narrow, parse_scopes, scope_string
from smart_auth.tokens import (
    ACCESS,
    ACCESS_TOKEN_TTL,
    BACKEND_TOKEN_TTL,
    OFFLINE_REFRESH_TTL,
    ONLINE_REFRESH_TTL,
    REFRESH,
    Context,
    TokenRecord,
    TokenStore,
    new_secret,
)
from smart_auth.users import User, UserStore

log = logging.getLogger("smart_auth.server")

# Every way a client may authenticate at the token, introspection and revocation endpoints; each client is held to
# the one it registered (AuthlibClient.check_endpoint_auth_method).
CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"]
ID_TOKEN_ALG = "RS256"  # OpenID Connect Core §15.1 and SMART App Launch 2.2 id_tokens
ID_TOKEN_TTL = 3600
PATIENTS_CACHE_TTL = 5.0  # seconds a user's patient list is reused by the token verifier
MAX_PARAM = 2048  # longest authorization-request parameter accepted

PatientsFor = Callable[[User], list[tuple[str, str]]]


def own_record(user: User) -> list[tuple[str, str]]:
    """The default `patients_for`: the user's own fhirUser when it is a Patient."""
    if user.fhir_user.startswith("Patient/"):
        return [(user.fhir_user, user.display or user.username)]
    return []


def unconfined(fhir_user: str | None) -> bool:
    """A Practitioner (or PractitionerRole) user: not confined to a list of patients (smart_auth.access)."""
    return bool(fhir_user) and fhir_user.split("/", 1)[0] in UNCONFINED_USER_TYPES


def ascii_text(text: str, limit: int = 300) -> str:
    """RFC 6749 §4.1.2.1: `error_description` uses only %x20-21 / %x23-5B / %x5D-7E."""
    out = "".join(c if (c in " !" or "#" <= c <= "[" or "]" <= c <= "~") else "?" for c in text)
    return out[:limit]


# -- URLs ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Urls:
    """Absolute URLs of this server, all derived from the FHIR base: the authorization server lives at `/auth` on
    the same origin (SMART: "All endpoint URLs SHALL be absolute")."""

    fhir_base: str

    def auth(self, path: str) -> str:
        return urljoin(self.fhir_base, "/auth" + path)

    @property
    def issuer(self) -> str:
        """OIDC issuer; `{issuer}/.well-known/openid-configuration` is served by the auth blueprint."""
        return self.auth("")

    @property
    def token(self) -> str:
        return self.auth("/token")

    @property
    def style(self) -> str:
        return self.auth("/smart-style.json")

    def endpoints(self) -> dict[str, str]:
        """The endpoint map smart_auth.discovery takes."""
        return {
            "authorize": self.auth("/authorize"), "token": self.token, "register": self.auth("/register"),
            "manage": self.auth("/manage"), "introspect": self.auth("/introspect"), "revoke": self.auth("/revoke"),
            "jwks": self.auth("/jwks"),
        }

    def fhir_user_url(self, fhir_user: str) -> str:
        """`fhirUser` as an absolute URL ("absolute or relative to the FHIR base"; absolute is unambiguous)."""
        return f"{self.fhir_base}/{fhir_user}"


# -- patients a user may act for ------------------------------------------------------------------------------------


class PatientDirectory:
    """The `patients_for` callback, with the account lookup and a short per-process cache for the token verifier.
    "expired or revoked proxies lose access at once": the cache keeps an answer at most `ttl` seconds."""

    def __init__(self, users: UserStore, patients_for: PatientsFor, ttl: float = PATIENTS_CACHE_TTL,
                 clock: Callable[[], float] = time.monotonic, max_entries: int = 10000) -> None:
        self.users = users
        self.patients_for = patients_for
        self.ttl = ttl
        self.clock = clock
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, User | None, tuple[str, ...]]] = {}

    def choices(self, user: User) -> list[tuple[str, str]]:
        """("Patient/<id>", display) the user may pick, freshly computed (the patient picker)."""
        seen: dict[str, str] = {}
        for ref, display in self.patients_for(user):
            if isinstance(ref, str) and ref.startswith("Patient/") and ref not in seen:
                seen[ref] = display or ref
        return list(seen.items())

    def lookup(self, username: str) -> tuple[User | None, tuple[str, ...]]:
        """(account or None, "Patient/<id>" refs it may act for), cached for `ttl` seconds."""
        now = self.clock()
        with self._lock:
            hit = self._cache.get(username)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1], hit[2]
        user = self.users.get(username)
        refs: tuple[str, ...] = ()
        if user is not None and not unconfined(user.fhir_user):
            refs = tuple(ref for ref, _ in self.choices(user))
        with self._lock:
            if len(self._cache) >= self.max_entries:
                self._cache.clear()
            self._cache[username] = (now, user, refs)
        return user, refs

    def may_act_for(self, user: User, patient: str, refs: tuple[str, ...] | None = None) -> bool:
        """A practitioner may have any patient in context; anyone else only their own record or a current proxy."""
        if unconfined(user.fhir_user):
            return True
        if refs is None:
            refs = tuple(ref for ref, _ in self.choices(user))
        return f"Patient/{patient.removeprefix('Patient/')}" in refs


# -- the authorization request (RFC 6749 §4.1.1, SMART App Launch 2.2, RFC 7636 §4.3) -------------------------------


class AuthorizeError(Exception):
    """A refused authorization request. With `redirect_uri` the error goes back to the client (RFC 6749 §4.1.2.1);
    without it (bad client_id or redirect_uri) the user sees an error page and is never redirected."""

    def __init__(self, error: str, description: str, redirect_uri: str | None = None, state: str | None = None,
                 status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = ascii_text(description)
        self.redirect_uri = redirect_uri
        self.state = state
        self.status = status


@dataclass(frozen=True)
class AuthorizeRequest:
    """A checked authorization request, kept server-side while the user signs in, picks a patient and consents."""

    client_id: str
    client_name: str
    redirect_uri: str
    state: str
    scope: str  # what may be granted: requested ∩ client registration ∩ what this launch can give
    requested: str  # as the client asked
    aud: str
    code_challenge: str
    code_challenge_method: str
    nonce: str | None = None
    launch: LaunchContext | None = None

    @property
    def needs_patient(self) -> bool:
        """SMART: with `launch/patient` or patient/ scopes in a standalone launch the server establishes the patient
        (the picker); an EHR launch brings its own."""
        if self.launch is not None:
            return False
        scopes = parse_scopes(self.scope)
        return any(s.name == "launch/patient" for s in scopes) or any(
            s.kind is ScopeKind.RESOURCE and s.context == "patient" for s in scopes)

    def to_doc(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc["launch"] = self.launch.to_doc() if self.launch else None
        return doc

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> AuthorizeRequest:
        values = {f.name: doc.get(f.name) for f in dataclasses.fields(cls)}
        values["launch"] = LaunchContext.from_doc(doc["launch"]) if doc.get("launch") else None
        return cls(**values)


def _single(params: MultiDict, name: str, error: Callable[[str], AuthorizeError]) -> str | None:
    """RFC 6749 §3.1: "Request and response parameters MUST NOT be included more than once"."""
    values = params.getlist(name)
    if len(values) > 1:
        raise error(f"the parameter {name} is repeated")
    value = values[0] if values else None
    if value is not None and len(value) > MAX_PARAM:
        raise error(f"the parameter {name} is too long")
    return value or None


def _context_scopes(scope: str, launch: LaunchContext | None) -> str:
    """Drop what this launch cannot give: `launch` only with an EHR `launch` parameter; `launch/encounter` only
    when the EHR bound an encounter; other `launch/<type>` contexts are not offered; system/ scopes belong to
    Backend Services, never to a user's authorization."""
    kept = []
    for s in parse_scopes(scope):
        if s.kind is ScopeKind.RESOURCE and s.context == "system":
            continue
        if s.kind is ScopeKind.LAUNCH:
            context = s.launch_context
            if s.name == "launch" and launch is None:
                continue
            if context == "encounter" and (launch is None or not launch.encounter):
                continue
            if context not in (None, "patient", "encounter"):
                continue
        kept.append(s)
    return scope_string(kept)


def check_authorization_request(params: MultiDict, clients: ClientRegistry, launches: LaunchStore,
                                fhir_base: str) -> AuthorizeRequest:
    """Check an authorization request; raise AuthorizeError. The `launch` is consumed only once everything else
    passed, so a request refused for another reason does not burn it."""

    def page(description: str) -> AuthorizeError:
        return AuthorizeError("invalid_request", description)

    client_id = _single(params, "client_id", page)
    if not client_id:
        raise page("the request has no client_id")
    client = clients.get(client_id)
    if client is None:
        raise page("the client_id is not registered with this server")
    redirect_uri = _single(params, "redirect_uri", page)
    # SMART: redirect_uri is required and must match a pre-registered URI exactly (RFC 6749 §3.1.2.3).
    if not redirect_uri:
        raise page("the request has no redirect_uri")
    if not ClientRegistry.check_redirect(client, redirect_uri):
        raise page("the redirect_uri is not registered for this client")

    state = params.get("state") if len(params.getlist("state")) == 1 else None

    def back(error: str, description: str) -> AuthorizeError:
        return AuthorizeError(error, description, redirect_uri, state)

    def bad(description: str) -> AuthorizeError:
        return back("invalid_request", description)

    state = _single(params, "state", bad)
    response_type = _single(params, "response_type", bad)
    if not response_type:
        raise bad("response_type is required")
    if response_type != "code" or "code" not in client.response_types:
        raise back("unsupported_response_type", "response_type must be code")
    if not state:
        raise bad("state is required (SMART App Launch)")
    # SMART: aud "SHALL" be this server's FHIR base URL; RFC 8707 `resource` is accepted as a synonym.
    aud = _single(params, "aud", bad) or _single(params, "resource", bad)
    if not aud or aud.rstrip("/") != fhir_base.rstrip("/"):
        raise bad(f"aud must be the FHIR base URL {fhir_base}")
    # RFC 7636 §4.3 as SMART 2.2 requires it: a code_challenge from every client, method S256; plain is refused.
    challenge = _single(params, "code_challenge", bad)
    method = _single(params, "code_challenge_method", bad)
    if not challenge:
        raise bad("code_challenge is required (PKCE S256)")
    if method != "S256":
        raise bad("code_challenge_method must be S256 (plain is not supported)")
    if not CODE_CHALLENGE_PATTERN.match(challenge):
        raise bad("code_challenge must be 43-128 characters of [A-Za-z0-9-._~]")
    requested = _single(params, "scope", bad)
    if not requested:
        raise back("invalid_scope", "scope is required")
    try:
        parse_scopes(requested)
    except ScopeError as exc:
        raise back("invalid_scope", str(exc)) from exc
    allowed = allowed_scope(client, requested) or ""
    nonce = _single(params, "nonce", bad)
    launch_id = _single(params, "launch", bad)
    launch = None
    if launch_id:
        launch = launches.consume(launch_id, client.client_id)
        if launch is None:
            raise bad("the launch is unknown, expired, already used or meant for another app")
    scope = _context_scopes(allowed, launch)
    if not scope:
        raise back("invalid_scope", "none of the requested scopes can be granted to this app")
    return AuthorizeRequest(
        client_id=client.client_id, client_name=client.name or client.client_id, redirect_uri=redirect_uri,
        state=state, scope=scope, requested=requested, aud=fhir_base, code_challenge=challenge,
        code_challenge_method=method, nonce=nonce, launch=launch,
    )


# -- authlib plumbing -----------------------------------------------------------------------------------------------


class _FormPayload(OAuth2Payload):
    """The parameters of an OAuth request: the form body of a POST (RFC 6749 §4.1.3, §6, §4.4), never the query."""

    def __init__(self, values: MultiDict) -> None:
        self._values = values

    @property
    def data(self) -> MultiDict:
        return self._values

    @property
    def datalist(self) -> dict[str, list[str]]:
        return {k: self._values.getlist(k) for k in self._values}


class _PublicRequest(OAuth2Request):
    """The Flask request as authlib sees it, under its public URL."""

    def __init__(self, request: flask.Request, public_uri: str) -> None:
        super().__init__(method=request.method, uri=public_uri, headers=request.headers)
        self._request = request
        self.payload = _FormPayload(request.form if request.method == "POST" else request.args)

    @property
    def args(self) -> MultiDict:
        return self._request.args

    @property
    def form(self) -> MultiDict:
        return self._request.form


class S256Challenge(CodeChallenge):
    """RFC 7636 as SMART 2.2 profiles it: "S256" only, and the verifier is required from every client (authlib
    only requires it from public ones). `code_verifier == code_challenge` fails the S256 comparison."""

    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    CODE_CHALLENGE_METHODS = {"S256": compare_s256_code_challenge}

    def validate_code_verifier(self, grant: Any, result: Any) -> None:
        if not grant.request.form.get("code_verifier"):
            raise InvalidRequestError("Missing 'code_verifier' (PKCE is required for every client).")
        super().validate_code_verifier(grant, result)


def _services(grant: Any) -> SmartServices:
    return grant.server.services


class CodeGrant(AuthorizationCodeGrant):
    """RFC 6749 §4.1.3-4.1.4 with SMART launch context; codes come from the pages, not from authlib."""

    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def save_authorization_code(self, code: str, request: Any) -> None:  # codes are issued by smart_auth.pages
        raise NotImplementedError("authorization codes are issued by smart_auth.pages")

    def query_authorization_code(self, code: str, client: AuthlibClient) -> Any:
        return _services(self).tokens.find_code(code, client.get_client_id())

    def delete_authorization_code(self, authorization_code: Any) -> None:
        """Nothing to delete: the code was consumed by its marker and expires within a minute."""

    def authenticate_user(self, authorization_code: Any) -> User | None:
        return _services(self).users.get(authorization_code.user_id)

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        """RFC 6749 §4.1.2: "If an authorization code is used more than once, the authorization server MUST deny the
        request and SHOULD revoke (when possible) all tokens previously issued based on that authorization code"."""
        record = self.request.authorization_code
        services = _services(self)
        if not services.tokens.consume_code(record):
            services.tokens.revoke_grant(record.grant, "authorization code reused")
            raise InvalidGrantError("The authorization code was already used; its tokens are revoked.")
        return super().create_token_response()


class RefreshGrant(RefreshTokenGrant):
    """RFC 6749 §6 with rotation: each refresh returns a new refresh token and spends the old one; presenting a spent
    refresh token again revokes the whole grant (RFC 9700 §4.14.2, refresh token rotation)."""

    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_token_endpoint_client(self) -> AuthlibClient:
        """A public client need not name itself when refreshing: RFC 6749 §6 asks only confidential clients to
        authenticate and SMART's refresh request has no `client_id` (fhirclient.js sends none). With no client
        credentials at all, the refresh token names its client, which must be a public one."""
        form, headers = self.request.form, self.request.headers
        if not (form.get("client_id") or form.get("client_assertion") or headers.get("Authorization")):
            record = _services(self).tokens.find(form.get("refresh_token") or "", REFRESH)
            client = self.server.query_client(record.client_id) if record is not None else None
            if client is not None and client.check_endpoint_auth_method("none", "token"):
                self.request.client, self.request.auth_method = client, "none"
                self.server.send_signal("after_authenticate_client", client=client, grant=self)
                return client
        return super().authenticate_token_endpoint_client()

    def _validate_request_token(self, client: AuthlibClient) -> TokenRecord:
        secret = self.request.form.get("refresh_token")
        if not secret:
            raise InvalidRequestError("Missing 'refresh_token' in request.")
        tokens = _services(self).tokens
        record = tokens.find(secret, REFRESH)
        # "The refresh token SHALL be bound to the same client_id"
        if record is None or not record.check_client(client):
            raise InvalidGrantError("The refresh token is not valid.")
        if record.revoked:
            if tokens.was_consumed(f"refresh:{record.hash}"):
                tokens.revoke_grant(record.grant, "rotated refresh token reused")
            raise InvalidGrantError("The refresh token was revoked.")
        if record.is_expired():
            raise InvalidGrantError("The refresh token has expired.")
        return record

    def _validate_token_scope(self, token: TokenRecord) -> None:
        """RFC 6749 §6: "The requested scope MUST NOT include any scope not originally granted"."""
        requested = self.request.payload.scope
        if not requested:
            return
        try:
            ok = covers_all(token.scope, requested)
        except ScopeError as exc:
            raise InvalidScopeError(ascii_text(str(exc))) from exc
        if not ok:
            raise InvalidScopeError("The requested scope exceeds the scope originally granted.")

    def validate_token_request(self) -> None:
        super().validate_token_request()
        record: TokenRecord = self.request.refresh_token
        services = _services(self)
        patient = record.context.patient
        if patient and record.user_id:
            user, refs = services.directory.lookup(record.user_id)
            if user is None or not services.directory.may_act_for(user, patient, refs):
                services.tokens.revoke_grant(record.grant, "the user may no longer act for the patient")
                raise InvalidGrantError("The user may no longer act for this patient.")
        # Spend the refresh token last, once every check passed: one of two concurrent uses wins.
        if not services.tokens.consume(f"refresh:{record.hash}", record.exp):
            services.tokens.revoke_grant(record.grant, "rotated refresh token reused")
            raise InvalidGrantError("The refresh token was already used; every token of this grant is revoked.")

    def issue_token(self, user: User, refresh_token: TokenRecord) -> dict[str, Any]:
        requested = self.request.payload.scope
        scope = narrow(refresh_token.scope, requested) if requested else refresh_token.scope
        return self.generate_token(user=user, scope=scope, include_refresh_token=True)

    def authenticate_refresh_token(self, refresh_token: str) -> TokenRecord | None:
        return _services(self).tokens.active(refresh_token, REFRESH)

    def authenticate_user(self, refresh_token: TokenRecord) -> User | None:
        return _services(self).users.get(refresh_token.user_id) if refresh_token.user_id else None

    def revoke_old_credential(self, refresh_token: TokenRecord) -> None:
        _services(self).tokens.mark_revoked(refresh_token)


class BackendGrant(ClientCredentialsGrant):
    """SMART Backend Services: client_credentials with a `private_key_jwt` assertion; the server "SHALL ensure
    requested scope ⊆ pre-authorized" (the client's registration), and only system/ scopes are granted."""

    TOKEN_ENDPOINT_AUTH_METHODS = ["private_key_jwt"]

    def validate_token_request(self) -> None:
        super().validate_token_request()
        requested = self.request.payload.scope
        if not requested:
            raise InvalidScopeError("scope is required (SMART Backend Services).")
        client: Client = self.request.client.client
        allowed = allowed_scope(client, requested)
        if allowed is None:
            raise InvalidScopeError("The scope is malformed.")
        granted = scope_string(s for s in parse_scopes(allowed) if s.kind is ScopeKind.RESOURCE
                               and s.context == "system")
        if not granted:
            raise InvalidScopeError("None of the requested system/ scopes is pre-authorized for this client.")
        self.request.scope = granted

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        """"Refresh tokens SHOULD NOT be issued"."""
        token = self.generate_token(scope=self.request.scope, include_refresh_token=False)
        self.save_token(token)
        return 200, token, self.TOKEN_RESPONSE_HEADER


def _bearer(headers: Mapping[str, str]) -> str | None:
    scheme, _, value = (headers.get("Authorization") or "").partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def _query_token(services: SmartServices, secret: str, hint: str | None) -> TokenRecord | None:
    kinds = {"access_token": [ACCESS, REFRESH], "refresh_token": [REFRESH, ACCESS]}.get(hint or "", [ACCESS, REFRESH])
    for kind in kinds:  # "the server MAY ... extend its search across all of its supported token types"
        record = services.tokens.find(secret, kind)
        if record is not None:
            return record
    return None


class Introspection(IntrospectionEndpoint):
    """RFC 7662 as SMART profiles it: callers authenticate with their client credentials (and may then introspect
    the tokens issued to them) or with a bearer access token of this server (and may introspect any token: "such
    callers may introspect any client's tokens"). The answer carries the launch context of the token response."""

    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt"]

    def authenticate_endpoint_client(self, request: OAuth2Request) -> Any:
        bearer = _bearer(request.headers)
        if bearer is not None:
            if self.server.services.verify(bearer) is None:
                raise InvalidTokenError()
            request.client = None
            request.introspector = "bearer"
            return None
        return super().authenticate_endpoint_client(request)

    def check_permission(self, token: TokenRecord, client: Any, request: OAuth2Request) -> bool:
        if getattr(request, "introspector", None) == "bearer":
            return True
        return token.check_client(client)

    def query_token(self, token_string: str, token_type_hint: str | None) -> TokenRecord | None:
        return _query_token(self.server.services, token_string, token_type_hint)

    def introspect_token(self, token: TokenRecord) -> dict[str, Any]:
        services: SmartServices = self.server.services
        if token.kind == ACCESS and services.access_of(token) is None:
            return {"active": False}
        body: dict[str, Any] = {
            "active": True, "scope": token.scope, "client_id": token.client_id, "exp": int(token.exp),
            "iat": int(token.iat), "token_type": "Bearer" if token.kind == ACCESS else "refresh_token",
            "iss": services.urls.issuer, "aud": token.aud,
        }
        ctx = token.context
        if token.user_id:
            body["sub"] = ctx.subject or token.user_id
            body["username"] = token.user_id
        if ctx.fhir_user and any(s.name == "fhirUser" for s in parse_scopes(token.scope)):
            body["fhirUser"] = services.urls.fhir_user_url(ctx.fhir_user)
        if ctx.patient:
            body["patient"] = ctx.patient
        if ctx.encounter:
            body["encounter"] = ctx.encounter
        return body


class Revocation(RevocationEndpoint):
    """RFC 7009: the client that holds a token revokes it, and with it every token of the same grant (§2.1: "If
    the token passed to the request is a refresh token ... the authorization server SHOULD also invalidate all access
    tokens based on the same authorization grant"; revoking an access token revokes its refresh token too).
    Effective at once: the FHIR API looks every token up on every request."""

    CLIENT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def query_token(self, token_string: str, token_type_hint: str | None) -> TokenRecord | None:
        return _query_token(self.server.services, token_string, token_type_hint)

    def revoke_token(self, token: TokenRecord, request: OAuth2Request) -> None:
        self.server.services.tokens.revoke_grant(token.grant, "revoked by the client")


# -- services -------------------------------------------------------------------------------------------------------


@dataclass
class SmartServices:
    """Everything the authorization server runs on, built once per app by smart_auth.web.init_app."""

    urls: Urls
    users: UserStore
    clients: ClientRegistry
    tokens: TokenStore
    launches: LaunchStore
    keys: KeyRing
    assertions: ClientAssertionVerifier
    directory: PatientDirectory
    clock: Callable[[], float] = time.time

    def access_of(self, record: TokenRecord) -> Access | None:
        """The access decision of a live access-token record; None when it no longer holds: for another audience
        (SMART: the resource server SHALL check "that the authorization's aud matches its own base"), an account
        that is gone, or a patient in context whom the user may no longer act for (an ended proxy)."""
        if record.aud.rstrip("/") != self.urls.fhir_base.rstrip("/"):
            return None
        access = Access.from_token_claims(record.claims)
        if not access.user_id:
            return access
        user, refs = self.directory.lookup(access.user_id)
        if user is None:
            return None
        if unconfined(user.fhir_user):
            return access
        if access.patient and f"Patient/{access.patient}" not in refs:
            return None
        return dataclasses.replace(access, proxied_patients=refs)

    def verify(self, token: str) -> Access | None:
        """The `TokenVerifier` of fhirserver.api.auth: token -> Access, or None (unknown, expired, revoked, other
        audience). One database lookup per request (no cache), so revocation is immediate; the user's patient list
        is recomputed through `patients_for` (cached a few seconds)."""
        record = self.tokens.active(token, ACCESS)
        return self.access_of(record) if record is not None else None

    def id_token(self, client_id: str, user: User, scope: str, context: Context, nonce: str | None) -> str:
        """OIDC Core §2 ID Token: iss, sub, aud (the client_id), exp, iat, auth_time, nonce when sent; SMART adds
        `fhirUser` when the fhirUser scope was granted. Signed with the server's RS384 key (kid in the header)."""
        names = {s.name for s in parse_scopes(scope)}
        now = int(self.clock())
        claims: dict[str, Any] = {
            "iss": self.urls.issuer, "sub": user.username, "aud": client_id, "iat": now, "exp": now + ID_TOKEN_TTL,
        }
        if context.auth_time is not None:
            claims["auth_time"] = int(context.auth_time)
        if context.amr:
            claims["amr"] = list(context.amr)
        if nonce:
            claims["nonce"] = nonce
        if "fhirUser" in names:
            claims["fhirUser"] = self.urls.fhir_user_url(user.fhir_user)
        if "profile" in names:
            claims["preferred_username"] = user.username
            if user.display:
                claims["name"] = user.display
        return self.keys.sign(claims, ID_TOKEN_ALG)


class SmartAuthorizationServer(AuthorizationServer):
    """authlib's Flask authorization server over smart_auth's stores."""

    def __init__(self, services: SmartServices) -> None:
        super().__init__()
        self.services = services
        parts = urlsplit(services.urls.fhir_base)
        self._authlib_origin = services.urls.fhir_base
        if parts.scheme == "http" and parts.hostname not in ("localhost", "127.0.0.1", "::1"):
            log.warning("FHIR_BASE_URL is plain http on a non-loopback host: OAuth tokens travel unencrypted")
            self._authlib_origin = urlunsplit(("https", parts.netloc, parts.path, "", ""))
        self.register_token_generator("default", self._generate)
        self.register_client_auth_method("private_key_jwt", AuthlibPrivateKeyJWT(services.assertions))
        self.register_grant(CodeGrant, [S256Challenge(required=True)])
        self.register_grant(RefreshGrant)
        self.register_grant(BackendGrant)
        self.register_endpoint(Introspection(self))
        self.register_endpoint(Revocation(self))

    # authlib hooks ----------------------------------------------------------------------------------------------

    def query_client(self, client_id: str) -> AuthlibClient | None:
        client = self.services.clients.get(client_id)
        return AuthlibClient(client, self.services.clients) if client else None

    def create_oauth2_request(self, request: Any) -> OAuth2Request:
        return _PublicRequest(flask.request, urljoin(self._authlib_origin, flask.request.path))

    def handle_response(self, status_code: int, payload: Any, headers: Any) -> flask.Response:
        response = super().handle_response(status_code, payload, headers)
        # SMART: token responses SHALL carry Cache-Control: no-store and Pragma: no-cache; errors too
        for name, value in default_json_headers:
            response.headers.setdefault(name, value)
        return response

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        """No Flask signals: audit events are recorded elsewhere."""

    def _generate(self, grant_type: str, client: Any, user: Any = None, scope: str | None = None,
                  expires_in: int | None = None, include_refresh_token: bool = True) -> dict[str, Any]:
        """The response skeleton; `save_token` adds the credentials, which only exist once stored."""
        ttl = BACKEND_TOKEN_TTL if grant_type == "client_credentials" else ACCESS_TOKEN_TTL
        return {"token_type": "Bearer", "expires_in": int(ttl), "scope": scope or ""}

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        """Store the access token (and refresh token, id_token) and complete the response with the SMART launch
        context: `patient`, `encounter`, `need_patient_banner`, `smart_style_url`."""
        grant_type = request.payload.grant_type
        client: AuthlibClient = request.client
        if grant_type == "client_credentials":
            self._store_access(token, grant=new_secret(), client_id=client.client_id, scope=token["scope"],
                               grant_type=grant_type, user=None, context=Context(), ttl=BACKEND_TOKEN_TTL)
            return
        user: User = request.user
        if grant_type == "authorization_code":
            code = request.authorization_code
            grant, context, refresh_scope = code.grant, code.context, code.scope
            if "openid" in {s.name for s in parse_scopes(code.scope)}:
                context = dataclasses.replace(context, id_token=True, subject=user.username)
                token["id_token"] = self.services.id_token(client.client_id, user, code.scope, context, code.nonce)
            issue_refresh = client.check_grant_type("refresh_token")
        elif grant_type == "refresh_token":
            old: TokenRecord = request.refresh_token
            grant, context, refresh_scope = old.grant, old.context, old.scope
            issue_refresh = True
        else:  # pragma: no cover - only the three grants above are registered
            raise UnauthorizedClientError(f"grant_type {grant_type} is not supported")
        self._store_access(token, grant=grant, client_id=client.client_id, scope=token["scope"],
                           grant_type=grant_type, user=user, context=context, ttl=ACCESS_TOKEN_TTL)
        names = {s.name for s in parse_scopes(refresh_scope)}
        if issue_refresh and names & {"offline_access", "online_access"}:
            ttl = OFFLINE_REFRESH_TTL if "offline_access" in names else ONLINE_REFRESH_TTL
            issued = self.services.tokens.issue(
                kind=REFRESH, grant=grant, client_id=client.client_id, scope=refresh_scope, grant_type=grant_type,
                aud=self.services.urls.fhir_base, ttl=ttl, user_id=user.username, context=context)
            if issued is None:
                raise InvalidGrantError("The authorization was revoked.")
            token["refresh_token"] = issued[0]
        if context.patient:
            token["patient"] = context.patient
        if context.encounter:
            token["encounter"] = context.encounter
        token["need_patient_banner"] = context.need_patient_banner
        token["smart_style_url"] = self.services.urls.style

    def _store_access(self, token: dict[str, Any], *, grant: str, client_id: str, scope: str, grant_type: str,
                      user: User | None, context: Context, ttl: float) -> None:
        access = Access(
            client_id=client_id, scopes=parse_scopes(scope), grant_type=grant_type,
            user_id=user.username if user else None, fhir_user=user.fhir_user if user else None,
            patient=context.patient, encounter=context.encounter,
        )
        issued = self.services.tokens.issue(
            kind=ACCESS, grant=grant, client_id=client_id, scope=scope, grant_type=grant_type,
            aud=self.services.urls.fhir_base, ttl=ttl, user_id=access.user_id, claims=access.to_claims(),
            context=context)
        if issued is None:
            raise InvalidGrantError("The authorization was revoked.")
        token["access_token"] = issued[0]
        token["expires_in"] = int(ttl)


__all__ = [
    "CLIENT_AUTH_METHODS", "AuthorizeError", "AuthorizeRequest", "BackendGrant", "CodeGrant", "Introspection",
    "PatientDirectory", "PatientsFor", "RefreshGrant", "Revocation", "S256Challenge",
    "SmartAuthorizationServer", "SmartServices", "Urls", "check_authorization_request", "own_record", "unconfined",
]

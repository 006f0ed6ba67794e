"""The `/auth` blueprint and `init_app`: wires smart_auth's stores into one app and serves the authorization server.

Routes (absolute URLs in discovery come from `Urls`, all on the FHIR base's origin):
- pages (smart_auth.pages): `GET|POST /auth/authorize`, `/auth/login`, `/auth/second-factor`, `/auth/patient`,
  `/auth/consent`, `/auth/manage`, `POST /auth/logout`;
- OAuth endpoints (smart_auth.server, on authlib): `POST /auth/token`, `/auth/introspect`, `/auth/revoke`;
- `POST /auth/register` (RFC 7591), `POST /auth/launch` (EHR launch contexts), `GET /auth/jwks`,
  `GET /auth/smart-style.json`, `GET /auth/.well-known/openid-configuration`.

Decisions [project]:
- Dynamic registration is for administrators: the caller presents a bearer access token of this server whose user
  has the `admin` role (roles are read at request time). Bootstrap clients with `fhirserver auth add-client`.
- `POST /auth/launch` is called by the EHR side: a bearer token of a Practitioner / PractitionerRole user or an
  `admin` (the launch is then bound to that user), or a Backend Services token (client_credentials) whose scopes
  allow reading Patient (not bound to a user; whoever completes the authorization must be allowed the patient).
- CORS: the JSON endpoints (token, introspection, revocation, JWKS, style, OIDC discovery) answer any origin; they use
  no cookies, so the wildcard gives a page nothing it could not get by other means. The HTML pages send no CORS.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import flask
from flask import Blueprint, Flask, current_app, jsonify
from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate
from pymongo.database import Database
from pymongo.errors import ConnectionFailure, PyMongoError
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from smart_auth.access import Access
from smart_auth.assertions import ClientAssertionVerifier
from smart_auth.clients import ClientRegistry, RegistrationError
from smart_auth.discovery import SIGNING_ALGS, smart_configuration
from smart_auth.jobs import Jobs, auth_jobs
from smart_auth.keys import KeyRing
from smart_auth.launch import LaunchError, LaunchStore
from smart_auth.notify import Notifier
from smart_auth.pages import Pages, with_params
from smart_auth.server import (
    ID_TOKEN_ALG,
    PatientDirectory,
    PatientsFor,
    SmartAuthorizationServer,
    SmartServices,
    Urls,
    own_record,
    unconfined,
)
from smart_auth.tokens import TokenStore
from smart_auth.users import UserStore

log = logging.getLogger("smart_auth.web")

bp = Blueprint("smart_auth", __name__, url_prefix="/auth", template_folder="templates")

PAGE_ENDPOINTS = frozenset({"authorize", "login", "second_factor", "select_patient", "consent", "logout", "manage",
                            "forgot", "reset", "security"})
CORS_ENDPOINTS = frozenset({"token", "introspect", "revoke", "jwks", "style", "openid_configuration"})
MAINTENANCE_INTERVAL = 600.0

# The style document served at `smart_style_url` (SMART "context-style"; keys from the spec's example).
SMART_STYLE: dict[str, str] = {
    "color_background": "#f4f2ee",
    "color_error": "#9e2d2d",
    "color_highlight": "#69b5ce",
    "color_modal_backdrop": "#00000080",
    "color_success": "#498e49",
    "color_text": "#222222",
    "dim_border_radius": "6px",
    "dim_font_size": "14px",
    "dim_spacing_size": "20px",
    "font_family_body": "system-ui, sans-serif",
    "font_family_heading": "system-ui, sans-serif",
}


class SmartAuth:
    """The authorization server of one app; `verify` is the FHIR API's TokenVerifier."""

    def __init__(self, services: SmartServices, server: SmartAuthorizationServer, pages: Pages) -> None:
        self.services = services
        self.server = server
        self.pages = pages
        self._maintenance: threading.Thread | None = None
        self._lock = threading.Lock()
        self.jobs: Jobs | None = None  # set by init_app: purge (and outbox relay) under leases

    def verify(self, token: str) -> Access | None:
        """token -> Access, or None (unknown, expired, revoked, for another audience)."""
        return self.services.verify(token)

    def maintain_in_background(self, interval: float = MAINTENANCE_INTERVAL) -> None:
        """Start (once per process) the thread that creates indexes and purges expired records. Several processes
        may run it at once: it only deletes what has expired."""
        with self._lock:
            if self._maintenance is not None:
                return
            self._maintenance = threading.Thread(target=self._maintain, args=(interval,), name="smart-auth-upkeep",
                                                 daemon=True)
            self._maintenance.start()

    def _maintain(self, interval: float) -> None:
        indexed = False
        while True:
            try:
                if not indexed:
                    self.services.tokens.ensure_indexes()
                    self.services.users.store.ensure_indexes()
                    indexed = True
                if self.jobs is not None:
                    self.jobs.run_due()
                else:
                    self.purge()
            except PyMongoError as exc:
                log.warning("smart_auth upkeep failed: %s", type(exc).__name__)
            time.sleep(min(interval, self.jobs.tick) if self.jobs is not None else interval)

    def purge(self) -> dict[str, Any]:
        """Delete every expired code, token, marker, launch, session and pending request."""
        s = self.services
        return {
            **s.tokens.purge(), "launches": s.launches.purge(), "sessions": self.pages.sessions.purge(),
            "requests": self.pages.requests.purge(), "users": s.users.purge(), "keys": s.keys.purge(),
            "jti": s.assertions.purge(),
        }


def discovery_document(fhir_base: str) -> dict[str, Any]:
    """`[base]/.well-known/smart-configuration` for a FHIR base served with this authorization server."""
    urls = Urls(fhir_base)
    return smart_configuration(urls.issuer, fhir_base, urls.endpoints())


def security_endpoints(fhir_base: str) -> dict[str, str]:
    """The OAuth endpoint URLs for `CapabilityStatement.rest.security` (smart_auth.discovery
    `capability_security_extension`)."""
    return Urls(fhir_base).endpoints()


def init_app(app: Flask, db: Database, settings: Any, patients_for: PatientsFor | None = None,
             transport: Notifier | None = None) -> SmartAuth:
    """Build the authorization server on `db` for the FHIR base `settings.base_url`, register `/auth`, and return it.

    `patients_for(user) -> [("Patient/<id>", display)]` lists the patients a user may act for (own record and
    current proxies); by default the user's own fhirUser when it is a Patient. `transport` (e.g. an SMTPNotifier)
    receives the queued outbox messages from a relay job. Nothing touches the database here, so the app starts
    while the database is down."""
    urls = Urls(settings.base_url.rstrip("/"))
    users = UserStore(db, issuer="FHIR Server", reset_url=urls.auth("/reset?token={token}"))
    clients = ClientRegistry(db)
    tokens = TokenStore(db)
    services = SmartServices(
        urls=urls, users=users, clients=clients, tokens=tokens, launches=LaunchStore(db, tokens),
        keys=KeyRing(db), assertions=ClientAssertionVerifier(db, clients, urls.token),
        directory=PatientDirectory(users, patients_for or own_record),
    )
    smart = SmartAuth(services, SmartAuthorizationServer(services), Pages(db, services, settings.secret_key))
    smart.jobs = auth_jobs(db, smart.purge, transport)
    app.extensions["smart_auth"] = smart
    # The session cookie (only smart_auth's pages use sessions): SameSite=Lax so the app's top-level redirect to
    # /auth/authorize carries it and cross-site POSTs do not; Secure whenever the public base is https.
    app.config.update(SESSION_COOKIE_NAME="fhir_auth", SESSION_COOKIE_SAMESITE="Lax", SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SECURE=urlsplit(urls.fhir_base).scheme == "https")
    app.register_blueprint(bp)
    return smart


def _smart() -> SmartAuth:
    return current_app.extensions["smart_auth"]


# -- plumbing ---------------------------------------------------------------------------------------------------------


@bp.before_request
def _start_upkeep() -> None:
    _smart().maintain_in_background()


@bp.after_request
def _cors(response: Response) -> Response:
    """Discovery-like and token endpoints open to any origin (SMART: servers supporting browser apps SHALL allow
    the token endpoint cross-origin)."""
    if (flask.request.endpoint or "").removeprefix("smart_auth.") in CORS_ENDPOINTS:
        response.headers["Access-Control-Allow-Origin"] = "*"
        if flask.request.method == "OPTIONS":
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, Accept"
            response.headers["Access-Control-Max-Age"] = "600"
    return response


def _oauth_error(error: str, description: str, status: int, headers: dict[str, str] | None = None) -> Response:
    response = jsonify({"error": error, "error_description": description})
    response.status_code = status
    response.headers.update({"Cache-Control": "no-store", "Pragma": "no-cache", **(headers or {})})
    return response


@bp.errorhandler(Exception)
def _failure(exc: Exception) -> Response:
    """Errors of /auth: an HTML page for the pages, an OAuth error body (RFC 6749 §5.2) for the endpoints; never a
    stack trace. The database being down is 503."""
    if isinstance(exc, ConnectionFailure):
        status, error, text = 503, "temporarily_unavailable", "The service is temporarily unavailable; try again."
    elif isinstance(exc, HTTPException):
        status = exc.code or 500
        error = "invalid_request" if status < 500 else "server_error"
        text = exc.description or exc.name
    else:
        log.exception("unhandled error in smart_auth")
        status, error, text = 500, "server_error", "Internal error; the incident was logged."
    if (flask.request.endpoint or "").removeprefix("smart_auth.") in PAGE_ENDPOINTS:
        return _smart().pages.error_page(text, status=status)
    headers = {"Retry-After": "5"} if status == 503 else {}
    return _oauth_error(error, text, status, headers)


def _bearer_access() -> Access | None:
    scheme, _, token = flask.request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return _smart().verify(token.strip())


def _need_token() -> Response:
    """RFC 6750 §3: 401 with a WWW-Authenticate challenge."""
    return _oauth_error("invalid_token", "This endpoint needs a valid bearer access token of this server.", 401,
                        {"WWW-Authenticate": 'Bearer realm="auth", error="invalid_token"'})


# -- pages ------------------------------------------------------------------------------------------------------------


def _page(handler: Callable[[Pages], Response]) -> Callable[[], Response]:
    def view() -> Response:
        return handler(_smart().pages)

    view.__name__ = handler.__name__
    view.__doc__ = handler.__doc__
    return view


bp.add_url_rule("/authorize", "authorize", _page(Pages.authorize), methods=["GET", "POST"])
bp.add_url_rule("/login", "login", _page(Pages.login), methods=["GET", "POST"])
bp.add_url_rule("/second-factor", "second_factor", _page(Pages.second_factor), methods=["GET", "POST"])
bp.add_url_rule("/patient", "select_patient", _page(Pages.select_patient), methods=["GET", "POST"])
bp.add_url_rule("/consent", "consent", _page(Pages.consent), methods=["GET", "POST"])
bp.add_url_rule("/logout", "logout", _page(Pages.logout), methods=["POST"])
bp.add_url_rule("/manage", "manage", _page(Pages.manage), methods=["GET", "POST"])
bp.add_url_rule("/forgot", "forgot", _page(Pages.forgot), methods=["GET", "POST"])
bp.add_url_rule("/reset", "reset", _page(Pages.reset), methods=["GET", "POST"])
bp.add_url_rule("/security", "security", _page(Pages.security), methods=["GET", "POST"])


# -- OAuth endpoints --------------------------------------------------------------------------------------------------


@bp.post("/token")
def token() -> Response:
    """RFC 6749 §3.2 token endpoint: authorization_code (+PKCE), refresh_token, client_credentials."""
    return _smart().server.create_token_response()


@bp.post("/introspect")
def introspect() -> Response:
    """RFC 7662 token introspection."""
    return _smart().server.create_endpoint_response("introspection")


@bp.post("/revoke")
def revoke() -> Response:
    """RFC 7009 token revocation."""
    return _smart().server.create_endpoint_response("revocation")


@bp.post("/register")
def register() -> Response:
    """RFC 7591 §3 dynamic client registration, for administrators (see the module docstring)."""
    smart = _smart()
    access = _bearer_access()
    if access is None:
        return _need_token()
    user = smart.services.users.get(access.user_id) if access.user_id else None
    if user is None or "admin" not in user.roles:
        return _oauth_error("insufficient_scope", "Registering clients needs an administrator's token.", 403)
    body = flask.request.get_json(silent=True)
    if not isinstance(body, dict):
        return _oauth_error("invalid_client_metadata", "The registration body must be a JSON object.", 400)
    try:
        client, secret = smart.services.clients.register(body, admin=True)
    except RegistrationError as exc:
        response = jsonify(exc.to_dict())
        response.status_code = exc.status_code
        return response
    response = jsonify(client.registration_response(secret))
    response.status_code = 201
    response.headers.update({"Cache-Control": "no-store", "Pragma": "no-cache"})
    return response


class LaunchSchema(Schema):
    """Body of `POST /auth/launch`: the context the EHR binds to a new launch."""

    class Meta:
        unknown = EXCLUDE

    patient = fields.String(required=True, validate=validate.Length(min=1, max=80))
    encounter = fields.String(load_default=None, validate=validate.Length(min=1, max=80))
    client_id = fields.String(load_default=None, validate=validate.Length(min=1, max=128))
    need_patient_banner = fields.Boolean(load_default=True)


@bp.post("/launch")
def launch() -> Response:
    """Create an EHR launch (SMART "EHR Launch": the EHR hands `iss` and `launch` to the app): single use, five
    minutes, bound to the patient (and encounter), optionally to one client, and to the creating user."""
    smart = _smart()
    access = _bearer_access()
    if access is None:
        return _need_token()
    user = smart.services.users.get(access.user_id) if access.user_id else None
    if user is not None:
        if not (unconfined(user.fhir_user) or "admin" in user.roles):
            return _oauth_error("insufficient_scope", "Only clinicians and administrators create launches.", 403)
        bound_user, created_by = user.username, f"user:{user.username}"
    elif access.grant_type == "client_credentials" and access.allows("read", "Patient"):
        bound_user, created_by = None, f"client:{access.client_id}"
    else:
        return _oauth_error("insufficient_scope", "This token may not create launches.", 403)
    raw = flask.request.get_json(silent=True) if flask.request.is_json else flask.request.form.to_dict()
    try:
        body = LaunchSchema().load(raw if isinstance(raw, dict) else {})
    except ValidationError as exc:
        return _oauth_error("invalid_request", f"Invalid launch request: {exc.messages}", 400)
    client = None
    if body["client_id"] is not None:
        client = smart.services.clients.get(body["client_id"])
        if client is None:
            return _oauth_error("invalid_request", "client_id is not a registered client.", 400)
    try:
        launch_id, exp = smart.services.launches.create(
            body["patient"], body["encounter"], need_patient_banner=body["need_patient_banner"],
            client_id=body["client_id"], user_id=bound_user, created_by=created_by)
    except LaunchError as exc:
        return _oauth_error("invalid_request", str(exc), 400)
    base = smart.services.urls.fhir_base
    out: dict[str, Any] = {"launch": launch_id, "iss": base, "expires_in": int(exp - smart.services.clock())}
    if client is not None and client.launch_uri:
        out["launch_url"] = with_params(client.launch_uri, {"iss": base, "launch": launch_id})
    response = jsonify(out)
    response.status_code = 201
    response.headers.update({"Cache-Control": "no-store", "Pragma": "no-cache"})
    return response


# -- published documents ----------------------------------------------------------------------------------------------


@bp.get("/jwks")
def jwks() -> Response:
    """The public keys that verify id_tokens (OIDC `jwks_uri`); keys.py keeps retired keys published until every
    token they signed has expired."""
    keys: KeyRing = _smart().services.keys
    keys.current(ID_TOKEN_ALG)  # a fresh server publishes its key before signing anything
    response = jsonify(keys.jwks())
    response.headers["Cache-Control"] = "public, max-age=60"
    return response


@bp.get("/smart-style.json")
def style() -> Response:
    """The style document behind `smart_style_url` (SMART "context-style")."""
    response = jsonify(SMART_STYLE)
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response


@bp.get("/.well-known/openid-configuration")
def openid_configuration() -> Response:
    """OpenID Connect Discovery 1.0 §3 for the issuer `<origin>/auth`."""
    urls = _smart().services.urls
    endpoints = urls.endpoints()
    return jsonify({
        "issuer": urls.issuer,
        "authorization_endpoint": endpoints["authorize"],
        "token_endpoint": endpoints["token"],
        "jwks_uri": endpoints["jwks"],
        "registration_endpoint": endpoints["register"],
        "introspection_endpoint": endpoints["introspect"],
        "revocation_endpoint": endpoints["revoke"],
        "scopes_supported": ["openid", "fhirUser", "profile", "offline_access", "online_access"],
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [ID_TOKEN_ALG],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt",
                                                  "none"],
        "token_endpoint_auth_signing_alg_values_supported": list(SIGNING_ALGS),
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "amr", "fhirUser",
                             "preferred_username", "name"],
    })


__all__ = ["SmartAuth", "bp", "discovery_document", "init_app", "security_endpoints"]

"""The pages a person sees during authorization: sign-in, second factor, patient picker, consent, app-access
management, account self-service (forgotten password, reset link, TOTP enrolment) and the error page.
Server-rendered HTML forms; no JavaScript needed.

State (DESIGN.md "Scale": nothing in a process that another process needs):
- the browser holds a Flask session cookie (signed with FHIR_SECRET_KEY) carrying only an opaque session id `sid`;
- `auth_sessions`: one immutable document per session, `_id` = sha256(sid): who signed in (or is between password
  and second factor), when and how, and a `binding` that ties pending authorization requests to this browser.
  Signing in starts a new session (new sid, same binding), so a session id planted before sign-in is worthless
  (session fixation);
- `auth_requests`: the checked authorization request (`AuthorizeRequest`), `_id` = a random request id `rid` that
  the pages carry; it is honoured only from the browser whose binding it holds, and finished once (unique insert
  of "request:<rid>" into `auth_consumed`), so a double-submitted consent yields one code.

Recovery codes between "enable" and "confirm" of TOTP enrolment wait in the Flask session cookie (signed, so they
cannot be forged; HttpOnly) and are removed when shown, at sign-out, or replaced by the next enrolment; the store
keeps only their hashes.

CSRF: every form carries `csrf` = HMAC-SHA256(secret key, sid), checked on POST; the cookie is SameSite=Lax.
A chosen patient travels as a parameter and is checked again against `patients_for` wherever it is used.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import flask
from pymongo.database import Database
from werkzeug.wrappers import Response

from smart_auth.scopes import Scope, ScopeKind, narrow, parse_scopes
from smart_auth.server import AuthorizeError, AuthorizeRequest, SmartServices, check_authorization_request, unconfined
from smart_auth.tokens import OFFLINE_REFRESH_TTL, ONLINE_REFRESH_TTL, Context, new_secret, token_hash
from smart_auth.users import User, UserError

ENROLMENT_CODES = "enrolment_codes"  # Flask-session key: recovery codes between enable and confirm (shown once)
EXPIRED_FORM = "The form has expired. Go back and try again."

SESSIONS = "auth_sessions"
REQUESTS = "auth_requests"
SESSION_TTL = 1800.0  # a browser session before sign-in, and a pending second factor
LOGIN_TTL = 8 * 3600.0  # a signed-in session
REQUEST_TTL = 900.0  # from the authorization request to the consent

Clock = Callable[[], float]

# Headers of every page: not cached, framed only by this origin (an EHR portal may embed the flow), no referrer.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "X-Frame-Options": "SAMEORIGIN",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
                               "frame-ancestors 'self'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


# -- sessions ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BrowserSession:
    """One browser session as stored (the sid itself only in the cookie)."""

    sid: str
    binding: str
    user: str | None = None
    pending_user: str | None = None
    auth_time: float | None = None
    amr: tuple[str, ...] = ()
    exp: float = 0.0


class Sessions:
    """Browser sessions in `auth_sessions`, found through the Flask session cookie."""

    def __init__(self, db: Database, secret_key: str, clock: Clock = time.time) -> None:
        self.coll = db[SESSIONS]
        self.key = secret_key.encode()
        self.clock = clock

    def current(self) -> BrowserSession | None:
        sid = flask.session.get("sid")
        if not isinstance(sid, str) or not sid:
            return None
        doc = self.coll.find_one({"_id": token_hash(sid)})
        if doc is None or self.clock() >= doc["exp"]:
            return None
        return BrowserSession(sid, doc["binding"], doc.get("user"), doc.get("pending_user"), doc.get("auth_time"),
                              tuple(doc.get("amr") or ()), doc["exp"])

    def start(self, *, binding: str | None = None, user: str | None = None, pending_user: str | None = None,
              auth_time: float | None = None, amr: tuple[str, ...] = ()) -> BrowserSession:
        """A new session (new sid in the cookie) replacing the current one."""
        old = flask.session.get("sid")
        sid = new_secret()
        ttl = LOGIN_TTL if user else SESSION_TTL
        session = BrowserSession(sid, binding or new_secret(), user, pending_user, auth_time, amr, self.clock() + ttl)
        self.coll.insert_one({
            "_id": token_hash(sid), "binding": session.binding, "user": user, "pending_user": pending_user,
            "auth_time": auth_time, "amr": list(amr), "created": self.clock(), "exp": session.exp,
        })
        flask.session["sid"] = sid
        if isinstance(old, str) and old:
            self.coll.delete_one({"_id": token_hash(old)})
        return session

    def ensure(self) -> BrowserSession:
        return self.current() or self.start()

    def end(self) -> None:
        sid = flask.session.pop("sid", None)
        flask.session.pop(ENROLMENT_CODES, None)
        if isinstance(sid, str) and sid:
            self.coll.delete_one({"_id": token_hash(sid)})

    def csrf(self, session: BrowserSession) -> str:
        return hmac.new(self.key, f"csrf:{session.sid}".encode(), hashlib.sha256).hexdigest()

    def check_csrf(self, session: BrowserSession | None, value: str | None) -> bool:
        return session is not None and isinstance(value, str) and hmac.compare_digest(self.csrf(session), value)

    def purge(self) -> int:
        return self.coll.delete_many({"exp": {"$lt": self.clock()}}).deleted_count


class PendingRequests:
    """Checked authorization requests between /authorize and the consent, bound to one browser."""

    def __init__(self, db: Database, services: SmartServices, clock: Clock = time.time) -> None:
        self.coll = db[REQUESTS]
        self.services = services
        self.clock = clock

    def save(self, request: AuthorizeRequest, binding: str) -> str:
        rid = new_secret()
        self.coll.insert_one({"_id": rid, "binding": binding, "exp": self.clock() + REQUEST_TTL,
                              "request": request.to_doc()})
        return rid

    def load(self, rid: str | None, binding: str | None) -> AuthorizeRequest | None:
        if not isinstance(rid, str) or not rid or len(rid) > 128 or not binding:
            return None
        doc = self.coll.find_one({"_id": rid})
        if doc is None or self.clock() >= doc["exp"] or not hmac.compare_digest(doc["binding"], binding):
            return None
        return AuthorizeRequest.from_doc(doc["request"])

    def finish(self, rid: str) -> bool:
        """Complete a request once; False when it was already completed (a double submit)."""
        if not self.services.tokens.consume(f"request:{rid}", self.clock() + REQUEST_TTL):
            return False
        self.coll.delete_one({"_id": rid})
        return True

    def purge(self) -> int:
        return self.coll.delete_many({"exp": {"$lt": self.clock()}}).deleted_count


# -- describing scopes ------------------------------------------------------------------------------------------------

_LETTER_WORDS = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}
_FIXED_TEXT = {
    "openid": "Confirm who you are to the app (sign-in with this account)",
    "fhirUser": "Tell the app which health record represents you",
    "profile": "Share your name and username with the app",
    "offline_access": "Keep access when you are not using the app, until you revoke it "
                      f"(it ends after {int(OFFLINE_REFRESH_TTL // 86400)} days without use)",
    "online_access": f"Keep access while you are signed in (up to {int(ONLINE_REFRESH_TTL // 3600)} hours)",
    "launch": "Receive the context the EHR launched it with",
    "launch/patient": "Know which patient is selected",
    "launch/encounter": "Know which encounter is selected",
}


def describe_scope(scope: Scope) -> str:
    """Plain words for one scope, for the consent page."""
    if scope.kind is not ScopeKind.RESOURCE:
        return _FIXED_TEXT.get(scope.name, scope.name)
    verbs = [_LETTER_WORDS[letter] for letter in scope.permissions]
    action = ", ".join(verbs[:-1]) + (" and " if len(verbs) > 1 else "") + verbs[-1]
    what = "all kinds of records" if scope.resource_type == "*" else f"{scope.resource_type} records"
    whose = {"patient": "of the selected patient", "user": "that you may see", "system": "of everyone"}[
        scope.context or "user"]
    text = f"{action.capitalize()} {what} {whose}"
    if scope.params:
        text += " (only " + ", ".join(f"{n} {v.rsplit('|', 1)[-1]}" for n, v in scope.params) + ")"
    return text


def _optional(scope: Scope) -> bool:
    """A box the user may untick: data and identity scopes and refresh; the launch context is fixed."""
    return scope.kind is not ScopeKind.LAUNCH


def with_params(uri: str, params: dict[str, str]) -> str:
    """Add query parameters to a redirect URI that may already have a query (RFC 6749 §3.1.2: "MUST retain")."""
    parts = urlsplit(uri)
    query = parts.query + ("&" if parts.query else "") + urlencode(params)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


# -- the pages --------------------------------------------------------------------------------------------------------


class Pages:
    """The page handlers behind the /auth routes of smart_auth.web."""

    def __init__(self, db: Database, services: SmartServices, secret_key: str) -> None:
        self.services = services
        self.sessions = Sessions(db, secret_key, services.clock)
        self.requests = PendingRequests(db, services, services.clock)

    # rendering ---------------------------------------------------------------------------------------------------

    def render(self, template: str, status: int = 200, session: BrowserSession | None = None,
               **values: Any) -> Response:
        csrf = self.sessions.csrf(session) if session else ""
        body = flask.render_template(template, csrf=csrf, **values)
        return Response(body, status=status, headers=PAGE_HEADERS, content_type="text/html; charset=utf-8")

    def error_page(self, message: str, status: int = 400, title: str = "This request cannot be completed") -> Response:
        """Shown instead of redirecting: "the authorization server SHOULD inform the resource owner of the error and
        MUST NOT automatically redirect the user-agent to the invalid redirection URI" (RFC 6749 §4.1.2.1)."""
        return self.render("error.html", status=status, title=title, message=message)

    def redirect(self, url: str) -> Response:
        response = flask.redirect(url, code=303)
        response.headers.update({k: v for k, v in PAGE_HEADERS.items() if k in ("Cache-Control", "Pragma")})
        return response

    def to_client(self, request: AuthorizeRequest, params: dict[str, str]) -> Response:
        """Back to the app's redirect URI with `code` or `error`, plus `state` verbatim."""
        return self.redirect(with_params(request.redirect_uri, {**params, "state": request.state}))

    def refuse(self, request: AuthorizeRequest, rid: str, error: str, description: str) -> Response:
        self.requests.finish(rid)
        return self.to_client(request, {"error": error, "error_description": description})

    def url(self, endpoint: str, **params: str) -> str:
        return flask.url_for(f"smart_auth.{endpoint}", **{k: v for k, v in params.items() if v})

    # the authorization endpoint ----------------------------------------------------------------------------------

    def authorize(self) -> Response:
        """GET and POST /auth/authorize ("authorize-post"): check, remember, then sign-in / picker / consent."""
        params = flask.request.form if flask.request.method == "POST" else flask.request.args
        try:
            checked = check_authorization_request(params, self.services.clients, self.services.launches,
                                                  self.services.urls.fhir_base)
        except AuthorizeError as exc:
            if exc.redirect_uri is None:
                return self.error_page(exc.description)
            params_out = {"error": exc.error, "error_description": exc.description}
            if exc.state:
                params_out["state"] = exc.state
            return self.redirect(with_params(exc.redirect_uri, params_out))
        session = self.sessions.ensure()
        rid = self.requests.save(checked, session.binding)
        return self.redirect(self.next_step(rid, session))

    def next_step(self, rid: str, session: BrowserSession) -> str:
        if session.user is None:
            return self.url("second_factor" if session.pending_user else "login", rid=rid)
        request = self.requests.load(rid, session.binding)
        if request is not None and request.needs_patient:
            return self.url("select_patient", rid=rid)
        return self.url("consent", rid=rid)

    def _pending(self, rid: str | None) -> tuple[BrowserSession | None, AuthorizeRequest | None]:
        session = self.sessions.current()
        request = self.requests.load(rid, session.binding if session else None) if rid else None
        return session, request

    def _stale(self) -> Response:
        return self.error_page("This sign-in request has expired or was started in another browser. "
                               "Go back to the app and start again.", status=400)

    # sign-in -----------------------------------------------------------------------------------------------------

    def login(self) -> Response:
        rid = flask.request.values.get("rid") or None
        session, request = self._pending(rid)
        if rid and request is None:
            return self._stale()
        if flask.request.method == "GET":
            session = session or self.sessions.start()
            if session.user:
                return self.redirect(self.next_step(rid, session) if rid else self.url("manage"))
            return self.render("login.html", session=session, rid=rid, request=request, error=None)
        form = flask.request.form
        if not self.sessions.check_csrf(session, form.get("csrf")):
            return self.error_page("The form has expired. Go back and try again.", status=400)
        assert session is not None
        result = self.services.users.verify_password(form.get("username", ""), form.get("password", ""),
                                                     flask.request.remote_addr)
        if result.status == "locked":
            minutes = max(1, (result.retry_after + 59) // 60)
            return self.render("login.html", status=429, session=session, rid=rid, request=request,
                               error=f"Too many attempts. Try again in {minutes} minute{'s' if minutes > 1 else ''}.")
        if not result.ok or result.user is None:
            return self.render("login.html", status=422, session=session, rid=rid, request=request,
                               error="The username or password is not correct.")
        if result.second_factor_required:
            session = self.sessions.start(binding=session.binding, pending_user=result.user.username)
            return self.redirect(self.url("second_factor", rid=rid or ""))
        session = self.sessions.start(binding=session.binding, user=result.user.username,
                                      auth_time=self.services.clock(), amr=("pwd",))
        return self.redirect(self.next_step(rid, session) if rid else self.url("manage"))

    def second_factor(self) -> Response:
        rid = flask.request.values.get("rid") or None
        session, request = self._pending(rid)
        if rid and request is None:
            return self._stale()
        if session is None or not session.pending_user:
            return self.redirect(self.url("login", rid=rid or ""))
        if flask.request.method == "GET":
            return self.render("second_factor.html", session=session, rid=rid, request=request, error=None)
        form = flask.request.form
        if not self.sessions.check_csrf(session, form.get("csrf")):
            return self.error_page("The form has expired. Go back and try again.", status=400)
        result = self.services.users.check_second_factor(session.pending_user, form.get("code", ""),
                                                         flask.request.remote_addr)
        if result.status == "locked":
            return self.render("second_factor.html", status=429, session=session, rid=rid, request=request,
                               error="Too many attempts. Try again later.")
        if not result.ok:
            return self.render("second_factor.html", status=422, session=session, rid=rid, request=request,
                               error="That code is not correct or was already used.")
        session = self.sessions.start(binding=session.binding, user=session.pending_user,
                                      auth_time=self.services.clock(), amr=("pwd", "otp"))
        return self.redirect(self.next_step(rid, session) if rid else self.url("manage"))

    def logout(self) -> Response:
        """POST /auth/logout: end the session (CSRF-checked); back to sign-in for a pending request."""
        session = self.sessions.current()
        rid = flask.request.form.get("rid") or ""
        if session is not None and not self.sessions.check_csrf(session, flask.request.form.get("csrf")):
            return self.error_page("The form has expired. Go back and try again.", status=400)
        binding = session.binding if session else None
        self.sessions.end()
        self.sessions.start(binding=binding)
        return self.redirect(self.url("login", rid=rid))

    def _signed_in(self, rid: str | None) -> tuple[BrowserSession, AuthorizeRequest, User] | Response:
        session, request = self._pending(rid)
        if request is None or session is None:
            return self._stale()
        if session.user is None:
            return self.redirect(self.next_step(rid or "", session))
        user = self.services.users.get(session.user)
        if user is None:
            self.sessions.end()
            return self._stale()
        return session, request, user

    # patient picker ----------------------------------------------------------------------------------------------

    def select_patient(self) -> Response:
        """SMART standalone launch with `launch/patient`: the server establishes the patient; the user picks among
        their own record and the patients they are a current proxy for (`patients_for`)."""
        rid = flask.request.values.get("rid") or None
        state = self._signed_in(rid)
        if isinstance(state, Response):
            return state
        session, request, user = state
        assert rid is not None
        choices = self.services.directory.choices(user)
        if not choices:
            return self.refuse(request, rid, "access_denied", "there is no patient this user may select")
        if flask.request.method == "GET":
            if len(choices) == 1:
                return self.redirect(self.url("consent", rid=rid, patient=choices[0][0]))
            return self.render("select_patient.html", session=session, rid=rid, request=request, user=user,
                               choices=choices, error=None)
        if not self.sessions.check_csrf(session, flask.request.form.get("csrf")):
            return self.error_page("The form has expired. Go back and try again.", status=400)
        chosen = flask.request.form.get("patient", "")
        if chosen not in dict(choices):
            return self.render("select_patient.html", status=400, session=session, rid=rid, request=request,
                               user=user, choices=choices, error="Choose one of the patients listed.")
        return self.redirect(self.url("consent", rid=rid, patient=chosen))

    # consent -----------------------------------------------------------------------------------------------------

    def _context(self, request: AuthorizeRequest, user: User, rid: str) -> tuple[str | None, Response | None]:
        """The patient in context, checked for this user; or the response that ends the flow."""
        launch = request.launch
        if launch is not None:
            if launch.user_id is not None and launch.user_id != user.username:
                return None, self.refuse(request, rid, "access_denied", "this launch was created for another user")
            if not self.services.directory.may_act_for(user, launch.patient):
                return None, self.refuse(request, rid, "access_denied", "this user may not open that patient")
            return launch.patient, None
        if not request.needs_patient:
            return None, None
        chosen = flask.request.values.get("patient", "")
        if not chosen or not self.services.directory.may_act_for(user, chosen):
            return None, self.redirect(self.url("select_patient", rid=rid))
        return chosen.removeprefix("Patient/"), None

    def consent(self) -> Response:
        """The user sees what the app asks for, may untick scopes (`scopes.narrow` keeps it within the request) and
        allows or denies; allowing issues the authorization code."""
        rid = flask.request.values.get("rid") or None
        state = self._signed_in(rid)
        if isinstance(state, Response):
            return state
        session, request, user = state
        assert rid is not None
        patient, stop = self._context(request, user, rid)
        if stop is not None:
            return stop
        scopes = parse_scopes(request.scope)
        if flask.request.method == "GET":
            labels = dict(self.services.directory.choices(user)) if patient and not unconfined(user.fhir_user) else {}
            return self.render(
                "consent.html", session=session, rid=rid, request=request, user=user, patient=patient,
                patient_label=labels.get(f"Patient/{patient}", f"Patient/{patient}") if patient else None,
                optional=[(str(s), describe_scope(s)) for s in scopes if _optional(s)],
                fixed=[describe_scope(s) for s in scopes if not _optional(s)],
                offline=any(s.name == "offline_access" for s in scopes),
            )
        form = flask.request.form
        if not self.sessions.check_csrf(session, form.get("csrf")):
            return self.error_page("The form has expired. Go back and try again.", status=400)
        if form.get("decision") != "allow":
            return self.refuse(request, rid, "access_denied", "the user denied the request")
        ticked = form.getlist("scope") + [str(s) for s in scopes if not _optional(s)]
        granted = narrow(request.scope, " ".join(ticked))
        if not self.requests.finish(rid):
            return self.error_page("This request was already completed. Go back to the app.", status=400)
        launch = request.launch
        context = Context(
            patient=patient, encounter=launch.encounter if launch else None,
            need_patient_banner=launch.need_patient_banner if launch else True, fhir_user=user.fhir_user,
            auth_time=session.auth_time, amr=session.amr,
        )
        code = self.services.tokens.save_code(
            grant=new_secret(), client_id=request.client_id, user_id=user.username, redirect_uri=request.redirect_uri,
            scope=granted, aud=request.aud, code_challenge=request.code_challenge,
            code_challenge_method=request.code_challenge_method, context=context, nonce=request.nonce,
        )
        return self.to_client(request, {"code": code})

    # app-access management (SMART management_endpoint) -----------------------------------------------------------

    def manage(self) -> Response:
        """The signed-in user's app authorizations, each revocable at once (ONC (g)(10): patient-requested
        revocation)."""
        session = self.sessions.current()
        if session is None or session.user is None:
            return self.redirect(self.url("login"))
        if flask.request.method == "POST":
            if not self.sessions.check_csrf(session, flask.request.form.get("csrf")):
                return self.error_page("The form has expired. Go back and try again.", status=400)
            grant = flask.request.form.get("grant", "")
            if grant and self.services.tokens.grant_owner(grant) == session.user:
                self.services.tokens.revoke_grant(grant, "revoked by the user")
            return self.redirect(self.url("manage"))
        grants = []
        for entry in self.services.tokens.live_grants(session.user):
            client = self.services.clients.get(entry["client_id"])
            grants.append({
                **entry, "client_name": (client.name if client else "") or entry["client_id"],
                "scopes": [describe_scope(s) for s in parse_scopes(entry["scope"]) if s.kind is ScopeKind.RESOURCE],
                "issued": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(entry["iat"])),
            })
        return self.render("manage.html", session=session, user=session.user, grants=grants)

    # account self-service: forgotten password, reset link, second factor -----------------------------------------

    def forgot(self) -> Response:
        """GET/POST /auth/forgot: ask for a reset link. The answer is the same whether or not an account exists
        (UserStore.request_reset neither raises nor tells, and applies its own limit on live links)."""
        session = self.sessions.ensure()
        if flask.request.method == "GET":
            return self.render("forgot.html", session=session, sent=False)
        if not self.sessions.check_csrf(self.sessions.current(), flask.request.form.get("csrf")):
            return self.error_page(EXPIRED_FORM, status=400)
        self.services.users.request_reset(flask.request.form.get("username", ""))
        return self.render("forgot.html", session=session, sent=True)

    def _reset_token_live(self, token: str) -> bool:
        """Whether a reset link can still be used (for the GET; reset_password decides again on POST)."""
        if not token or len(token) > 256:
            return False
        doc = self.services.users.store.reset_tokens.find_one({"_id": token_hash(token)}, {"expires": 1})
        if doc is None:
            return False
        expires = doc["expires"] if doc["expires"].tzinfo else doc["expires"].replace(tzinfo=UTC)
        return expires > datetime.now(UTC)

    def reset(self) -> Response:
        """GET/POST /auth/reset?token=...: choose a new password with a single-use link from the outbox."""
        token = flask.request.values.get("token", "")
        invalid = "This reset link is invalid, was already used or has expired. Ask for a new one."
        session = self.sessions.ensure()
        if flask.request.method == "GET":
            if not self._reset_token_live(token):
                return self.error_page(invalid, title="Reset link not valid")
            return self.render("reset.html", session=session, token=token, error=None, done=False)
        form = flask.request.form
        if not self.sessions.check_csrf(self.sessions.current(), form.get("csrf")):
            return self.error_page(EXPIRED_FORM, status=400)
        password = form.get("password", "")
        if password != form.get("password2", ""):
            return self.render("reset.html", status=422, session=session, token=token,
                               error="The two passwords are not the same.", done=False)
        try:
            self.services.users.reset_password(token, password)
        except UserError as exc:
            if exc.code == "invalid_token":
                return self.error_page(invalid, title="Reset link not valid")
            return self.render("reset.html", status=422, session=session, token=token, error=str(exc), done=False)
        return self.render("reset.html", session=session, token="", error=None, done=True)

    def security(self) -> Response:
        """GET/POST /auth/security: the signed-in user's second factor. `action` = enable (needs the password) ->
        secret and otpauth:// URI -> confirm (a code from the authenticator) -> the recovery codes, shown once;
        disable (needs the password or a current code)."""
        session = self.sessions.current()
        if session is None or session.user is None:
            return self.redirect(self.url("login"))
        user = self.services.users.get(session.user)
        if user is None:
            self.sessions.end()
            return self.redirect(self.url("login"))
        if flask.request.method == "GET":
            return self.render("security.html", session=session, user=user, step="status", error=None)
        form = flask.request.form
        if not self.sessions.check_csrf(session, form.get("csrf")):
            return self.error_page(EXPIRED_FORM, status=400)
        users, ip = self.services.users, flask.request.remote_addr
        action = form.get("action", "")
        if action == "enable":
            result = users.verify_password(user.username, form.get("password", ""), ip)
            if not result.ok:
                return self.render("security.html", status=429 if result.status == "locked" else 422,
                                   session=session, user=user, step="status", error="The password is not correct.")
            secret, uri, codes = users.enable_totp(user.username)
            flask.session[ENROLMENT_CODES] = codes
            return self.render("security.html", session=session, user=user, step="confirm", secret=secret, uri=uri,
                               error=None)
        if action == "confirm":
            codes = flask.session.get(ENROLMENT_CODES)
            if not isinstance(codes, list) or not users.confirm_totp(user.username, form.get("code", "")):
                return self.render("security.html", status=422, session=session, user=user, step="status",
                                   error="That code is not correct or the enrolment expired. Start again.")
            flask.session.pop(ENROLMENT_CODES, None)
            return self.render("security.html", session=session, user=users.get(user.username) or user,
                               step="codes", codes=codes, error=None)
        if action == "disable":
            password, code = form.get("password", ""), form.get("code", "")
            if code:
                proved = users.verify_second_factor(user.username, code, ip)
            else:
                proved = users.verify_password(user.username, password, ip).ok
            if not proved:
                return self.render("security.html", status=422, session=session, user=user, step="status",
                                   error="The password or code is not correct.")
            users.disable_totp(user.username)
            return self.redirect(self.url("security"))
        return self.error_page("Unknown action.", status=400)


__all__ = ["PAGE_HEADERS", "BrowserSession", "Pages", "PendingRequests", "Sessions", "describe_scope", "with_params"]

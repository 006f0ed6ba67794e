"""OAuth clients of the SMART authorization server: registration (RFC 7591), lookup, secrets, redirect URIs and client
keys, plus an adapter that presents a client to authlib (`authlib.oauth2.rfc6749.ClientMixin`).

Three kinds of client (SMART App Launch 2.2 "Client Authentication"):
- `public` (`token_endpoint_auth_method` = `none`): no secret; PKCE protects the code.
- `confidential-symmetric` (`client_secret_basic` / `client_secret_post`): a high-entropy secret generated here,
  shown once in the registration response and stored only as its SHA-256 (it is a random 256-bit key, not a
  password, so a slow hash adds nothing).
- `confidential-asymmetric` (`private_key_jwt`, RFC 7523): the client's public keys, inline `jwks` or `jwks_uri`.

Storage: collection `auth_clients`, `_id` = client_id, inserted once (a unique insert, so an admin-chosen client_id
cannot be claimed twice).

Registration policy [project decision]: open (non-admin) registration may not ask for `client_credentials` or
`system/` scopes, because SMART Backend Services clients act for no user and get only what an administrator
pre-authorized; an admin may also choose the client_id and the secret (for seeded and certification clients).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from authlib.oauth2.rfc6749 import ClientMixin
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, RSAKey
from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates_schema
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from smart_auth.scopes import ScopeError, grant, parse_scopes

CLIENTS = "auth_clients"

AUTH_METHODS = ("none", "client_secret_basic", "client_secret_post", "private_key_jwt")
GRANT_TYPES = ("authorization_code", "refresh_token", "client_credentials")
RESPONSE_TYPES = ("code",)
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})

# Scope registered when the request names none (RFC 7591 §2 "scope": the server MAY register a default set).
# Read-only patient and user data plus launch context and OpenID; backend clients must always say what they need.
# (v1 `patient/*.read` requests are covered: they mean the same letters, see smart_auth.scopes.)
DEFAULT_APP_SCOPE = (
    "openid fhirUser profile launch launch/patient launch/encounter offline_access online_access "
    "patient/*.rs user/*.rs"
)

# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")
# An admin-chosen client_id: URL-safe and without ':' (used as a key prefix, e.g. in auth_used_jti).
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._~-]{1,128}$")

Clock = Callable[[], float]
JWKSFetcher = Callable[[str], "tuple[dict[str, Any], float | None]"]


def kind_of(auth_method: str) -> str:
    """SMART client type from the token endpoint auth method."""
    if auth_method == "none":
        return "public"
    if auth_method == "private_key_jwt":
        return "confidential-asymmetric"
    return "confidential-symmetric"


def hash_secret(secret: str) -> str:
    """SHA-256 of a client secret, as stored."""
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()


# -- validation -------------------------------------------------------------------------------------------------------


def check_redirect_uri(uri: str) -> None:
    """RFC 6749 §3.1.2: an absolute URI without a fragment; [project] https, or http on a loopback host
    (RFC 8252 §7.3 native apps and local development)."""
    try:
        parts = urlsplit(uri)
        host = parts.hostname
    except ValueError as exc:
        raise ValidationError("not a valid URI") from exc
    if parts.fragment or "#" in uri:
        raise ValidationError("must not contain a fragment (RFC 6749 §3.1.2)")
    if parts.username is not None or parts.password is not None:
        raise ValidationError("must not contain user information")
    if parts.scheme == "https" and host:
        return
    if parts.scheme == "http" and host in LOOPBACK_HOSTS:
        return
    raise ValidationError("must be an absolute https URI, or http on localhost / 127.0.0.1 / [::1]")


def check_scope(value: str) -> None:
    """RFC 6749 §3.3: space-delimited scope tokens from the allowed character set."""
    tokens = value.split(" ")
    if not value or any(not _SCOPE_TOKEN.match(t) for t in tokens):
        raise ValidationError("must be space-separated scope tokens (RFC 6749 §3.3), one space between tokens")


def import_client_jwks(value: Mapping[str, Any]) -> KeySet:
    """A client's public JWK Set (SMART `client-confidential-asymmetric`: each JWK has `kty` and `kid`; RSA `n`,
    `e`; EC `crv`, `x`, `y`). Private keys are refused: a client must never send us its private key."""
    keys = value.get("keys") if isinstance(value, Mapping) else None
    if not isinstance(keys, list) or not keys:
        raise ValidationError("must be a JWK Set: an object with a non-empty 'keys' array")
    kids: set[str] = set()
    for i, jwk in enumerate(keys):
        if not isinstance(jwk, Mapping):
            raise ValidationError(f"keys[{i}] is not an object")
        if jwk.get("kty") not in ("RSA", "EC"):
            raise ValidationError(f"keys[{i}]: 'kty' must be RSA or EC")
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not kid:
            raise ValidationError(f"keys[{i}]: 'kid' is required")
        if kid in kids:
            raise ValidationError(f"keys[{i}]: 'kid' {kid!r} is not unique")
        kids.add(kid)
    try:
        keyset = KeySet.import_key_set({"keys": [dict(k) for k in keys]})
    except (JoseError, ValueError, TypeError) as exc:
        raise ValidationError(f"not a valid JWK Set: {exc}") from exc
    for key in keyset.keys:
        if key.is_private:
            raise ValidationError(f"key {key.kid!r} contains private key material; send only the public key")
        if isinstance(key, RSAKey) and key.raw_value.key_size < 2048:
            raise ValidationError(f"key {key.kid!r}: RSA keys must have at least 2048 bits")
        if isinstance(key, ECKey) and key.get("crv") not in ("P-256", "P-384", "P-521"):
            raise ValidationError(f"key {key.kid!r}: EC curve must be P-256, P-384 or P-521")
    return keyset


class ClientMetadataSchema(Schema):
    """An RFC 7591 §2 client registration body, plus SMART's `launch_uri`. Unknown members are ignored (RFC 7591
    §2: "The authorization server MUST ignore any client metadata sent by the client that it does not
    understand"); `client_id` and `client_secret` are accepted from administrators only."""

    class Meta:
        unknown = EXCLUDE

    redirect_uris = fields.List(fields.String(validate=check_redirect_uri), validate=validate.Length(max=20))
    token_endpoint_auth_method = fields.String(
        load_default="client_secret_basic", validate=validate.OneOf(AUTH_METHODS),  # RFC 7591 §2 default
    )
    grant_types = fields.List(fields.String(validate=validate.OneOf(GRANT_TYPES)), load_default=None)
    response_types = fields.List(fields.String(validate=validate.OneOf(RESPONSE_TYPES)), load_default=None)
    scope = fields.String(validate=check_scope, load_default=None)
    client_name = fields.String(validate=validate.Length(min=1, max=200), load_default=None)
    jwks = fields.Dict(load_default=None)
    jwks_uri = fields.String(validate=validate.Length(max=2000), load_default=None)
    launch_uri = fields.String(validate=check_redirect_uri, load_default=None)
    client_uri = fields.String(validate=check_redirect_uri, load_default=None)
    logo_uri = fields.String(validate=check_redirect_uri, load_default=None)
    tos_uri = fields.String(validate=check_redirect_uri, load_default=None)
    policy_uri = fields.String(validate=check_redirect_uri, load_default=None)
    contacts = fields.List(fields.Email(), validate=validate.Length(max=10), load_default=None)
    software_id = fields.String(validate=validate.Length(max=200), load_default=None)
    software_version = fields.String(validate=validate.Length(max=100), load_default=None)
    client_id = fields.String(validate=validate.Regexp(_CLIENT_ID), load_default=None)
    client_secret = fields.String(validate=validate.Length(min=32, max=512), load_default=None)

    def __init__(self, *, admin: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.admin = admin

    @validates_schema
    def _consistent(self, data: dict[str, Any], **_: Any) -> None:
        """Cross-field rules of RFC 7591 §2 and §2.1 and SMART; each error names the field at fault."""
        errors: dict[str, list[str]] = {}

        def fail(name: str, message: str) -> None:
            errors.setdefault(name, []).append(message)

        method = data["token_endpoint_auth_method"]
        grants = data["grant_types"] if data["grant_types"] is not None else ["authorization_code"]
        responses = data["response_types"]
        if not grants:
            fail("grant_types", "must name at least one grant type")
        # RFC 7591 §2.1: authorization_code goes with response type "code", and back.
        if responses is not None and ("code" in responses) != ("authorization_code" in grants):
            fail("response_types", "'code' is required with, and only with, the authorization_code grant")
        if "refresh_token" in grants and "authorization_code" not in grants:
            fail("grant_types", "refresh_token is only issued with authorization_code")
        if "authorization_code" in grants and not data.get("redirect_uris"):
            fail("redirect_uris", "at least one redirect URI is required for the authorization_code grant")
        # SMART Backend Services: client_credentials clients authenticate with private_key_jwt only.
        if "client_credentials" in grants:
            if method != "private_key_jwt":
                fail("grant_types", "client_credentials requires token_endpoint_auth_method private_key_jwt")
            if not data["scope"]:
                fail("scope", "a client_credentials client must register the system/ scopes it needs")
            if not self.admin:
                fail("grant_types", "client_credentials clients are registered by an administrator")
        if data["scope"]:
            try:
                parse_scopes(data["scope"])
            except ScopeError as exc:
                fail("scope", str(exc))
            if not self.admin and any(t.startswith("system/") for t in data["scope"].split()):
                fail("scope", "system/ scopes are granted by an administrator")
        # RFC 7591 §2: "jwks_uri and jwks parameters MUST NOT both be present".
        if data["jwks"] is not None and data["jwks_uri"] is not None:
            fail("jwks", "send either jwks or jwks_uri, not both")
        if method == "private_key_jwt" and data["jwks"] is None and data["jwks_uri"] is None:
            fail("jwks_uri", "private_key_jwt requires jwks_uri or jwks")
        if data["jwks"] is not None:
            try:
                import_client_jwks(data["jwks"])
            except ValidationError as exc:
                fail("jwks", str(exc.messages[0] if isinstance(exc.messages, list) else exc.messages))
        if data["jwks_uri"] is not None:
            try:
                check_jwks_uri(data["jwks_uri"], admin=self.admin)
            except ValidationError as exc:
                fail("jwks_uri", str(exc.messages[0] if isinstance(exc.messages, list) else exc.messages))
        if not self.admin:
            if data["client_id"] is not None:
                fail("client_id", "the client_id is assigned by the server")
            if data["client_secret"] is not None:
                fail("client_secret", "the client_secret is issued by the server")
        if data["client_secret"] is not None and method not in ("client_secret_basic", "client_secret_post"):
            fail("client_secret", "a secret is only used with client_secret_basic or client_secret_post")
        if errors:
            raise ValidationError(errors)


def check_jwks_uri(uri: str, admin: bool = False) -> None:
    """SMART: the JWKS URL is fetched over TLS. [project] http on a loopback host only for administrators (no open
    registration may point the server at its own machine)."""
    try:
        parts = urlsplit(uri)
        host = parts.hostname
    except ValueError as exc:
        raise ValidationError("not a valid URI") from exc
    if parts.fragment or parts.username is not None:
        raise ValidationError("must not contain a fragment or user information")
    if parts.scheme == "https" and host:
        return
    if admin and parts.scheme == "http" and host in LOOPBACK_HOSTS:
        return
    raise ValidationError("must be an absolute https URI")


class RegistrationError(Exception):
    """RFC 7591 §3.2.2 error response: `invalid_redirect_uri` or `invalid_client_metadata`, HTTP 400, plus the
    per-field messages (`fields`) for a clear report."""

    status_code = 400

    def __init__(self, error: str, description: str, fields: Mapping[str, Any] | None = None) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.fields = dict(fields or {})

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.error, "error_description": self.description}
        if self.fields:
            body["field_errors"] = self.fields
        return body


def _describe(messages: Mapping[str, Any]) -> str:
    parts = []
    for name, msgs in sorted(messages.items()):
        flat = json.dumps(msgs) if not isinstance(msgs, list) else "; ".join(str(m) for m in msgs)
        parts.append(f"{name}: {flat}")
    return ". ".join(parts)


# -- the client record ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Client:
    """A registered client, as stored in `auth_clients`."""

    client_id: str
    token_endpoint_auth_method: str
    redirect_uris: tuple[str, ...] = ()
    scope: tuple[str, ...] = ()
    grant_types: tuple[str, ...] = ("authorization_code",)
    response_types: tuple[str, ...] = ("code",)
    name: str = ""
    launch_uri: str | None = None
    jwks: dict[str, Any] | None = None
    jwks_uri: str | None = None
    secret_hash: str | None = None
    created: float = 0.0
    admin_registered: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """`public`, `confidential-symmetric` or `confidential-asymmetric`."""
        return kind_of(self.token_endpoint_auth_method)

    def to_doc(self) -> dict[str, Any]:
        return {
            "_id": self.client_id, "kind": self.kind, "token_endpoint_auth_method": self.token_endpoint_auth_method,
            "redirect_uris": list(self.redirect_uris), "scope": list(self.scope), "grant_types": list(self.grant_types),
            "response_types": list(self.response_types), "name": self.name, "launch_uri": self.launch_uri,
            # the JWK Set is stored as JSON text: JWK members are safe field names, but a text blob is exact
            "jwks": json.dumps(self.jwks) if self.jwks is not None else None, "jwks_uri": self.jwks_uri,
            "secret_hash": self.secret_hash, "created": self.created, "admin_registered": self.admin_registered,
            "metadata": self.metadata,
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Client:
        return cls(
            client_id=doc["_id"], token_endpoint_auth_method=doc["token_endpoint_auth_method"],
            redirect_uris=tuple(doc.get("redirect_uris") or ()), scope=tuple(doc.get("scope") or ()),
            grant_types=tuple(doc.get("grant_types") or ()), response_types=tuple(doc.get("response_types") or ()),
            name=doc.get("name") or "", launch_uri=doc.get("launch_uri"),
            jwks=json.loads(doc["jwks"]) if doc.get("jwks") else None, jwks_uri=doc.get("jwks_uri"),
            secret_hash=doc.get("secret_hash"), created=doc.get("created", 0.0),
            admin_registered=bool(doc.get("admin_registered")), metadata=dict(doc.get("metadata") or {}),
        )

    def registration_response(self, secret: str | None = None) -> dict[str, Any]:
        """RFC 7591 §3.2.1 client information response: client_id, the secret (once) with
        `client_secret_expires_at` (0 = never), `client_id_issued_at`, and the registered metadata."""
        body: dict[str, Any] = {"client_id": self.client_id, "client_id_issued_at": int(self.created)}
        if secret is not None:
            body["client_secret"] = secret
            body["client_secret_expires_at"] = 0
        body.update({
            "token_endpoint_auth_method": self.token_endpoint_auth_method,
            "grant_types": list(self.grant_types), "response_types": list(self.response_types),
            "scope": " ".join(self.scope),
        })
        if self.redirect_uris:
            body["redirect_uris"] = list(self.redirect_uris)
        if self.name:
            body["client_name"] = self.name
        if self.launch_uri:
            body["launch_uri"] = self.launch_uri
        if self.jwks is not None:
            body["jwks"] = self.jwks
        if self.jwks_uri is not None:
            body["jwks_uri"] = self.jwks_uri
        body.update(self.metadata)
        return body


# -- JWKS fetching ----------------------------------------------------------------------------------------------------


class JWKSUnavailable(Exception):
    """A client's `jwks_uri` could not be fetched or did not hold a usable JWK Set."""


def http_fetch_jwks(uri: str, timeout: float = 5.0, limit: int = 256 * 1024) -> tuple[dict[str, Any], float | None]:
    """GET a JWK Set over HTTPS (SMART: "no authentication required to fetch"); returns the JSON and the
    `Cache-Control` max-age in seconds (0 for no-store / no-cache, None when absent)."""
    request = urllib.request.Request(uri, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read(limit + 1)
            cache_control = response.headers.get("Cache-Control", "")
    except OSError as exc:
        raise JWKSUnavailable(f"cannot fetch {uri}: {exc}") from exc
    if len(body) > limit:
        raise JWKSUnavailable(f"{uri} returned more than {limit} bytes")
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise JWKSUnavailable(f"{uri} did not return JSON") from exc
    return data, _max_age(cache_control)


def _max_age(cache_control: str) -> float | None:
    directives = [d.strip().lower() for d in cache_control.split(",") if d.strip()]
    if any(d in ("no-store", "no-cache") for d in directives):
        return 0.0
    for d in directives:
        if d.startswith("max-age="):
            try:
                return max(0.0, float(d.split("=", 1)[1]))
            except ValueError:
                return 0.0
    return None


# -- the registry -----------------------------------------------------------------------------------------------------


class ClientRegistry:
    """Registered clients in `auth_clients`, with an in-process cache of fetched client JWK Sets."""

    JWKS_TTL = 300.0  # longest we keep a fetched JWKS (shorter when the client's Cache-Control says so)
    JWKS_MIN_REFETCH = 10.0  # an unknown kid triggers at most one refetch per this many seconds

    def __init__(self, db: Database, clock: Clock = time.time, fetch_jwks: JWKSFetcher = http_fetch_jwks) -> None:
        self.coll = db[CLIENTS]
        self.clock = clock
        self.fetch_jwks = fetch_jwks
        self._lock = threading.Lock()
        self._jwks_cache: dict[str, tuple[KeySet, float, float]] = {}  # uri -> (keys, fetched at, expires at)

    def register(self, metadata: Mapping[str, Any], admin: bool = False) -> tuple[Client, str | None]:
        """Validate an RFC 7591 registration body and store the client. Returns the client and, for
        confidential-symmetric clients, the secret in clear, which is never stored and never shown again."""
        if not isinstance(metadata, Mapping):
            raise RegistrationError("invalid_client_metadata", "the registration body must be a JSON object")
        try:
            data = ClientMetadataSchema(admin=admin).load(dict(metadata))
        except ValidationError as exc:
            messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
            error = "invalid_redirect_uri" if set(messages) == {"redirect_uris"} else "invalid_client_metadata"
            raise RegistrationError(error, _describe(messages), messages) from exc
        method = data["token_endpoint_auth_method"]
        grants = tuple(dict.fromkeys(data["grant_types"] or ["authorization_code"]))
        responses = ("code",) if "authorization_code" in grants else ()
        scope = data["scope"] if data["scope"] is not None else DEFAULT_APP_SCOPE
        secret: str | None = None
        if method in ("client_secret_basic", "client_secret_post"):
            secret = data["client_secret"] or secrets.token_urlsafe(32)  # 256 bits of entropy
        extra = {
            k: data[k] for k in ("client_uri", "logo_uri", "tos_uri", "policy_uri", "contacts", "software_id",
                                 "software_version") if data.get(k) is not None
        }
        client = Client(
            client_id=data["client_id"] or secrets.token_urlsafe(18), token_endpoint_auth_method=method,
            redirect_uris=tuple(dict.fromkeys(data.get("redirect_uris") or ())),
            scope=tuple(dict.fromkeys(scope.split())), grant_types=grants, response_types=responses,
            name=data["client_name"] or "", launch_uri=data["launch_uri"], jwks=data["jwks"],
            jwks_uri=data["jwks_uri"], secret_hash=hash_secret(secret) if secret else None, created=self.clock(),
            admin_registered=admin, metadata=extra,
        )
        try:
            self.coll.insert_one(client.to_doc())
        except DuplicateKeyError as exc:
            raise RegistrationError(
                "invalid_client_metadata", f"client_id {client.client_id!r} is already registered",
                {"client_id": ["already registered"]},
            ) from exc
        return client, secret

    def get(self, client_id: str) -> Client | None:
        """The client with this id, or None."""
        if not isinstance(client_id, str) or not client_id:
            return None
        doc = self.coll.find_one({"_id": client_id})
        return Client.from_doc(doc) if doc else None

    def delete(self, client_id: str) -> bool:
        """Remove a client (admin action); True when it existed."""
        return self.coll.delete_one({"_id": client_id}).deleted_count == 1

    @staticmethod
    def check_secret(client: Client, secret: str | None) -> bool:
        """The presented secret hashes to the stored hash; compared in constant time (`hmac.compare_digest`)."""
        if not client.secret_hash or not isinstance(secret, str) or not secret:
            return False
        return hmac.compare_digest(hash_secret(secret).encode(), client.secret_hash.encode())

    @staticmethod
    def check_redirect(client: Client, uri: str | None) -> bool:
        """RFC 6749 §3.1.2.3 / SMART: the redirect URI equals a registered one exactly (simple string comparison,
        RFC 3986 §6.2.1), no prefix or pattern matching."""
        return isinstance(uri, str) and uri in client.redirect_uris

    def client_keys(self, client: Client, refresh: bool = False) -> KeySet:
        """The client's public keys: the inline `jwks`, or the JWK Set at `jwks_uri`, cached no longer than the
        response's Cache-Control allows (SMART: "SHALL NOT cache longer than") nor than JWKS_TTL. `refresh` asks
        for a refetch (e.g. an unknown kid after the client rotated), at most once per JWKS_MIN_REFETCH seconds."""
        if client.jwks is not None:
            return import_client_jwks(client.jwks)
        if not client.jwks_uri:
            raise JWKSUnavailable(f"client {client.client_id!r} has no registered keys")
        uri = client.jwks_uri
        now = self.clock()
        with self._lock:
            cached = self._jwks_cache.get(uri)
        if cached and now < cached[2] and not (refresh and now - cached[1] >= self.JWKS_MIN_REFETCH):
            return cached[0]
        data, max_age = self.fetch_jwks(uri)
        try:
            keyset = import_client_jwks(data)
        except ValidationError as exc:
            raise JWKSUnavailable(f"{uri}: {exc.messages}") from exc
        ttl = self.JWKS_TTL if max_age is None else min(max_age, self.JWKS_TTL)
        with self._lock:
            self._jwks_cache[uri] = (keyset, now, now + ttl)
        return keyset


# -- scopes -----------------------------------------------------------------------------------------------------------


def allowed_scope(client: Client, requested: str | None) -> str | None:
    """The part of the requested scope this client's registration allows (`smart_auth.scopes.grant`: wildcards,
    v1/v2 letters and granular `?category=` constraints), or None when the request is malformed (authlib then
    answers `invalid_scope`). An empty request yields "": the authorization server decides whether scope is
    required."""
    if not requested or not requested.strip():
        return ""
    try:
        return grant(requested, " ".join(client.scope))
    except ScopeError:
        return None


# -- authlib adapter --------------------------------------------------------------------------------------------------


class AuthlibClient(ClientMixin):
    """A `Client` seen through authlib's `ClientMixin`, for `AuthorizationServer(query_client=...)`:
    `query_client = lambda cid: (c := registry.get(cid)) and AuthlibClient(c, registry)`."""

    def __init__(self, client: Client, registry: ClientRegistry) -> None:
        self.client = client
        self.registry = registry

    @property
    def client_id(self) -> str:
        return self.client.client_id

    def get_client_id(self) -> str:
        return self.client.client_id

    def get_default_redirect_uri(self) -> str | None:
        """RFC 6749 §3.1.2.3: without a redirect_uri parameter, only a client with exactly one registered URI
        has a default."""
        return self.client.redirect_uris[0] if len(self.client.redirect_uris) == 1 else None

    def get_allowed_scope(self, scope: str | None) -> str | None:
        return allowed_scope(self.client, scope)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return ClientRegistry.check_redirect(self.client, redirect_uri)

    def check_client_secret(self, client_secret: str) -> bool:
        return ClientRegistry.check_secret(self.client, client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        """A client authenticates with its registered method at every endpoint that authenticates clients
        (token, introspection, revocation: RFC 7662 §2.1 and RFC 7009 §2.1 reuse the token endpoint's)."""
        return method == self.client.token_endpoint_auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type in self.client.response_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.client.grant_types

    def keys(self, refresh: bool = False) -> KeySet:
        """The client's public keys (private_key_jwt)."""
        return self.registry.client_keys(self.client, refresh=refresh)


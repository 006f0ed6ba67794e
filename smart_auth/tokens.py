"""Token records: authorization codes, access tokens and refresh tokens (RFC 6749 §4.1, §5, §6, §10) as the SMART
authorization server stores them.

Every credential handed out is a random string (256 bits, `secrets.token_urlsafe(32)`) that is stored only as its
SHA-256: a copy of the database holds no usable code or token. Collections:

- `auth_codes`: `_id` = sha256(code); the grant it carries (client, user, scope, launch context), the redirect URI and
  PKCE challenge, `exp` (60 s after issue: "The authorization code MUST expire shortly after it is issued").
- `auth_tokens`: `_id` = sha256(token); `kind` access | refresh, `grant` (the grant family: every token issued from one
  authorization shares it), `client_id`, `user_id`, `scope`, `claims` (the `Access.to_claims()` dict of an access
  token), `context` (patient, encounter, banner, identity), `iat`, `exp`, `revoked`.
- `auth_consumed`: single-use markers, `_id` = "code:<hash>", "refresh:<hash>" or "launch:<hash>". Inserting the
  marker is using the credential; the unique insert is atomic on FerretDB and MongoDB alike (DESIGN.md "Atomicity
  without database transactions"), so of two concurrent uses exactly one wins.
- `auth_revoked_grants`: `_id` = grant id, one per revoked family.

Revoking a family inserts its marker first, then flags its tokens; a token is issued by inserting it and then checking
the marker (insert, then check). Either the flagging sees the new token or the new token sees the marker, so no token
issued concurrently with a revocation escapes it. Times are epoch seconds from the injected clock.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from authlib.oauth2.rfc6749 import AuthorizationCodeMixin, TokenMixin
from pymongo import ASCENDING
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

CODES = "auth_codes"
TOKENS = "auth_tokens"
CONSUMED = "auth_consumed"
REVOKED_GRANTS = "auth_revoked_grants"

ACCESS = "access"
REFRESH = "refresh"

CODE_TTL = 60.0  # seconds; RFC 6749 §4.1.2 recommends at most 10 minutes, SMART "~1 minute"
ACCESS_TOKEN_TTL = 3600.0  # SMART: expires_in "SHOULD" be at most 3600
BACKEND_TOKEN_TTL = 300.0  # SMART Backend Services: expires_in "SHOULD" be at most 300
OFFLINE_REFRESH_TTL = 90 * 86400.0  # ONC (g)(10): refresh tokens of patient apps valid for at least 3 months
ONLINE_REFRESH_TTL = 8 * 3600.0  # [project] online_access: a working day, then the user signs in again
REVOKED_GRANT_KEEP = OFFLINE_REFRESH_TTL + 86400.0  # a family marker outlives every token of the family

Clock = Callable[[], float]


def token_hash(secret: str) -> str:
    """SHA-256 (hex) of a code or token: the only form in which it is stored."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    """A fresh code, token or grant id: 32 random bytes, base64url (RFC 6749 §10.10: "infeasible to guess")."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Context:
    """What a grant says beyond scope: the launch context of SMART App Launch and the identity behind it."""

    patient: str | None = None  # Patient id in context (token response `patient`)
    encounter: str | None = None  # Encounter id in context (token response `encounter`)
    need_patient_banner: bool = True
    fhir_user: str | None = None  # "Patient/123": the user's FHIR resource
    subject: str | None = None  # `sub` of the id_token, when one was issued
    id_token: bool = False  # an id_token was issued with this grant (introspection then reports iss and sub)
    auth_time: float | None = None  # when the user authenticated (OIDC `auth_time`)
    amr: tuple[str, ...] = ()  # how: "pwd", "otp"

    def to_doc(self) -> dict[str, Any]:
        return {
            "patient": self.patient, "encounter": self.encounter, "need_patient_banner": self.need_patient_banner,
            "fhir_user": self.fhir_user, "subject": self.subject, "id_token": self.id_token,
            "auth_time": self.auth_time, "amr": list(self.amr),
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any] | None) -> Context:
        doc = doc or {}
        return cls(
            patient=doc.get("patient"), encounter=doc.get("encounter"),
            need_patient_banner=bool(doc.get("need_patient_banner", True)), fhir_user=doc.get("fhir_user"),
            subject=doc.get("subject"), id_token=bool(doc.get("id_token")), auth_time=doc.get("auth_time"),
            amr=tuple(doc.get("amr") or ()),
        )


@dataclass(frozen=True)
class CodeRecord(AuthorizationCodeMixin):
    """An issued authorization code (its hash) and everything the token request needs to honour it."""

    hash: str
    grant: str
    client_id: str
    user_id: str
    redirect_uri: str
    scope: str
    aud: str
    code_challenge: str
    code_challenge_method: str
    context: Context
    nonce: str | None
    iat: float
    exp: float

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def to_doc(self) -> dict[str, Any]:
        return {
            "_id": self.hash, "grant": self.grant, "client_id": self.client_id, "user_id": self.user_id,
            "redirect_uri": self.redirect_uri, "scope": self.scope, "aud": self.aud,
            "code_challenge": self.code_challenge, "code_challenge_method": self.code_challenge_method,
            "context": self.context.to_doc(), "nonce": self.nonce, "iat": self.iat, "exp": self.exp,
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> CodeRecord:
        return cls(
            hash=doc["_id"], grant=doc["grant"], client_id=doc["client_id"], user_id=doc["user_id"],
            redirect_uri=doc["redirect_uri"], scope=doc["scope"], aud=doc["aud"],
            code_challenge=doc["code_challenge"], code_challenge_method=doc["code_challenge_method"],
            context=Context.from_doc(doc.get("context")), nonce=doc.get("nonce"), iat=doc["iat"], exp=doc["exp"],
        )


@dataclass(frozen=True)
class TokenRecord(TokenMixin):
    """An issued access or refresh token (its hash), as authlib's `TokenMixin` for introspection and revocation."""

    hash: str
    kind: str
    grant: str
    client_id: str
    scope: str
    grant_type: str
    aud: str
    iat: float
    exp: float
    user_id: str | None = None
    claims: dict[str, Any] = field(default_factory=dict)
    context: Context = field(default_factory=Context)
    revoked: bool = False
    clock: Clock = field(default=time.time, compare=False, repr=False)

    def check_client(self, client: Any) -> bool:
        return client is not None and client.get_client_id() == self.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return max(0, int(self.exp - self.iat))

    def is_expired(self) -> bool:
        return self.clock() >= self.exp

    def is_revoked(self) -> bool:
        return self.revoked

    def get_user(self) -> str | None:
        return self.user_id

    def get_client(self) -> Any:  # authlib's signature; the client id is enough here
        return self.client_id

    def to_doc(self) -> dict[str, Any]:
        return {
            "_id": self.hash, "kind": self.kind, "grant": self.grant, "client_id": self.client_id,
            "scope": self.scope, "grant_type": self.grant_type, "aud": self.aud, "iat": self.iat, "exp": self.exp,
            "user_id": self.user_id, "claims": self.claims, "context": self.context.to_doc(), "revoked": self.revoked,
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any], clock: Clock = time.time) -> TokenRecord:
        return cls(
            hash=doc["_id"], kind=doc["kind"], grant=doc["grant"], client_id=doc["client_id"], scope=doc["scope"],
            grant_type=doc.get("grant_type") or "", aud=doc.get("aud") or "", iat=doc["iat"], exp=doc["exp"],
            user_id=doc.get("user_id"), claims=dict(doc.get("claims") or {}),
            context=Context.from_doc(doc.get("context")), revoked=bool(doc.get("revoked")), clock=clock,
        )


class TokenStore:
    """Codes, tokens, single-use markers and grant revocation over one database."""

    def __init__(self, db: Database, clock: Clock = time.time) -> None:
        self.db = db
        self.codes = db[CODES]
        self.tokens = db[TOKENS]
        self.consumed = db[CONSUMED]
        self.revoked_grants = db[REVOKED_GRANTS]
        self.clock = clock

    def ensure_indexes(self) -> None:
        """Secondary indexes: tokens by grant (revocation), by user (the management page), by expiry (purge)."""
        self.tokens.create_index([("grant", ASCENDING)])
        self.tokens.create_index([("user_id", ASCENDING)])
        self.tokens.create_index([("exp", ASCENDING)])
        self.codes.create_index([("exp", ASCENDING)])
        self.consumed.create_index([("exp", ASCENDING)])

    # -- single use ---------------------------------------------------------------------------------------------

    def consume(self, key: str, exp: float) -> bool:
        """Use a single-use credential: True for the one caller whose marker insert succeeds, False after that.
        The marker is kept until `exp`, after which the credential is refused as expired anyway."""
        try:
            self.consumed.insert_one({"_id": key, "exp": exp, "at": self.clock()})
            return True
        except DuplicateKeyError:
            return False

    def was_consumed(self, key: str) -> bool:
        return self.consumed.find_one({"_id": key}, {"_id": 1}) is not None

    # -- authorization codes ------------------------------------------------------------------------------------

    def save_code(self, *, grant: str, client_id: str, user_id: str, redirect_uri: str, scope: str, aud: str,
                  code_challenge: str, code_challenge_method: str, context: Context, nonce: str | None,
                  ttl: float = CODE_TTL) -> str:
        """Issue a code; returns it in clear (for the redirect) and stores only its hash."""
        code = new_secret()
        now = self.clock()
        record = CodeRecord(
            hash=token_hash(code), grant=grant, client_id=client_id, user_id=user_id, redirect_uri=redirect_uri,
            scope=scope, aud=aud, code_challenge=code_challenge, code_challenge_method=code_challenge_method,
            context=context, nonce=nonce, iat=now, exp=now + ttl,
        )
        self.codes.insert_one(record.to_doc())
        return code

    def find_code(self, code: str, client_id: str) -> CodeRecord | None:
        """The unexpired code issued to this client ("ensure that the authorization code was issued to the
        authenticated confidential client, or ... to client_id"), or None."""
        if not isinstance(code, str) or not code or len(code) > 512:
            return None
        doc = self.codes.find_one({"_id": token_hash(code)})
        if doc is None or doc["client_id"] != client_id or self.clock() >= doc["exp"]:
            return None
        return CodeRecord.from_doc(doc)

    def consume_code(self, record: CodeRecord) -> bool:
        """RFC 6749 §4.1.2: "The client MUST NOT use the authorization code more than once"; the first use wins."""
        return self.consume(f"code:{record.hash}", record.exp)

    # -- tokens -------------------------------------------------------------------------------------------------

    def issue(self, *, kind: str, grant: str, client_id: str, scope: str, grant_type: str, aud: str, ttl: float,
              user_id: str | None = None, claims: Mapping[str, Any] | None = None,
              context: Context | None = None) -> tuple[str, TokenRecord] | None:
        """Store a new token; returns (token in clear, record), or None when its grant was revoked meanwhile (the
        token is then flagged revoked and must not be handed out)."""
        secret = new_secret()
        now = self.clock()
        record = TokenRecord(
            hash=token_hash(secret), kind=kind, grant=grant, client_id=client_id, scope=scope,
            grant_type=grant_type, aud=aud, iat=now, exp=now + ttl, user_id=user_id, claims=dict(claims or {}),
            context=context or Context(), clock=self.clock,
        )
        self.tokens.insert_one(record.to_doc())
        # Insert, then check: a revocation that started before our insert has left its marker by now.
        if self.grant_revoked(grant):
            self.tokens.update_one({"_id": record.hash}, {"$set": {"revoked": True}})
            return None
        return secret, record

    def find(self, secret: str, kind: str | None = None) -> TokenRecord | None:
        """The record of a token (active or not), or None when unknown."""
        if not isinstance(secret, str) or not secret or len(secret) > 512:
            return None
        doc = self.tokens.find_one({"_id": token_hash(secret)})
        if doc is None or (kind is not None and doc["kind"] != kind):
            return None
        return TokenRecord.from_doc(doc, self.clock)

    def active(self, secret: str, kind: str = ACCESS) -> TokenRecord | None:
        """The record when the token is of `kind`, unexpired and not revoked; else None. One lookup by `_id`, no
        cache: a revocation takes effect on the next request."""
        record = self.find(secret, kind)
        if record is None or record.revoked or record.is_expired():
            return None
        return record

    def mark_revoked(self, record: TokenRecord) -> None:
        """Flag one token revoked (a rotated refresh token); its grant stays alive."""
        self.tokens.update_one({"_id": record.hash}, {"$set": {"revoked": True}})

    # -- grants -------------------------------------------------------------------------------------------------

    def grant_revoked(self, grant: str) -> bool:
        return self.revoked_grants.find_one({"_id": grant}, {"_id": 1}) is not None

    def revoke_grant(self, grant: str, reason: str) -> None:
        """Revoke every token of a grant family, now and issued later (RFC 7009 §2.1: revoking a token "SHOULD
        also invalidate" the other tokens of the same authorization grant)."""
        now = self.clock()
        try:
            self.revoked_grants.insert_one({"_id": grant, "reason": reason, "at": now, "exp": now + REVOKED_GRANT_KEEP})
        except DuplicateKeyError:
            pass
        self.tokens.update_many({"grant": grant, "revoked": False}, {"$set": {"revoked": True}})

    def live_grants(self, user_id: str) -> list[dict[str, Any]]:
        """The user's grants that still hold an unexpired, unrevoked token: one summary per grant, newest first."""
        now = self.clock()
        grants: dict[str, dict[str, Any]] = {}
        for doc in self.tokens.find({"user_id": user_id, "revoked": False, "exp": {"$gt": now}}):
            entry = grants.setdefault(doc["grant"], {
                "grant": doc["grant"], "client_id": doc["client_id"], "scope": doc["scope"], "iat": doc["iat"],
                "exp": doc["exp"], "offline": False, "patient": (doc.get("context") or {}).get("patient"),
            })
            entry["iat"] = min(entry["iat"], doc["iat"])
            entry["exp"] = max(entry["exp"], doc["exp"])
            if doc["kind"] == REFRESH:
                entry["scope"] = doc["scope"]
                entry["offline"] = True
        return sorted(grants.values(), key=lambda g: g["iat"], reverse=True)

    def grant_owner(self, grant: str) -> str | None:
        doc = self.tokens.find_one({"grant": grant}, {"user_id": 1})
        return doc.get("user_id") if doc else None

    # -- upkeep -------------------------------------------------------------------------------------------------

    def purge(self) -> dict[str, int]:
        """Delete what has expired (FerretDB has no TTL indexes). Tokens are kept a day past expiry so that
        introspection answers `active: false` for them rather than nothing at all; safe to run concurrently."""
        now = self.clock()
        return {
            "codes": self.codes.delete_many({"exp": {"$lt": now}}).deleted_count,
            "tokens": self.tokens.delete_many({"exp": {"$lt": now - 86400.0}}).deleted_count,
            "consumed": self.consumed.delete_many({"exp": {"$lt": now}}).deleted_count,
            "revoked_grants": self.revoked_grants.delete_many({"exp": {"$lt": now}}).deleted_count,
        }


__all__ = [
    "ACCESS", "ACCESS_TOKEN_TTL", "BACKEND_TOKEN_TTL", "CODE_TTL", "CODES", "CONSUMED", "OFFLINE_REFRESH_TTL",
    "ONLINE_REFRESH_TTL", "REFRESH", "REVOKED_GRANTS", "TOKENS", "CodeRecord", "Context", "TokenRecord", "TokenStore",
    "new_secret", "token_hash",
]

"""The server's own signing keys (RFC 7517 JWK, RFC 7515 JWS, RFC 7519 JWT): they sign id_tokens and every JWT the
server issues, and their public halves are served as the JWKS at `jwks_uri`.

Storage, collection `auth_keys`, two kinds of document:
- a key: `_id` = kid (the RFC 7638 thumbprint), `alg` (RS384 or ES384), the private `jwk`, `created`,
  `retire_after` (no new token is signed with it after this time) and `expires_publish_at` (it leaves the JWKS then);
- a slot: `_id` = f"active:{alg}:{period}" naming the kid that signs during that period.

The period is `"{epoch}.{generation}"`: `epoch` counts `rotation_interval`s since 1970, so keys rotate by themselves,
and `generation` counts manual rotations inside one epoch. The active key of an alg is the one named by the slot
with the highest generation of the current epoch. A slot is claimed by a unique insert (the only atomic primitive of
FerretDB, see DESIGN.md "Atomicity"), so any number of processes racing to create or rotate a key agree on one.

Publication rule: a key stays in the JWKS until every token it signed has expired, i.e. until
`retire_after + max_token_lifetime + margin` (margin = cache_ttl + clock skew). `sign` enforces the other half of
that bargain: it refuses claims whose `exp` is missing or further than `max_token_lifetime` away.

Times are epoch seconds (floats) from the injected `clock`, so tests can move time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, RSAKey
from pymongo import DESCENDING
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

KEYS = "auth_keys"
# RS256 signs id_tokens (OpenID Connect Core 1.0 §15.1: RS256 MUST be supported; SMART 2.2 id_tokens);
# RS384 and ES384 sign everything else.
ALGORITHMS: tuple[str, ...] = ("RS384", "ES384", "RS256")
DEFAULT_ALG = "RS384"

Clock = Callable[[], float]
JWTKey = RSAKey | ECKey


class TokenVerificationError(Exception):
    """A JWT this server is asked to trust is not one it issued, or is no longer valid."""


@dataclass(frozen=True)
class SigningKey:
    """One server key as loaded from `auth_keys`."""

    kid: str
    alg: str
    key: JWTKey
    created: float
    retire_after: float
    expires_publish_at: float


def generate_key(alg: str, rsa_bits: int = 2048) -> JWTKey:
    """A fresh private key for `alg` with `kid` = its RFC 7638 thumbprint, `use` = sig."""
    params: dict[str, Any] = {"alg": alg, "use": "sig"}
    if alg in ("RS384", "RS256"):
        return RSAKey.generate_key(rsa_bits, parameters=params, private=True, auto_kid=True)
    if alg == "ES384":
        # RFC 7518 §3.4: ES384 is ECDSA using P-384 and SHA-384.
        return ECKey.generate_key("P-384", parameters=params, private=True, auto_kid=True)
    raise ValueError(f"unsupported signing algorithm {alg!r}; use one of {', '.join(ALGORITHMS)}")


def _load(doc: Mapping[str, Any]) -> SigningKey:
    key_cls = RSAKey if doc["alg"].startswith("RS") else ECKey
    return SigningKey(
        kid=doc["_id"], alg=doc["alg"], key=key_cls.import_key(dict(doc["jwk"])), created=doc["created"],
        retire_after=doc["retire_after"], expires_publish_at=doc["expires_publish_at"],
    )


class KeyRing:
    """The server's signing keys, shared by every process through the database."""

    def __init__(
        self,
        db: Database,
        clock: Clock = time.time,
        *,
        rotation_interval: float = 30 * 86400.0,
        max_token_lifetime: float = 3600.0,
        clock_skew: float = 60.0,
        cache_ttl: float = 10.0,
        rsa_bits: int = 2048,
    ) -> None:
        if rotation_interval <= 0 or max_token_lifetime <= 0:
            raise ValueError("rotation_interval and max_token_lifetime must be positive")
        self.coll = db[KEYS]
        self.clock = clock
        self.rotation_interval = float(rotation_interval)
        self.max_token_lifetime = float(max_token_lifetime)
        self.clock_skew = float(clock_skew)
        self.cache_ttl = float(cache_ttl)
        self.rsa_bits = rsa_bits
        self._lock = threading.Lock()
        # In-process caches only (DESIGN.md "Scale": nothing another process needs lives here).
        self._active: dict[str, tuple[int, float, SigningKey]] = {}  # alg -> (epoch, fetched at, key)
        self._by_kid: dict[str, tuple[float, SigningKey]] = {}  # kid -> (fetched at, key)

    # -- time ---------------------------------------------------------------------------------------------------------

    def epoch(self, now: float) -> int:
        """Which rotation interval `now` falls in."""
        return int(now // self.rotation_interval)

    @property
    def publish_margin(self) -> float:
        """How long after retirement a key is still published: the longest token lifetime, plus the time another
        process may keep signing with a cached key, plus clock skew between processes."""
        return self.max_token_lifetime + self.cache_ttl + self.clock_skew

    # -- active key ---------------------------------------------------------------------------------------------------

    def current(self, alg: str = DEFAULT_ALG) -> SigningKey:
        """The active key for `alg`, creating it when the current period has none (race-safe: one slot insert wins)."""
        self._check_alg(alg)
        now = self.clock()
        epoch = self.epoch(now)
        with self._lock:
            cached = self._active.get(alg)
        if cached and cached[0] == epoch and now - cached[1] < self.cache_ttl and now < cached[2].retire_after:
            return cached[2]
        top = self._top_slot(alg, epoch)
        key = self._key_of_slot(top) if top else self._claim_slot(alg, epoch, 0, now)
        with self._lock:
            self._active[alg] = (epoch, now, key)
        return key

    def rotate(self, alg: str = DEFAULT_ALG) -> SigningKey:
        """Make a new active key for `alg` now; the previous one retires now and stays published until
        `now + publish_margin`. Concurrent rotations coalesce: whoever loses the slot insert adopts the winner's key."""
        self._check_alg(alg)
        now = self.clock()
        epoch = self.epoch(now)
        top = self._top_slot(alg, epoch)
        generation = top["generation"] + 1 if top else 0
        key = self._claim_slot(alg, epoch, generation, now, previous=top)
        with self._lock:
            self._active[alg] = (epoch, now, key)
        return key

    def _check_alg(self, alg: str) -> None:
        if alg not in ALGORITHMS:
            raise ValueError(f"unsupported signing algorithm {alg!r}; use one of {', '.join(ALGORITHMS)}")

    def _top_slot(self, alg: str, epoch: int) -> dict[str, Any] | None:
        return self.coll.find_one({"kind": "slot", "alg": alg, "epoch": epoch}, sort=[("generation", DESCENDING)])

    def _key_of_slot(self, slot: Mapping[str, Any]) -> SigningKey:
        doc = self.coll.find_one({"_id": slot["kid"]})
        if doc is None:  # the key document is inserted before its slot, so this means someone deleted it by hand
            raise RuntimeError(f"signing key {slot['kid']!r} named by {slot['_id']!r} is missing")
        return _load(doc)

    def _claim_slot(
        self, alg: str, epoch: int, generation: int, now: float, previous: Mapping[str, Any] | None = None,
    ) -> SigningKey:
        """Insert a new key, then race for slot `active:{alg}:{epoch}.{generation}` with a unique insert. The loser
        deletes its unused key and returns the winner's; the winner retires the previous key (single writer)."""
        jwk = generate_key(alg, self.rsa_bits)
        retire_after = (epoch + 1) * self.rotation_interval  # automatic rotation at the end of the epoch
        doc = {
            "_id": jwk.kid, "kind": "key", "alg": alg, "jwk": jwk.as_dict(private=True), "created": now,
            "retire_after": retire_after, "expires_publish_at": retire_after + self.publish_margin,
        }
        self.coll.insert_one(doc)
        slot_id = f"active:{alg}:{epoch}.{generation}"
        try:
            self.coll.insert_one({
                "_id": slot_id, "kind": "slot", "alg": alg, "epoch": epoch, "generation": generation,
                "kid": jwk.kid, "created": now,
            })
        except DuplicateKeyError:
            self.coll.delete_one({"_id": jwk.kid})
            winner = self.coll.find_one({"_id": slot_id})
            if winner is None:  # slots are never deleted inside their epoch; be loud if that changes
                raise RuntimeError(f"slot {slot_id!r} vanished while being claimed") from None
            return self._key_of_slot(winner)
        if previous is not None:
            self._retire(previous["kid"], now)
        return _load(doc)

    def _retire(self, kid: str, now: float) -> None:
        """Stop signing with `kid` at `now`; publish it until every token it may have signed has expired. Only the
        winner of the next slot calls this, so there is one writer; a crash before it leaves the key published
        until the end of its epoch, which errs on the safe side."""
        old = self.coll.find_one({"_id": kid})
        if old is None or old["retire_after"] <= now:
            return
        self.coll.update_one(
            {"_id": kid}, {"$set": {"retire_after": now, "expires_publish_at": now + self.publish_margin}},
        )
        with self._lock:
            self._by_kid.pop(kid, None)

    # -- publication --------------------------------------------------------------------------------------------------

    def published(self) -> list[SigningKey]:
        """Every key still inside its publication window, newest first."""
        now = self.clock()
        docs = self.coll.find({"kind": "key", "expires_publish_at": {"$gt": now}})
        return sorted((_load(d) for d in docs), key=lambda k: k.created, reverse=True)

    def jwks(self) -> dict[str, Any]:
        """The JWK Set served at `jwks_uri`: public keys only (RFC 7517 §5)."""
        return KeySet([k.key for k in self.published()]).as_dict(private=False)

    def purge(self) -> int:
        """Delete keys past their publication window and slots of past epochs (keeping the previous epoch's, so a
        process whose clock lags does not recreate it). Safe to run from several processes at once."""
        now = self.clock()
        gone = self.coll.delete_many({"kind": "key", "expires_publish_at": {"$lte": now}}).deleted_count
        gone += self.coll.delete_many({"kind": "slot", "epoch": {"$lt": self.epoch(now) - 1}}).deleted_count
        return gone

    # -- JWTs ---------------------------------------------------------------------------------------------------------

    def sign(self, claims: Mapping[str, Any], alg: str = DEFAULT_ALG, *, typ: str = "JWT") -> str:
        """A compact JWS over `claims` with the active key, header `kid` naming it (RFC 7515 §4.1.4).

        Refuses claims without a numeric `exp` or with `exp` beyond `max_token_lifetime`: the JWKS keeps a retired
        key only that long, so a longer-lived token would outlive the key that verifies it."""
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise ValueError("claims need a numeric 'exp' (RFC 7519 §4.1.4)")
        if exp > self.clock() + self.max_token_lifetime:
            raise ValueError(f"'exp' is more than max_token_lifetime ({self.max_token_lifetime:.0f} s) away")
        key = self.current(alg)
        header = {"alg": alg, "kid": key.kid, "typ": typ}
        return jwt.encode(header, dict(claims), key.key, algorithms=[alg])

    def key_by_kid(self, kid: str) -> SigningKey | None:
        """A published key by kid (cached for `cache_ttl`), or None."""
        now = self.clock()
        with self._lock:
            cached = self._by_kid.get(kid)
        if cached and now - cached[0] < self.cache_ttl:
            key = cached[1]
        else:
            doc = self.coll.find_one({"_id": kid, "kind": "key"})
            if doc is None:
                return None
            key = _load(doc)
            with self._lock:
                self._by_kid[kid] = (now, key)
        return key if now < key.expires_publish_at else None

    def verify(
        self, token: str, *, issuer: str | None = None, audience: str | None = None, leeway: float = 0.0,
    ) -> dict[str, Any]:
        """The claims of a JWT this server signed: the `kid` must name a published key of ours, the header `alg`
        must be that key's alg (never `none` or HS*), the signature must verify, and `exp` must not have passed
        (RFC 7519 §4.1.4); `nbf`, `iss` and `aud` are checked when present or asked for."""
        try:
            header = jws.extract_compact(token.encode()).headers()
        except (JoseError, ValueError, UnicodeError) as exc:
            raise TokenVerificationError("malformed JWT") from exc
        kid, alg = header.get("kid"), header.get("alg")
        if alg not in ALGORITHMS:
            raise TokenVerificationError(f"algorithm {alg!r} is not accepted")
        if not isinstance(kid, str):
            raise TokenVerificationError("JWT header has no 'kid'")
        key = self.key_by_kid(kid)
        if key is None:
            raise TokenVerificationError(f"unknown or unpublished key {kid!r}")
        if key.alg != alg:
            raise TokenVerificationError(f"key {kid!r} is for {key.alg}, not {alg}")
        try:
            claims = jwt.decode(token, key.key, algorithms=[key.alg]).claims
        except JoseError as exc:
            raise TokenVerificationError(f"bad signature or payload: {exc.error}") from exc
        now = self.clock()
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise TokenVerificationError("JWT has no numeric 'exp'")
        if now >= exp + leeway:
            raise TokenVerificationError("JWT has expired")
        nbf = claims.get("nbf")
        if isinstance(nbf, int | float) and now + leeway < nbf:
            raise TokenVerificationError("JWT is not valid yet")
        if issuer is not None and claims.get("iss") != issuer:
            raise TokenVerificationError("JWT 'iss' does not match")
        if audience is not None:
            aud = claims.get("aud")
            if not (aud == audience or (isinstance(aud, list) and audience in aud)):
                raise TokenVerificationError("JWT 'aud' does not match")
        return claims

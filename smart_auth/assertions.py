"""Client authentication by signed JWT assertion: RFC 7523 §2.2 and §3 as profiled by SMART App Launch 2.2
`client-confidential-asymmetric` and SMART Backend Services (`private_key_jwt`).

The token request carries `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer` and
`client_assertion=<JWT>`. Every check is done here with joserfc, not by authlib's `JWTBearerClientAssertion` (which
refuses RS384/ES384 by default, does not fetch `jwks_uri` and has no replay store; see
reference/dependencies.md §3):

- header `alg` in the accepted list: RS384 and ES384 (SMART: servers SHALL validate at least one, clients SHALL
  support both). [project] RS256/ES256 are off by default and can be enabled per verifier; `none` and HS* never are
  (a shared-secret MAC is not an asymmetric client credential);
- `iss` == `sub` == client_id of a registered `private_key_jwt` client (and == the `client_id` form parameter when
  one is sent);
- `aud` == the token endpoint URL; `exp` present, not past, at most 5 minutes ahead (small leeway for skew);
- `jti` present and never seen before for this client: a unique insert into `auth_used_jti`
  (`_id` = f"{client_id}:{jti}"), the one atomic primitive of the store, so concurrent replays have one winner;
- key selection: `jku`, when present, must equal the client's registered `jwks_uri` (else refused; a client with
  inline keys has no JWKS URL, so any `jku` is refused); `kid` selects the key, which must be unique in the set and
  of the `kty`/curve the `alg` needs; without `kid` every key fitting the `alg` is tried [project, per brief].
  `jwk`, `x5u` and `x5c` header members are never used as keys.

Every failure is `invalid_client` (RFC 6749 §5.2), HTTP 400 (the client did not use the Authorization header).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, RSAKey
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from smart_auth.clients import Client, ClientRegistry, JWKSUnavailable

USED_JTI = "auth_used_jti"
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
DEFAULT_ALGORITHMS: tuple[str, ...] = ("RS384", "ES384")
OPTIONAL_ALGORITHMS: tuple[str, ...] = ("RS256", "ES256")
MAX_ASSERTION_LIFETIME = 300.0  # SMART: "exp ... no more than five minutes in the future"
DEFAULT_LEEWAY = 30.0
MAX_JTI_LENGTH = 255

# RFC 7518 §3.4: the curve each ECDSA algorithm uses.
_EC_CURVE = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}

Clock = Callable[[], float]


class ClientAssertionError(Exception):
    """A client assertion was refused: OAuth error `invalid_client` (RFC 6749 §5.2) with a description."""

    error = "invalid_client"

    def __init__(self, description: str, status_code: int = 400) -> None:
        super().__init__(description)
        self.description = description
        self.status_code = status_code

    def to_dict(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


def _key_fits(key: Any, alg: str) -> bool:
    """SMART: "kty consistent with alg" (RS* needs an RSA key, ES* an EC key on the algorithm's curve)."""
    if alg.startswith("RS"):
        return isinstance(key, RSAKey)
    if alg.startswith("ES"):
        return isinstance(key, ECKey) and key.get("crv") == _EC_CURVE.get(alg)
    return False


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class ClientAssertionVerifier:
    """Verifies `private_key_jwt` client assertions for one token endpoint."""

    def __init__(
        self,
        db: Database,
        clients: ClientRegistry,
        token_endpoint: str,
        clock: Clock = time.time,
        *,
        algorithms: Collection[str] = DEFAULT_ALGORITHMS,
        leeway: float = DEFAULT_LEEWAY,
        max_lifetime: float = MAX_ASSERTION_LIFETIME,
    ) -> None:
        bad = set(algorithms) - set(DEFAULT_ALGORITHMS) - set(OPTIONAL_ALGORITHMS)
        if bad or not algorithms:
            raise ValueError(f"unsupported assertion algorithms: {sorted(bad) or 'none given'}")
        self.used = db[USED_JTI]
        self.clients = clients
        self.token_endpoint = token_endpoint
        self.clock = clock
        self.algorithms = tuple(algorithms)
        self.leeway = float(leeway)
        self.max_lifetime = float(max_lifetime)

    def verify(
        self,
        assertion: str | None,
        assertion_type: str | None = CLIENT_ASSERTION_TYPE,
        client_id: str | None = None,
    ) -> Client:
        """The authenticated client, or ClientAssertionError. The `jti` is recorded only after every other check
        passed, so a forged or malformed assertion cannot burn a client's nonces."""
        if assertion_type != CLIENT_ASSERTION_TYPE:
            raise ClientAssertionError(f"client_assertion_type must be {CLIENT_ASSERTION_TYPE}")
        if not isinstance(assertion, str) or not assertion:
            raise ClientAssertionError("client_assertion is missing")
        header, unverified = self._peek(assertion)
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise ClientAssertionError(f"alg {alg!r} is not accepted; use one of {', '.join(self.algorithms)}")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.upper() != "JWT"):
            raise ClientAssertionError("typ must be JWT")

        # RFC 7523 §3 items 1 and 2: iss and sub are both the client_id.
        iss, sub = unverified.get("iss"), unverified.get("sub")
        if not isinstance(iss, str) or not iss:
            raise ClientAssertionError("the assertion has no 'iss'")
        if sub != iss:
            raise ClientAssertionError("'sub' must equal 'iss' (the client_id)")
        if client_id is not None and client_id != iss:
            raise ClientAssertionError("client_id does not match the assertion's 'iss'")
        client = self.clients.get(iss)
        if client is None:
            raise ClientAssertionError("unknown client")
        if client.token_endpoint_auth_method != "private_key_jwt":
            raise ClientAssertionError("this client is not registered for private_key_jwt")

        key = self._select_key(client, header, alg, assertion)
        try:
            claims = jwt.decode(assertion, key, algorithms=[alg]).claims
        except JoseError as exc:
            raise ClientAssertionError(f"signature verification failed ({exc.error})") from exc
        self._check_claims(claims, client)
        self._claim_jti(client, claims["jti"], claims["exp"])
        return client

    # -- steps ----------------------------------------------------------------------------------------------------

    @staticmethod
    def _peek(assertion: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Header and claims before the signature is checked: used only to find the client and key."""
        try:
            obj = jws.extract_compact(assertion.encode())
            claims = json.loads(obj.payload) if obj.payload is not None else None
        except (JoseError, ValueError, UnicodeError) as exc:
            raise ClientAssertionError("client_assertion is not a compact JWS") from exc
        if not isinstance(claims, dict):
            raise ClientAssertionError("client_assertion payload is not a JSON object")
        return dict(obj.headers()), claims

    def _select_key(self, client: Client, header: Mapping[str, Any], alg: str, assertion: str) -> Any:
        """SMART: if `jku` is present it must equal the registered JWKS URL; select exactly one key with the `kid`
        and a `kty` consistent with `alg`; zero or several is a failure. Without `kid`, the one key that verifies
        among those that fit `alg`."""
        jku = header.get("jku")
        if jku is not None and (client.jwks_uri is None or jku != client.jwks_uri):
            raise ClientAssertionError("jku does not match the client's registered jwks_uri")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise ClientAssertionError("kid must be a string")
        keyset = self._keys(client)
        candidates = self._candidates(keyset, kid, alg)
        if kid is not None and not candidates and client.jwks_uri:
            # The client may have rotated its keys: refetch once (rate-limited by the registry).
            candidates = self._candidates(self._keys(client, refresh=True), kid, alg)
        if not candidates:
            raise ClientAssertionError(
                f"no key with kid {kid!r} fits {alg}" if kid is not None else f"no registered key fits {alg}"
            )
        if kid is not None:
            if len(candidates) > 1:
                raise ClientAssertionError(f"kid {kid!r} names more than one key")
            return candidates[0]
        for key in candidates:
            try:
                jws.deserialize_compact(assertion, key, algorithms=[alg])
                return key
            except JoseError:
                continue
        raise ClientAssertionError("signature verification failed (no registered key verifies it)")

    def _keys(self, client: Client, refresh: bool = False) -> KeySet:
        try:
            return self.clients.client_keys(client, refresh=refresh)
        except (JWKSUnavailable, ValueError) as exc:
            raise ClientAssertionError(f"the client's keys are unavailable: {exc}") from exc

    @staticmethod
    def _candidates(keyset: KeySet, kid: str | None, alg: str) -> list[Any]:
        return [k for k in keyset.keys if (kid is None or k.kid == kid) and _key_fits(k, alg)]

    def _check_claims(self, claims: Mapping[str, Any], client: Client) -> None:
        """RFC 7523 §3 items 3-7 with SMART's limits, against the verified claims."""
        if claims.get("iss") != client.client_id or claims.get("sub") != client.client_id:
            raise ClientAssertionError("'iss' and 'sub' must both be the client_id")
        # §3 item 3: aud identifies the authorization server; SMART: it is the token endpoint URL.
        aud = claims.get("aud")
        if not (aud == self.token_endpoint or (isinstance(aud, list) and self.token_endpoint in aud)):
            raise ClientAssertionError(f"'aud' must be the token endpoint {self.token_endpoint}")
        now = self.clock()
        exp = claims.get("exp")
        # §3 item 4: exp is required and the JWT is refused once it has passed.
        if not _number(exp):
            raise ClientAssertionError("'exp' is required and must be a number")
        if exp <= now - self.leeway:
            raise ClientAssertionError("the assertion has expired")
        # SMART: exp no more than five minutes in the future.
        if exp > now + self.max_lifetime + self.leeway:
            raise ClientAssertionError(f"'exp' is more than {self.max_lifetime:.0f} seconds in the future")
        # §3 item 5 and 6: nbf and iat, when present, are not in the future.
        nbf, iat = claims.get("nbf"), claims.get("iat")
        if nbf is not None and (not _number(nbf) or nbf > now + self.leeway):
            raise ClientAssertionError("the assertion is not valid yet ('nbf')")
        if iat is not None and (not _number(iat) or iat > now + self.leeway):
            raise ClientAssertionError("'iat' is in the future")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise ClientAssertionError("'jti' is required")
        if len(jti) > MAX_JTI_LENGTH:
            raise ClientAssertionError(f"'jti' is longer than {MAX_JTI_LENGTH} characters")

    def _claim_jti(self, client: Client, jti: str, exp: float) -> None:
        """RFC 7523 §3 item 7 / SMART: refuse a jti already used by this client within the assertion lifetime.
        The record keeps `exp` so `purge` can drop it once the assertion would be refused as expired anyway."""
        try:
            self.used.insert_one({
                "_id": f"{client.client_id}:{jti}", "client_id": client.client_id, "exp": float(exp),
                "used_at": self.clock(),
            })
        except DuplicateKeyError as exc:
            raise ClientAssertionError("the assertion's jti has already been used") from exc

    def purge(self) -> int:
        """Delete used-jti records whose assertions have expired beyond the leeway (no TTL indexes on FerretDB).
        Safe to run from several processes at once."""
        cutoff = self.clock() - self.leeway
        return self.used.delete_many({"exp": {"$lt": cutoff}}).deleted_count


class AuthlibPrivateKeyJWT:
    """authlib client-auth method for `server.register_client_auth_method("private_key_jwt", ...)`: calls
    `verifier` and returns `query_client(client_id)` (the caller's ClientMixin), or None when the request carries
    no assertion so that authlib tries its other methods."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self, verifier: ClientAssertionVerifier) -> None:
        self.verifier = verifier

    def __call__(self, query_client: Callable[[str], Any], request: Any) -> Any:
        from authlib.oauth2.rfc6749.errors import InvalidClientError

        form = request.form
        assertion_type, assertion = form.get("client_assertion_type"), form.get("client_assertion")
        if assertion_type is None and assertion is None:
            return None
        try:
            client = self.verifier.verify(assertion, assertion_type, form.get("client_id"))
        except ClientAssertionError as exc:
            raise InvalidClientError(description=exc.description, status_code=exc.status_code) from exc
        return query_client(client.client_id)

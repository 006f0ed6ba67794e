"""Server signing keys, OAuth clients, private_key_jwt client assertions and SMART discovery, against a real FerretDB.

Races are real: several threads (each pair of KeyRings on its own connection, like two processes) hit the database at
once, and the unique insert must leave exactly one winner.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, OctKey, RSAKey
from pymongo import MongoClient
from pymongo.database import Database

from smart_auth import keys as keys_module
from smart_auth.assertions import (
    CLIENT_ASSERTION_TYPE,
    USED_JTI,
    AuthlibPrivateKeyJWT,
    ClientAssertionError,
    ClientAssertionVerifier,
)
from smart_auth.clients import CLIENTS, AuthlibClient, ClientRegistry, RegistrationError
from smart_auth.discovery import CAPABILITIES, capability_security_extension, smart_configuration
from smart_auth.keys import KEYS, KeyRing, TokenVerificationError
from smart_auth.scopes import parse_scopes
from tests.servers import start_ferretdb

TOKEN_URL = "https://ehr.example/auth/token"
T0 = 1_800_000_000.0


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture(scope="module")
def ferret(tmp_path_factory):
    db = start_ferretdb(tmp_path_factory.mktemp("keys_clients") / "db")
    yield db
    db.stop()


@pytest.fixture
def mongo(ferret) -> Iterator[MongoClient]:
    client: MongoClient = MongoClient(ferret.uri, serverSelectionTimeoutMS=5000)
    yield client
    client.close()


@pytest.fixture
def db(mongo) -> Database:
    """A fresh database per test."""
    return mongo[f"t_{uuid.uuid4().hex[:12]}"]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def run_at_once(n: int, fn) -> list[Any]:
    """Run fn(i) in n threads released together; results (or the exceptions raised) in thread order."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def worker(i: int) -> None:
        barrier.wait()
        try:
            results[i] = fn(i)
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


# -- keys -------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["ES384", "RS384"])
def test_two_keyrings_racing_agree_on_one_key(ferret, db, alg, monkeypatch):
    generated: list[str] = []
    original = keys_module.generate_key

    def counting_generate(alg: str, rsa_bits: int = 2048):
        key = original(alg, rsa_bits)
        generated.append(key.kid)
        return key

    monkeypatch.setattr(keys_module, "generate_key", counting_generate)
    other: MongoClient = MongoClient(ferret.uri)  # a second connection, as a second process would have
    try:
        rings = [KeyRing(db), KeyRing(other[db.name])]
        results = run_at_once(16, lambda i: rings[i % 2].current(alg).kid)
        assert not [r for r in results if isinstance(r, Exception)], results
        assert len(set(results)) == 1
        assert len(generated) > 1, "no race happened: only one thread tried to create the key"
        # The losers deleted their keys: one key, one slot.
        assert db[KEYS].count_documents({"kind": "key", "alg": alg}) == 1
        assert db[KEYS].count_documents({"kind": "slot", "alg": alg}) == 1
        assert [k["kid"] for k in rings[1].jwks()["keys"]] == [results[0]]
    finally:
        other.close()


def test_rotation_keeps_old_key_published_until_its_tokens_expire(db, clock):
    ring = KeyRing(db, clock, rotation_interval=10 * 86400, max_token_lifetime=600, clock_skew=5, cache_ttl=0)
    old = ring.current("ES384")
    old_token = ring.sign({"sub": "a", "exp": clock() + 600}, "ES384")
    clock.advance(100)
    rotated_at = clock()
    new = ring.rotate("ES384")
    assert new.kid != old.kid
    assert ring.current("ES384").kid == new.kid
    assert jwt.decode(ring.sign({"exp": clock() + 60}, "ES384"), new.key, algorithms=["ES384"]).header["kid"] == new.kid

    # The old key is published until rotation + max lifetime + margin, and its tokens still verify meanwhile.
    kids = {k["kid"] for k in ring.jwks()["keys"]}
    assert kids == {old.kid, new.kid}
    assert ring.verify(old_token)["sub"] == "a"
    end = rotated_at + ring.publish_margin
    clock.t = end - 1
    assert old.kid in {k["kid"] for k in ring.jwks()["keys"]}
    clock.t = end + 1
    assert {k["kid"] for k in ring.jwks()["keys"]} == {new.kid}
    with pytest.raises(TokenVerificationError):
        ring.verify(old_token)
    assert ring.purge() >= 1
    assert db[KEYS].find_one({"_id": old.kid}) is None


def test_keys_rotate_by_themselves_at_the_end_of_an_epoch(db, clock):
    ring = KeyRing(db, clock, rotation_interval=86400, max_token_lifetime=300, clock_skew=0, cache_ttl=0)
    first = ring.current("RS384")
    epoch_end = (ring.epoch(clock()) + 1) * 86400
    clock.t = epoch_end + 1
    second = ring.current("RS384")
    assert second.kid != first.kid
    assert {k["kid"] for k in ring.jwks()["keys"]} == {first.kid, second.kid}
    clock.t = epoch_end + ring.publish_margin + 1
    assert {k["kid"] for k in ring.jwks()["keys"]} == {second.kid}


def test_another_process_sees_a_rotation(db, clock):
    a = KeyRing(db, clock, cache_ttl=0)
    b = KeyRing(db, clock, cache_ttl=0)
    first = a.current("ES384")
    assert b.current("ES384").kid == first.kid
    rotated = b.rotate("ES384")
    assert a.current("ES384").kid == rotated.kid


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_sign_and_verify(db, clock, alg):
    ring = KeyRing(db, clock, max_token_lifetime=3600)
    claims = {"iss": "https://ehr.example/auth", "sub": "u1", "aud": "app", "exp": int(clock()) + 300, "n": 1}
    token = ring.sign(claims, alg)
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header["alg"] == alg and header["kid"] == ring.current(alg).kid and header["typ"] == "JWT"
    assert ring.verify(token, issuer="https://ehr.example/auth", audience="app") == claims

    # The published JWKS verifies it too (what a relying party does), and holds no private material.
    published = ring.jwks()
    assert all("d" not in k and "p" not in k for k in published["keys"])
    assert jwt.decode(token, KeySet.import_key_set(published), algorithms=[alg]).claims["sub"] == "u1"

    with pytest.raises(TokenVerificationError):
        ring.verify(token, audience="someone-else")
    head, body, sig = token.split(".")
    forged = base64.urlsafe_b64encode(json.dumps({**claims, "sub": "admin"}).encode()).rstrip(b"=").decode()
    with pytest.raises(TokenVerificationError):
        ring.verify(f"{head}.{forged}.{sig}")
    clock.advance(301)
    with pytest.raises(TokenVerificationError, match="expired"):
        ring.verify(token)


def test_sign_refuses_tokens_that_would_outlive_the_key(db, clock):
    ring = KeyRing(db, clock, max_token_lifetime=600)
    with pytest.raises(ValueError, match="exp"):
        ring.sign({"sub": "x"})
    with pytest.raises(ValueError, match="max_token_lifetime"):
        ring.sign({"sub": "x", "exp": clock() + 601})
    with pytest.raises(ValueError, match="unsupported"):
        ring.sign({"exp": clock() + 60}, "HS256")


def test_verify_refuses_none_and_foreign_keys(db, clock):
    ring = KeyRing(db, clock)
    kid = ring.current("RS384").kid
    none = _unsigned({"alg": "none", "kid": kid}, {"sub": "x", "exp": clock() + 60})
    with pytest.raises(TokenVerificationError, match="not accepted"):
        ring.verify(none)
    stranger = RSAKey.generate_key(2048, auto_kid=True)
    foreign = jwt.encode({"alg": "RS384", "kid": stranger.kid}, {"exp": clock() + 60}, stranger, algorithms=["RS384"])
    with pytest.raises(TokenVerificationError, match="unknown"):
        ring.verify(foreign)
    # A stranger's key under our kid: the signature does not verify.
    spoof = jwt.encode({"alg": "RS384", "kid": kid}, {"exp": clock() + 60}, stranger, algorithms=["RS384"])
    with pytest.raises(TokenVerificationError, match="signature"):
        ring.verify(spoof)


# -- clients ----------------------------------------------------------------------------------------------------------


def _public_jwks(*keys) -> dict[str, Any]:
    return KeySet(list(keys)).as_dict(private=False)


APP = {"redirect_uris": ["https://app.example/cb"], "client_name": "App", "token_endpoint_auth_method": "none"}


@pytest.mark.parametrize(
    ("body", "admin", "error", "field"),
    [
        ({**APP, "redirect_uris": ["http://app.example/cb"]}, False, "invalid_redirect_uri", "redirect_uris"),
        ({**APP, "redirect_uris": ["https://app.example/cb#frag"]}, False, "invalid_redirect_uri", "redirect_uris"),
        ({**APP, "redirect_uris": ["/cb"]}, False, "invalid_redirect_uri", "redirect_uris"),
        ({**APP, "redirect_uris": []}, False, "invalid_redirect_uri", "redirect_uris"),
        ({**APP, "token_endpoint_auth_method": "client_secret_jwt"}, False, "invalid_client_metadata",
         "token_endpoint_auth_method"),
        ({**APP, "token_endpoint_auth_method": "private_key_jwt"}, False, "invalid_client_metadata", "jwks_uri"),
        ({**APP, "grant_types": ["password"]}, False, "invalid_client_metadata", "grant_types"),
        ({**APP, "grant_types": ["refresh_token"]}, False, "invalid_client_metadata", "grant_types"),
        ({**APP, "response_types": ["token"]}, False, "invalid_client_metadata", "response_types"),
        ({**APP, "scope": 'patient/*.rs "quoted"'}, False, "invalid_client_metadata", "scope"),
        ({**APP, "scope": ["openid"]}, False, "invalid_client_metadata", "scope"),
        ({**APP, "scope": "openid system/*.rs"}, False, "invalid_client_metadata", "scope"),
        ({**APP, "scope": "openid patient/*.dus"}, False, "invalid_client_metadata", "scope"),
        ({"grant_types": ["client_credentials"], "token_endpoint_auth_method": "client_secret_basic",
          "scope": "system/*.rs"}, True, "invalid_client_metadata", "grant_types"),
        ({"grant_types": ["client_credentials"], "token_endpoint_auth_method": "private_key_jwt",
          "jwks_uri": "https://app.example/jwks.json", "scope": "system/*.rs"}, False, "invalid_client_metadata",
         "grant_types"),
        ({**APP, "token_endpoint_auth_method": "private_key_jwt", "jwks_uri": "http://app.example/jwks.json"},
         False, "invalid_client_metadata", "jwks_uri"),
        ({**APP, "token_endpoint_auth_method": "private_key_jwt", "jwks_uri": "https://app.example/jwks.json",
          "jwks": {"keys": []}}, False, "invalid_client_metadata", "jwks"),
        ({**APP, "token_endpoint_auth_method": "private_key_jwt",
          "jwks": {"keys": [ECKey.generate_key("P-384", auto_kid=True).as_dict(private=True)]}}, False,
         "invalid_client_metadata", "jwks"),
        ({**APP, "client_id": "my-own-id"}, False, "invalid_client_metadata", "client_id"),
    ],
)
def test_registration_is_validated(db, clock, body, admin, error, field):
    registry = ClientRegistry(db, clock)
    with pytest.raises(RegistrationError) as info:
        registry.register(body, admin=admin)
    assert info.value.error == error
    assert field in info.value.fields, info.value.fields
    assert info.value.to_dict()["error"] == error
    assert db[CLIENTS].count_documents({}) == 0


def test_registration_defaults_and_response(db, clock):
    registry = ClientRegistry(db, clock)
    client, secret = registry.register({**APP, "launch_uri": "https://app.example/launch", "unknown_member": 1})
    assert secret is None and client.kind == "public"
    assert client.grant_types == ("authorization_code",) and client.response_types == ("code",)
    assert "launch/patient" in client.scope and not any(s.startswith("system/") for s in client.scope)
    assert registry.get(client.client_id) == client
    response = client.registration_response(secret)
    assert response["client_id"] == client.client_id and "client_secret" not in response
    assert response["redirect_uris"] == APP["redirect_uris"] and response["launch_uri"] == "https://app.example/launch"
    assert "unknown_member" not in db[CLIENTS].find_one({"_id": client.client_id})
    assert registry.get("nobody") is None


def test_client_secret_is_stored_hashed_and_checked(db, clock):
    registry = ClientRegistry(db, clock)
    client, secret = registry.register({**APP, "token_endpoint_auth_method": "client_secret_basic"})
    assert client.kind == "confidential-symmetric" and secret and len(secret) >= 40
    stored = db[CLIENTS].find_one({"_id": client.client_id})
    assert secret not in json.dumps(stored, default=str)
    assert stored["secret_hash"].startswith("sha256:")
    assert registry.check_secret(client, secret)
    assert not registry.check_secret(client, secret[:-1] + ("A" if secret[-1] != "A" else "B"))
    assert not registry.check_secret(client, "")
    response = client.registration_response(secret)
    assert response["client_secret"] == secret and response["client_secret_expires_at"] == 0
    # Shown once: reading the client back never yields the secret.
    assert secret not in json.dumps(registry.get(client.client_id).registration_response(), default=str)


def test_admin_may_choose_client_id_once(db, clock):
    registry = ClientRegistry(db, clock)
    registry.register({**APP, "client_id": "inferno-app"}, admin=True)
    with pytest.raises(RegistrationError, match="already registered"):
        registry.register({**APP, "client_id": "inferno-app"}, admin=True)


def test_redirect_uri_must_match_exactly(db, clock):
    registry = ClientRegistry(db, clock)
    client, _ = registry.register({**APP, "redirect_uris": ["https://app.example/cb", "http://localhost:8000/cb"]})
    assert registry.check_redirect(client, "https://app.example/cb")
    assert registry.check_redirect(client, "http://localhost:8000/cb")
    for near_miss in ("https://app.example/cb/", "https://app.example/cb?x=1", "https://app.example/c",
                      "HTTPS://app.example/cb", "https://app.example/cb/../cb", "http://localhost:8001/cb", None):
        assert not registry.check_redirect(client, near_miss), near_miss


def test_authlib_adapter(db, clock):
    registry = ClientRegistry(db, clock)
    client, secret = registry.register({
        **APP, "token_endpoint_auth_method": "client_secret_post", "grant_types": ["authorization_code",
                                                                                  "refresh_token"],
        "scope": "openid fhirUser launch/patient offline_access patient/*.rs patient/Observation.cruds",
    })
    adapter = AuthlibClient(client, registry)
    assert adapter.get_client_id() == client.client_id
    assert adapter.get_default_redirect_uri() == "https://app.example/cb"
    assert adapter.check_redirect_uri("https://app.example/cb") and not adapter.check_redirect_uri("https://x/cb")
    assert adapter.check_client_secret(secret) and not adapter.check_client_secret("nope")
    assert adapter.check_endpoint_auth_method("client_secret_post", "token")
    assert not adapter.check_endpoint_auth_method("none", "token")
    assert adapter.check_response_type("code") and not adapter.check_response_type("token")
    assert adapter.check_grant_type("refresh_token") and not adapter.check_grant_type("client_credentials")
    requested = "openid patient/Condition.rs patient/Condition.c patient/Observation.cud user/Patient.r " \
                "patient/Observation.rs?category=laboratory patient/Patient.read email"
    assert adapter.get_allowed_scope(requested) == (
        "openid patient/Condition.rs patient/Observation.cud patient/Observation.rs?category=laboratory "
        "patient/Patient.read"
    )
    assert adapter.get_allowed_scope(None) == ""
    assert adapter.get_allowed_scope("patient/Observation.xyz") is None  # malformed: authlib says invalid_scope


# -- client assertions ------------------------------------------------------------------------------------------------


class Backend:
    """A registered backend client with an RS384 and an ES384 key, and a verifier for TOKEN_URL."""

    def __init__(self, db: Database, clock: FakeClock, **registry_kwargs: Any) -> None:
        self.clock = clock
        self.rsa = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
        self.ec = ECKey.generate_key("P-384", parameters={"kid": "ec-1"})
        self.registry = ClientRegistry(db, clock, **registry_kwargs)
        self.client, _ = self.registry.register({
            "client_name": "Payer export", "grant_types": ["client_credentials"],
            "token_endpoint_auth_method": "private_key_jwt", "scope": "system/*.rs",
            "jwks": _public_jwks(self.rsa, self.ec),
        }, admin=True)
        self.verifier = ClientAssertionVerifier(db, self.registry, TOKEN_URL, clock)

    def assertion(self, alg: str = "RS384", header: dict | None = None, drop: tuple[str, ...] = (), **claims) -> str:
        key = self.rsa if alg.startswith("RS") else self.ec
        head = {"alg": alg, "kid": key.kid, "typ": "JWT", **(header or {})}
        head = {k: v for k, v in head.items() if v is not None}
        body = {
            "iss": self.client.client_id, "sub": self.client.client_id, "aud": TOKEN_URL,
            "exp": int(self.clock()) + 240, "jti": uuid.uuid4().hex, **claims,
        }
        body = {k: v for k, v in body.items() if k not in drop}
        return jwt.encode(head, body, key, algorithms=[alg])


@pytest.fixture
def backend(db, clock) -> Backend:
    return Backend(db, clock)


def _unsigned(header: dict, claims: dict) -> str:
    def b64(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{b64(header)}.{b64(claims)}."


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_valid_assertion(backend, alg):
    assert backend.verifier.verify(backend.assertion(alg), CLIENT_ASSERTION_TYPE).client_id == backend.client.client_id
    assert backend.verifier.verify(backend.assertion(alg, exp=int(backend.clock()) + 300)) == backend.client


def test_assertion_without_kid_tries_the_keys_of_its_alg(backend):
    assert backend.verifier.verify(backend.assertion("ES384", header={"kid": None})) == backend.client


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda b: b.assertion(aud="https://other.example/token"), "aud"),
        (lambda b: b.assertion(aud=[TOKEN_URL.replace("ehr", "erh")]), "aud"),
        (lambda b: b.assertion(sub="someone-else"), "sub"),
        (lambda b: b.assertion(iss="someone-else", sub="someone-else"), "unknown client"),
        (lambda b: b.assertion(exp=int(b.clock()) + 360), "in the future"),
        (lambda b: b.assertion(exp=int(b.clock()) - 60), "expired"),
        (lambda b: b.assertion(drop=("exp",)), "exp"),
        (lambda b: b.assertion(drop=("jti",)), "jti"),
        (lambda b: b.assertion(jti=""), "jti"),
        (lambda b: b.assertion(nbf=int(b.clock()) + 120), "nbf"),
        (lambda b: b.assertion(header={"kid": "rsa-2"}), "no key with kid"),
        (lambda b: b.assertion("ES384", header={"kid": "rsa-1"}), "no key with kid"),
        (lambda b: b.assertion(header={"jku": "https://app.example/jwks.json"}), "jku"),
        (lambda b: b.assertion(header={"typ": "at+jwt"}), "typ"),
        (lambda b: b.assertion("RS256"), "not accepted"),
        (lambda b: "not.a.jwt", "compact JWS"),
    ],
)
def test_invalid_assertions_are_refused(backend, make, message):
    with pytest.raises(ClientAssertionError, match=message) as info:
        backend.verifier.verify(make(backend))
    assert info.value.error == "invalid_client" and info.value.status_code == 400
    assert backend.verifier.used.count_documents({}) == 0  # a refused assertion burns no jti


def test_alg_none_and_hs256_are_refused(backend, clock):
    claims = {"iss": backend.client.client_id, "sub": backend.client.client_id, "aud": TOKEN_URL,
              "exp": int(clock()) + 60, "jti": "j1"}
    with pytest.raises(ClientAssertionError, match="'none' is not accepted"):
        backend.verifier.verify(_unsigned({"alg": "none", "kid": "rsa-1"}, claims))
    # Key confusion: an HMAC keyed with the client's public key material.
    mac = OctKey.import_key(json.dumps(backend.rsa.as_dict(private=False)).encode())
    hs = jwt.encode({"alg": "HS256", "kid": "rsa-1"}, claims, mac, algorithms=["HS256"])
    with pytest.raises(ClientAssertionError, match="'HS256' is not accepted"):
        backend.verifier.verify(hs)
    # A stranger's RS384 signature under the client's kid.
    stranger = RSAKey.generate_key(2048)
    forged = jwt.encode({"alg": "RS384", "kid": "rsa-1"}, claims, stranger, algorithms=["RS384"])
    with pytest.raises(ClientAssertionError, match="signature"):
        backend.verifier.verify(forged)


def test_wrong_assertion_type_and_client_id_mismatch(backend):
    with pytest.raises(ClientAssertionError, match="client_assertion_type"):
        backend.verifier.verify(backend.assertion(), "urn:ietf:params:oauth:grant-type:jwt-bearer")
    with pytest.raises(ClientAssertionError, match="client_id"):
        backend.verifier.verify(backend.assertion(), CLIENT_ASSERTION_TYPE, client_id="other")
    assert backend.verifier.verify(backend.assertion(), CLIENT_ASSERTION_TYPE, backend.client.client_id)


def test_symmetric_client_cannot_use_an_assertion(db, clock, backend):
    client, _ = backend.registry.register({**APP, "token_endpoint_auth_method": "client_secret_basic"})
    token = backend.assertion(iss=client.client_id, sub=client.client_id)
    with pytest.raises(ClientAssertionError, match="not registered for private_key_jwt"):
        backend.verifier.verify(token)


def test_replayed_jti_is_refused(backend, clock):
    token = backend.assertion("ES384")
    assert backend.verifier.verify(token) == backend.client
    with pytest.raises(ClientAssertionError, match="already been used"):
        backend.verifier.verify(token)
    # Another assertion with the same jti (freshly signed) is a replay too.
    jti = backend.verifier.used.find_one()["_id"].split(":", 1)[1]
    with pytest.raises(ClientAssertionError, match="already been used"):
        backend.verifier.verify(backend.assertion("RS384", jti=jti))
    # Purge keeps it while the assertion could still be presented, drops it after.
    assert backend.verifier.purge() == 0
    clock.advance(240 + backend.verifier.leeway + 1)
    assert backend.verifier.purge() == 1


def test_replay_race_has_exactly_one_winner(ferret, db, clock):
    backend = Backend(db, clock)
    token = backend.assertion("RS384")
    clients = [MongoClient(ferret.uri) for _ in range(4)]
    try:
        verifiers = [
            ClientAssertionVerifier(c[db.name], ClientRegistry(c[db.name], clock), TOKEN_URL, clock) for c in clients
        ]
        results = run_at_once(20, lambda i: verifiers[i % 4].verify(token))
    finally:
        for c in clients:
            c.close()
    accepted = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, ClientAssertionError)]
    assert len(accepted) == 1, results
    assert len(refused) == 19 and all("already been used" in str(r) for r in refused), results
    assert db[USED_JTI].count_documents({}) == 1


def test_jku_must_equal_the_registered_jwks_uri(db, clock):
    rsa = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    jwks_uri = "https://app.example/.well-known/jwks.json"
    fetched: list[str] = []

    def fetch(uri: str) -> tuple[dict[str, Any], float | None]:
        fetched.append(uri)
        if uri != jwks_uri:
            raise AssertionError(f"fetched a URL that is not registered: {uri}")
        return _public_jwks(rsa), 60.0

    registry = ClientRegistry(db, clock, fetch_jwks=fetch)
    client, _ = registry.register({
        "grant_types": ["client_credentials"], "token_endpoint_auth_method": "private_key_jwt",
        "scope": "system/Patient.rs", "jwks_uri": jwks_uri,
    }, admin=True)
    verifier = ClientAssertionVerifier(db, registry, TOKEN_URL, clock)

    def assertion(**header: Any) -> str:
        claims = {"iss": client.client_id, "sub": client.client_id, "aud": TOKEN_URL, "exp": int(clock()) + 60,
                  "jti": uuid.uuid4().hex}
        return jwt.encode({"alg": "RS384", "kid": "k1", **header}, claims, rsa, algorithms=["RS384"])

    assert verifier.verify(assertion(jku=jwks_uri)) == client
    with pytest.raises(ClientAssertionError, match="jku"):
        verifier.verify(assertion(jku="https://attacker.example/jwks.json"))
    assert verifier.verify(assertion()) == client
    assert fetched == [jwks_uri]  # fetched once, then cached; never the attacker's URL
    clock.advance(61)  # past the max-age the "server" sent
    assert verifier.verify(assertion()) == client
    assert fetched == [jwks_uri, jwks_uri]


def test_authlib_client_auth_method(backend):
    from authlib.oauth2.rfc6749.errors import InvalidClientError

    class Request:
        def __init__(self, form: dict[str, str]) -> None:
            self.form = form

    method = AuthlibPrivateKeyJWT(backend.verifier)

    def query(cid: str) -> AuthlibClient | None:
        found = backend.registry.get(cid)
        return AuthlibClient(found, backend.registry) if found else None

    ok = method(query, Request({"client_assertion_type": CLIENT_ASSERTION_TYPE,
                                "client_assertion": backend.assertion("ES384")}))
    assert isinstance(ok, AuthlibClient) and ok.get_client_id() == backend.client.client_id
    assert ok.check_endpoint_auth_method("private_key_jwt", "token")
    assert method(query, Request({"client_id": "x"})) is None
    with pytest.raises(InvalidClientError):
        method(query, Request({"client_assertion_type": CLIENT_ASSERTION_TYPE, "client_assertion": "x.y.z"}))


# -- discovery --------------------------------------------------------------------------------------------------------

ENDPOINTS = {
    "authorize": "/auth/authorize", "token": "/auth/token", "register": "/auth/register", "manage": "/auth/manage",
    "introspect": "/auth/introspect", "revoke": "/auth/revoke", "jwks": "/auth/jwks",
}
G10_PATIENT = ("launch-standalone client-public client-confidential-symmetric client-confidential-asymmetric "
               "sso-openid-connect context-standalone-patient permission-offline permission-patient authorize-post "
               "permission-v2 permission-v1").split()
G10_PRACTITIONER = ("launch-ehr client-confidential-symmetric client-confidential-asymmetric sso-openid-connect "
                    "context-banner context-style context-ehr-patient permission-offline permission-user "
                    "authorize-post permission-v2 permission-v1 context-ehr-encounter").split()


def test_smart_configuration_has_every_required_field():
    doc = smart_configuration("https://ehr.example/auth", "https://ehr.example/fhir", ENDPOINTS)
    for name in ("issuer", "jwks_uri", "authorization_endpoint", "token_endpoint", "grant_types_supported",
                 "token_endpoint_auth_methods_supported", "token_endpoint_auth_signing_alg_values_supported",
                 "registration_endpoint", "scopes_supported", "response_types_supported", "management_endpoint",
                 "introspection_endpoint", "revocation_endpoint", "code_challenge_methods_supported", "capabilities"):
        assert doc.get(name), name
    assert doc["token_endpoint"] == "https://ehr.example/auth/token"
    assert all(doc[k].startswith("https://ehr.example/") for k in doc if k.endswith(("_endpoint", "_uri")))
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["token_endpoint_auth_signing_alg_values_supported"] == ["RS384", "ES384"]
    assert {"authorization_code", "client_credentials"} <= set(doc["grant_types_supported"])
    assert {"private_key_jwt", "client_secret_basic"} <= set(doc["token_endpoint_auth_methods_supported"])
    assert doc["response_types_supported"] == ["code"]
    assert parse_scopes(" ".join(doc["scopes_supported"]))  # every advertised scope is one the grammar knows
    caps = doc["capabilities"]
    assert all(isinstance(c, str) for c in caps) and len(caps) == len(set(caps))
    assert set(G10_PATIENT) <= set(caps) and set(G10_PRACTITIONER) <= set(caps)
    assert {"permission-online", "context-passthrough-banner", "context-passthrough-style"} <= set(caps)
    assert set(CAPABILITIES) <= set(caps)
    assert json.loads(json.dumps(doc)) == doc
    with pytest.raises(ValueError):
        smart_configuration("https://ehr.example/auth", "https://ehr.example/fhir", {**ENDPOINTS, "token": "token"})
    with pytest.raises(ValueError):
        smart_configuration("https://ehr.example/auth", "https://ehr.example/fhir", {"token": "/t"})


def test_capability_security_extension_is_found_by_fhirclient():
    from fhirclient.auth import FHIRAuth
    from fhirclient.models.capabilitystatement import CapabilityStatementRestSecurity

    security = capability_security_extension(ENDPOINTS, "https://ehr.example/fhir")
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    (ext,) = security["extension"]
    urls = {e["url"]: e["valueUri"] for e in ext["extension"]}
    assert set(urls) == {"authorize", "token", "register", "manage"}  # all that R4's oauth-uris definition allows
    auth = FHIRAuth.from_capability_security(CapabilityStatementRestSecurity(jsondict=security), state={})
    assert auth._authorize_uri == "https://ehr.example/auth/authorize"
    assert auth._token_uri == "https://ehr.example/auth/token"
    assert auth._registration_uri == "https://ehr.example/auth/register"
    with pytest.raises(ValueError):
        capability_security_extension({"token": "/auth/token"})

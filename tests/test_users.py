"""Users and login against a real FerretDB: accounts, argon2id, lockout and rate limits, TOTP, recovery codes, reset.

The race tests fire 20 threads at one recovery code and at one reset token at once: the unique insert into
`auth_used_codes` must let exactly one through, every round.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pyotp
import pytest
from argon2 import PasswordHasher
from pymongo import MongoClient
from pymongo.database import Database

from smart_auth.notify import OutboxNotifier, SMTPNotifier, mask_address, relay_outbox
from smart_auth.store import AuthStore
from smart_auth.users import (
    IP_MAX_FAILURES,
    RECOVERY_CODE_COUNT,
    USER_MAX_FAILURES,
    USER_WINDOW,
    LoginLimits,
    LoginResult,
    UserError,
    UserStore,
    client_key,
)
from tests.servers import start_ferretdb

PASSWORD = "correct horse battery"
LIGHT = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
T0 = datetime(2026, 3, 2, 9, 0, 0, tzinfo=UTC)
RACERS = 20


class Clock:
    """An injectable clock that tests move by hand."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> Iterator[MongoClient]:
    server = start_ferretdb(tmp_path_factory.mktemp("users-db"))
    mongo: MongoClient = MongoClient(server.uri, serverSelectionTimeoutMS=5000, retryWrites=False)
    yield mongo
    mongo.close()
    server.stop()


@pytest.fixture
def db(client: MongoClient) -> Iterator[Database]:
    name = f"users_{uuid.uuid4().hex[:10]}"
    yield client[name]
    client.drop_database(name)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def users(db: Database, clock: Clock) -> UserStore:
    AuthStore(db).ensure_indexes()
    return UserStore(db, clock=clock, hasher=LIGHT, reset_url="https://portal.example.org/reset?token={token}")


def race(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """Run fn(0..n-1) in n threads released at the same instant; return results (exceptions as values)."""
    barrier = threading.Barrier(n)
    out: list[Any] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            out[i] = fn(i)
        except Exception as exc:  # collected and checked by the test
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def outbox(db: Database) -> list[dict]:
    return list(AuthStore(db).outbox.find().sort("ts", 1))


def token_from(message: dict) -> str:
    match = re.search(r"token=([A-Za-z0-9_-]+)", message["body"])
    assert match, message["body"]
    return match.group(1)


def totp_code(secret: str, at: datetime, offset: int = 0) -> str:
    return pyotp.TOTP(secret).generate_otp(int(at.timestamp()) // 30 + offset)


def enrolled(users: UserStore, clock: Clock, name: str = "alice") -> tuple[str, list[str]]:
    """An account with TOTP confirmed; the clock is moved past the confirming code's steps."""
    secret, _, codes = users.enable_totp(name)
    assert users.confirm_totp(name, totp_code(secret, clock.now))
    clock.advance(seconds=120)
    return secret, codes


# ------------------------------------------------------------------------------------------------- accounts


def test_create_and_verify(users: UserStore) -> None:
    created = users.create_user("Alice", PASSWORD, "Patient/123", email="Alice@Example.org", roles=["patient"],
                                display="Alice Smith")
    assert created.username == "alice" and created.email == "alice@example.org"
    result = users.verify_password("ALICE", PASSWORD, "10.0.0.1")
    assert result.ok and result.status == "ok" and not result.second_factor_required
    assert result.user is not None and result.user.fhir_user == "Patient/123"
    assert result.user.roles == ("patient",) and result.user.display == "Alice Smith"
    got = users.get("alice")
    assert got == result.user and got.created == users.clock()
    assert users.get("nobody") is None


def test_bad_password_and_unknown_user_look_the_same(users: UserStore) -> None:
    users.create_user("bob", PASSWORD, "Practitioner/9")
    bad = users.verify_password("bob", "wrong password!", "10.0.0.1")
    unknown = users.verify_password("nobody", "wrong password!", "10.0.0.1")
    assert isinstance(unknown, LoginResult) and type(bad) is type(unknown)
    assert bad == unknown == LoginResult("bad")
    assert users.verify_password(12345, None, None).status == "bad"  # type: ignore[arg-type]
    # Unknown accounts are locked like real ones, so the lock does not reveal existence either.
    for _ in range(USER_MAX_FAILURES - 1):
        users.verify_password("nobody", "wrong password!", "10.0.0.2")
    assert users.verify_password("nobody", "wrong password!", "10.0.0.3").status == "locked"


def test_policy_errors(users: UserStore) -> None:
    def code(**kw: Any) -> str:
        args = {"username": "carol", "password": PASSWORD, "fhir_user": "RelatedPerson/5", **kw}
        with pytest.raises(UserError) as err:
            users.create_user(**args)
        return err.value.code

    assert code(password="short") == "policy"
    assert code(password="x" * 2000) == "policy"
    assert code(password="Password123") == "policy"
    assert code(username="carolcarol", password="CarolCarol") == "policy"
    assert code(username="a") == "invalid_username"
    assert code(username="bad:name") == "invalid_username"
    assert code(fhir_user="Organization/1") == "invalid_fhir_user"
    assert code(fhir_user="Patient/") == "invalid_fhir_user"
    assert code(email="not-an-email") == "invalid_email"
    users.create_user("carol", PASSWORD, "RelatedPerson/5")
    assert code(username="CAROL") == "exists"
    with pytest.raises(UserError) as err:
        users.set_password("carol", "too short")
    assert err.value.field == "password"
    with pytest.raises(UserError):
        users.set_password("nobody", PASSWORD)


def test_argon2id_hash_and_defaults(db: Database, users: UserStore) -> None:
    users.create_user("dave", PASSWORD, "Patient/7")
    stored = AuthStore(db).users.find_one({"_id": "dave"})["password"]
    assert stored.startswith("$argon2id$v=19$m=1024,t=1,p=1$")
    assert PASSWORD not in str(AuthStore(db).users.find_one({"_id": "dave"}))
    production = UserStore(db).hasher
    default = PasswordHasher()
    assert (production.time_cost, production.memory_cost, production.parallelism, production.type) == (
        default.time_cost, default.memory_cost, default.parallelism, default.type)


def test_rehash_when_parameters_change(db: Database, users: UserStore, clock: Clock) -> None:
    users.create_user("erin", PASSWORD, "Patient/8")
    stronger = UserStore(db, clock=clock, hasher=PasswordHasher(time_cost=2, memory_cost=2048, parallelism=1))
    assert stronger.verify_password("erin", PASSWORD, None).ok
    stored = AuthStore(db).users.find_one({"_id": "erin"})["password"]
    assert stored.startswith("$argon2id$v=19$m=2048,t=2,p=1$")
    assert users.verify_password("erin", PASSWORD, None).ok  # old parameters still verify new hashes


def test_set_password(users: UserStore) -> None:
    users.create_user("fred", PASSWORD, "Patient/9")
    users.set_password("fred", "a brand new passphrase")
    assert users.verify_password("fred", PASSWORD, None).status == "bad"
    assert users.verify_password("fred", "a brand new passphrase", None).ok


# ------------------------------------------------------------------------------------------------- lockout


def test_lockout_after_five_failures_and_unlock_after_window(users: UserStore, clock: Clock) -> None:
    users.create_user("gina", PASSWORD, "Patient/10")
    for i in range(USER_MAX_FAILURES):
        assert users.verify_password("gina", "wrong password!", f"10.0.1.{i}").status == "bad"
        clock.advance(seconds=10)
    locked = users.verify_password("gina", PASSWORD, "10.9.9.9")  # even the right password, from anywhere
    assert locked.status == "locked" and locked.reason == "user" and locked.user is None
    first_failure = T0
    assert locked.retry_after == int((first_failure + USER_WINDOW - clock.now).total_seconds())
    # Refused attempts are not recorded, so hammering does not extend the lock.
    for _ in range(10):
        assert users.verify_password("gina", "wrong password!", "10.0.1.1").status == "locked"
    clock.now = first_failure + USER_WINDOW + timedelta(seconds=1)  # the first failure left the window
    assert users.verify_password("gina", PASSWORD, "10.0.1.1").ok


def test_success_resets_the_count(users: UserStore, clock: Clock) -> None:
    users.create_user("hank", PASSWORD, "Patient/11")
    for _ in range(USER_MAX_FAILURES - 1):
        assert users.verify_password("hank", "wrong password!", None).status == "bad"
    clock.advance(seconds=1)
    assert users.verify_password("hank", PASSWORD, None).ok
    clock.advance(seconds=1)
    for _ in range(USER_MAX_FAILURES):
        assert users.verify_password("hank", "wrong password!", None).status == "bad"
    assert users.verify_password("hank", PASSWORD, None).status == "locked"
    # The history is kept (the success only moves the counting point), until purge.
    assert AuthStore(users.store.db).login_failures.count_documents({"user": "hank"}) == 2 * USER_MAX_FAILURES - 1


def test_ip_rate_limit(users: UserStore, clock: Clock) -> None:
    users.create_user("ivan", PASSWORD, "Patient/12")
    for i in range(IP_MAX_FAILURES):  # password spraying: one guess per account, all from one address
        assert users.verify_password(f"user{i}", "wrong password!", "203.0.113.7").status == "bad"
    blocked = users.verify_password("ivan", PASSWORD, "203.0.113.7")
    assert blocked.status == "locked" and blocked.reason == "ip" and blocked.retry_after > 0
    assert users.verify_password("ivan", PASSWORD, "198.51.100.1").ok  # other clients are unaffected
    # IPv6 counts per /64.
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert client_key("::ffff:192.0.2.1") == "192.0.2.1"
    for i in range(IP_MAX_FAILURES):
        users.verify_password(f"v6user{i}", "wrong password!", f"2001:db8:1:2::{i + 1:x}")
    assert users.verify_password("ivan", PASSWORD, "2001:db8:1:2:ffff::9").reason == "ip"
    clock.advance(minutes=16)
    assert users.verify_password("ivan", PASSWORD, "203.0.113.7").ok


def test_concurrent_guesses_cannot_all_slip_under_the_limit(users: UserStore) -> None:
    users.create_user("judy", PASSWORD, "Patient/13")
    results = race(RACERS, lambda i: users.verify_password("judy", f"wrong guess {i:04d}", f"10.1.0.{i}"))
    statuses = [r.status for r in results]
    assert set(statuses) <= {"bad", "locked"}
    # Each attempt is written before counting, so of any two concurrent attempts the later counter sees the
    # other: at most 2 * limit - 1 can be checked, however the threads interleave.
    burst = statuses.count("bad")
    assert burst <= 2 * USER_MAX_FAILURES - 1
    # Refused racers left no rows; checked ones left one failure each.
    assert users.store.login_failures.count_documents({"user": "judy"}) == burst
    # Whatever the burst got through, the account takes no more than the limit in the window.
    more = 0
    while users.verify_password("judy", "wrong password!", "10.2.0.1").status == "bad":
        more += 1
    assert burst + more == max(burst, USER_MAX_FAILURES)
    assert users.verify_password("judy", PASSWORD, "10.2.0.1").status == "locked"


def test_purge(users: UserStore, clock: Clock) -> None:
    users.create_user("kate", PASSWORD, "Patient/14", email="kate@example.org")
    users.verify_password("kate", "wrong password!", "10.0.0.1")
    users.verify_password("kate", PASSWORD, "10.0.0.1")
    users.request_reset("kate")
    store = users.store
    assert store.login_failures.count_documents({}) == 1 and store.reset_tokens.count_documents({}) == 1
    assert users.purge() == {"login_failures": 0, "login_successes": 0, "reset_tokens": 0, "used_codes": 0,
                             "locks": 0}
    counts = users.purge(clock.now + timedelta(hours=1))
    assert counts["login_failures"] == 1 and counts["login_successes"] == 1 and counts["reset_tokens"] == 1
    assert store.login_failures.count_documents({}) == 0


# ------------------------------------------------------------------------------------------------- TOTP


def test_totp_enable_confirm_verify(users: UserStore, clock: Clock) -> None:
    users.create_user("lena", PASSWORD, "Patient/15", email="lena@example.org")
    secret, uri, codes = users.enable_totp("lena")
    assert uri.startswith("otpauth://totp/") and "secret=" + secret in uri and "lena%40example.org" in uri
    assert len(codes) == RECOVERY_CODE_COUNT == len(set(codes))
    # Not active before confirmation.
    assert not users.verify_password("lena", PASSWORD, None).second_factor_required
    assert not users.confirm_totp("lena", "000000" if totp_code(secret, clock.now) != "000000" else "111111")
    confirming = totp_code(secret, clock.now)
    assert users.confirm_totp("lena", confirming)
    first = users.verify_password("lena", PASSWORD, None)
    assert first.ok and first.second_factor_required and first.user and first.user.totp_enabled
    # The code that confirmed enrolment was consumed with it.
    assert not users.verify_second_factor("lena", confirming)

    clock.advance(seconds=60)
    now_code = totp_code(secret, clock.now)
    assert users.verify_second_factor("lena", now_code)
    assert not users.verify_second_factor("lena", now_code)  # reuse within its window is refused
    clock.advance(seconds=60)
    assert users.verify_second_factor("lena", totp_code(secret, clock.now, -1))  # one step back: drift allowed
    assert not users.verify_second_factor("lena", totp_code(secret, clock.now, -2))  # two steps back: too old
    clock.advance(seconds=60)
    assert not users.verify_second_factor("lena", totp_code(secret, clock.now, 2))  # two ahead: refused
    assert users.verify_second_factor("lena", totp_code(secret, clock.now, 1))  # one ahead: drift allowed
    # After the next step's code was used, the current (older) step's code is refused too (RFC 6238 5.2).
    assert not users.verify_second_factor("lena", totp_code(secret, clock.now))
    assert not users.verify_second_factor("lena", "not a code")


def test_second_factor_failures_count_toward_lockout(users: UserStore, clock: Clock) -> None:
    users.create_user("mia", PASSWORD, "Patient/16")
    secret, _ = enrolled(users, clock, "mia")
    # A correct password alone completes nothing: it does not reset the failure count.
    for _ in range(USER_MAX_FAILURES):
        assert users.verify_password("mia", PASSWORD, None).second_factor_required
        assert not users.verify_second_factor("mia", "123456" if totp_code(secret, clock.now) != "123456" else "1")
    assert users.check_second_factor("mia", totp_code(secret, clock.now)).status == "locked"
    assert users.verify_password("mia", PASSWORD, None).status == "locked"


def test_recovery_code_single_use(users: UserStore, clock: Clock) -> None:
    users.create_user("nina", PASSWORD, "Patient/17")
    _, codes = enrolled(users, clock, "nina")
    result = users.check_second_factor("nina", codes[0].lower().replace("-", " "))  # spacing and case ignored
    assert result.ok and result.user and result.user.recovery_codes_left == RECOVERY_CODE_COUNT - 1
    assert not users.verify_second_factor("nina", codes[0])
    assert users.verify_second_factor("nina", codes[1])
    assert not users.verify_second_factor("nina", "ABCD-EFGH-JKMN-PQRS")
    # Re-enrolment replaces the codes: the old ones stop working once the new factor is confirmed.
    secret, _, fresh = users.enable_totp("nina")
    assert users.confirm_totp("nina", totp_code(secret, clock.now))
    assert not users.verify_second_factor("nina", codes[2])
    assert users.verify_second_factor("nina", fresh[0])
    users.disable_totp("nina")
    assert not users.verify_password("nina", PASSWORD, None).second_factor_required


def test_race_recovery_code_exactly_one_wins(db: Database, clock: Clock) -> None:
    # Limits raised so that the lockout gate does not refuse racers: this isolates the single-use guarantee.
    generous = LoginLimits(user_max_failures=10_000, ip_max_failures=10_000)
    users = UserStore(db, clock=clock, hasher=LIGHT, limits=generous)
    users.create_user("oscar", PASSWORD, "Patient/18")
    secret, codes = enrolled(users, clock, "oscar")
    for round_no in range(3):
        results = race(RACERS, lambda i, c=codes[round_no]: users.verify_second_factor("oscar", c, f"10.3.0.{i}"))
        assert results.count(True) == 1 and results.count(False) == RACERS - 1, results
    # The same for one TOTP code.
    clock.advance(seconds=90)
    code = totp_code(secret, clock.now)
    results = race(RACERS, lambda i: users.verify_second_factor("oscar", code, f"10.4.0.{i}"))
    assert results.count(True) == 1 and results.count(False) == RACERS - 1, results
    assert users.get("oscar").recovery_codes_left == RECOVERY_CODE_COUNT - 3


# ------------------------------------------------------------------------------------------------- reset


def test_reset_flow_and_outbox(db: Database, users: UserStore, caplog: pytest.LogCaptureFixture) -> None:
    users.create_user("paul", PASSWORD, "Practitioner/20", email="paul@example.org")
    with caplog.at_level(logging.INFO, logger="smart_auth.notify"):
        assert users.request_reset("Paul@Example.org") is None
    [message] = outbox(db)
    assert message["to"] == "paul@example.org" and message["kind"] == "password_reset"
    assert message["status"] == "queued" and message["meta"]["user"] == "paul" and message["subject"]
    token = token_from(message)
    assert message["body"].count("https://portal.example.org/reset?token=") == 1
    # Only the hash is stored; the log line names kind, masked recipient and subject, never the link.
    [stored] = AuthStore(db).reset_tokens.find()
    assert stored["_id"] == hashlib.sha256(token.encode()).hexdigest() and token not in str(stored)
    logged = [r for r in caplog.records if r.name == "smart_auth.notify"]
    assert len(logged) == 1 and logged[0].kind == "password_reset" and logged[0].to == "p***@example.org"
    assert token not in caplog.text and "paul@example.org" not in caplog.text

    with pytest.raises(UserError) as err:
        users.reset_password(token, "short")
    assert err.value.code == "policy"  # a refused password does not spend the link
    assert users.reset_password(token, "my new long passphrase") == "paul"
    assert users.verify_password("paul", PASSWORD, None).status == "bad"
    assert users.verify_password("paul", "my new long passphrase", None).ok
    with pytest.raises(UserError) as err:
        users.reset_password(token, "another long passphrase")
    assert err.value.code == "invalid_token"
    with pytest.raises(UserError):
        users.reset_password("made-up-token", "another long passphrase")


def test_reset_token_expires(users: UserStore, db: Database, clock: Clock) -> None:
    users.create_user("quinn", PASSWORD, "Patient/21", email="quinn@example.org")
    users.request_reset("quinn")
    token = token_from(outbox(db)[0])
    clock.advance(minutes=30, seconds=1)
    with pytest.raises(UserError) as err:
        users.reset_password(token, "my new long passphrase")
    assert err.value.code == "invalid_token"
    assert users.verify_password("quinn", PASSWORD, None).ok


def test_unknown_account_reset_sends_nothing(users: UserStore, db: Database) -> None:
    users.create_user("rita", PASSWORD, "Patient/22")  # exists, but has no e-mail
    for who in ("nobody", "nobody@example.org", "rita", "", "   "):
        assert users.request_reset(who) is None
    assert outbox(db) == []
    assert AuthStore(db).reset_tokens.count_documents({}) == 0


def test_reset_links_are_capped_per_account(users: UserStore, db: Database) -> None:
    users.create_user("sam", PASSWORD, "Patient/23", email="sam@example.org")
    for _ in range(5):
        users.request_reset("sam")
    assert len(outbox(db)) == 3


def test_race_reset_token_exactly_one_wins(users: UserStore, db: Database, clock: Clock) -> None:
    users.create_user("tina", PASSWORD, "Patient/24", email="tina@example.org")
    for round_no in range(3):
        users.request_reset("tina")
        token = token_from(outbox(db)[-1])
        results = race(RACERS, lambda i, t=token, r=round_no: users.reset_password(t, f"winner {r} {i:02d} passphrase"))
        winners = [i for i, r in enumerate(results) if r == "tina"]
        losers = [r for r in results if isinstance(r, UserError) and r.code == "invalid_token"]
        assert len(winners) == 1 and len(losers) == RACERS - 1, results
        assert users.verify_password("tina", f"winner {round_no} {winners[0]:02d} passphrase", None).ok
        clock.advance(seconds=1)


def test_reset_clears_lockout(users: UserStore, db: Database, clock: Clock) -> None:
    users.create_user("uma", PASSWORD, "Patient/25", email="uma@example.org")
    for _ in range(USER_MAX_FAILURES):
        users.verify_password("uma", "wrong password!", None)
    assert users.verify_password("uma", PASSWORD, None).status == "locked"
    users.request_reset("uma")
    clock.advance(seconds=1)
    users.reset_password(token_from(outbox(db)[0]), "fresh long passphrase")
    clock.advance(seconds=1)
    assert users.verify_password("uma", "fresh long passphrase", None).ok


# ------------------------------------------------------------------------------------------------- notify


class Recorder:
    """A transport that remembers what it was asked to send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def send(self, to: str, subject: str, body: str, kind: str, meta: dict[str, Any]) -> None:
        with self.lock:
            self.sent.append((to, subject))


def test_outbox_relay_sends_each_message_once(db: Database) -> None:
    notifier = OutboxNotifier(db)
    for i in range(5):
        notifier.send(f"p{i}@example.org", f"Reminder {i}", "See you tomorrow", "appointment_reminder", {"n": i})
    transport = Recorder()
    counts = race(4, lambda i: relay_outbox(db, transport))
    assert sum(counts) == 5 and sorted(transport.sent) == [(f"p{i}@example.org", f"Reminder {i}") for i in range(5)]
    assert {m["status"] for m in outbox(db)} == {"sent"}
    assert relay_outbox(db, transport) == 0


def test_smtp_notifier_builds_messages() -> None:
    smtp = SMTPNotifier("smtp.example.org", 587, "noreply@example.org")
    msg = smtp.message("jane@example.org", "Reset your password", "body text", "password_reset")
    assert msg["To"] == "jane@example.org" and msg["X-Notification-Kind"] == "password_reset"
    assert mask_address("jane@example.org") == "j***@example.org" and mask_address("nobody") == "n***"

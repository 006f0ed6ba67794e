"""Users and login: accounts linked to a FHIR `fhirUser`, argon2id passwords, lockout and rate limiting, TOTP, reset.

Storage (all through `smart_auth.store.AuthStore`, plain pymongo):
- `auth_users`: one document per account, `_id` = username (unique by construction). Writes to one user document
  are serialized by a short per-user lease in `auth_locks`, because FerretDB v1 applies `update` by reading the whole
  document and writing it back, so two concurrent `$set`s of different fields can lose one of them.
- `auth_login_failures`: a ledger of login attempts (`_id` uuid, user, ip, ts, kind, outcome). An attempt is written
  as "pending" before the password is checked, so concurrent guesses count against each other; a failure turns it
  into "failed" (only its owner writes it), a success deletes it and records a marker in `auth_login_successes`
  after which earlier failures stop counting. Counts are over a sliding window; nothing is ever `$inc`-ed.
- `auth_used_codes`: single-use markers. Using a recovery code, a TOTP time step or a reset token is a unique insert
  here; the insert that succeeds is the one use, so concurrent uses cannot both succeed.
- `auth_reset_tokens`: password reset tokens, stored only as their SHA-256.
FerretDB has no TTL indexes: `UserStore.purge(now)` deletes expired rows and is meant to run on a timer (safe when
several processes run it at once: it only deletes what has expired).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import math
import re
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from smart_auth.notify import Notifier, OutboxNotifier
from smart_auth.store import LOCKS, USED_CODES, AuthStore

log = logging.getLogger("smart_auth.users")

# Password policy (NIST SP 800-63B: length over composition rules, check against common passwords).
MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 1024

# Lockout: at most 5 failed logins per account in any 15 minutes; the 6th attempt is refused without checking the
# password until enough failures have left the window (at most 15 minutes after the last one).
USER_MAX_FAILURES = 5
USER_WINDOW = timedelta(minutes=15)
# Rate limit per client address (IPv6 counted per /64): at most 20 failed logins in any 15 minutes, for all accounts.
IP_MAX_FAILURES = 20
IP_WINDOW = timedelta(minutes=15)

# TOTP (RFC 6238): 6 digits, 30-second steps, the previous and the next step accepted for clock drift.
TOTP_DIGITS = 6
TOTP_INTERVAL = 30
TOTP_VALID_STEPS = 1
# Recovery codes: 10 codes of 16 characters from a 30-letter alphabet (about 78 bits each), each usable once.
RECOVERY_CODE_COUNT = 10
RECOVERY_CODE_LENGTH = 16
RECOVERY_ALPHABET = "ABCDEFGHJKMNPQRSTVWXYZ23456789"

# Password reset: 32 random bytes (urlsafe), valid 30 minutes, once; at most 3 live links per account.
RESET_TOKEN_BYTES = 32
RESET_TTL = timedelta(minutes=30)
RESET_MAX_LIVE = 3
RESET_MAX_ACCOUNTS = 5

# Per-user write lease: held for one read-modify-write of a user document.
LOCK_TTL = timedelta(seconds=10)
LOCK_WAIT = 5.0

PENDING = "pending"
FAILED = "failed"

USERNAME_RE = re.compile(r"[a-z0-9][a-z0-9._@+-]{2,63}")
FHIR_USER_RE = re.compile(r"(Patient|Practitioner|RelatedPerson)/[A-Za-z0-9\-.]{1,64}")
EMAIL_RE = re.compile(r"[^@\s]{1,64}@[^@\s]+\.[^@\s]+")
TOTP_RE = re.compile(rf"\d{{{TOTP_DIGITS}}}")
RECOVERY_RE = re.compile(rf"[{RECOVERY_ALPHABET}]{{{RECOVERY_CODE_LENGTH}}}")
COMMON_PASSWORDS = frozenset({
    "0123456789", "1234567890", "12345678910", "1q2w3e4r5t", "abcdefghij", "iloveyou12", "letmeinplease",
    "password12", "password123", "password1234", "passwordpassword", "qwertyuiop", "qwertyuiop123", "1qaz2wsx3edc",
})


class UserError(ValueError):
    """A request about an account that cannot be honoured; `code` says why, `field` names the input at fault."""

    def __init__(self, message: str, code: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.field = field


class UserBusy(UserError):
    """Another request holds the account's write lease for longer than we wait (try again)."""

    def __init__(self, username: str) -> None:
        super().__init__(f"the account {username!r} is being changed by another request; try again", "busy")


@dataclass(frozen=True)
class User:
    """An account as the login flow sees it (no password hash, no TOTP secret)."""

    username: str
    fhir_user: str
    display: str | None
    email: str | None
    roles: tuple[str, ...]
    totp_enabled: bool
    recovery_codes_left: int
    created: datetime | None

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> User:
        created = doc.get("created")
        return cls(
            username=doc["_id"], fhir_user=doc["fhir_user"], display=doc.get("display"), email=doc.get("email"),
            roles=tuple(doc.get("roles") or ()), totp_enabled=bool(doc.get("totp_secret")),
            recovery_codes_left=len(doc.get("recovery_codes") or ()),
            created=_aware(created) if isinstance(created, datetime) else None,
        )


@dataclass(frozen=True)
class LoginResult:
    """Outcome of one login step: "ok", "bad" (wrong or unknown) or "locked" (retry after `retry_after` seconds).

    `second_factor_required` is set on a correct password for an account with TOTP: the login is not complete until
    `check_second_factor` succeeds. `reason` of a lock is "user" or "ip" (for logs; show users the same message).
    """

    status: Literal["ok", "bad", "locked"]
    user: User | None = None
    retry_after: int = 0
    second_factor_required: bool = False
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class LoginLimits:
    """Failure limits; the defaults are the module constants."""

    user_max_failures: int = USER_MAX_FAILURES
    user_window: timedelta = USER_WINDOW
    ip_max_failures: int = IP_MAX_FAILURES
    ip_window: timedelta = IP_WINDOW


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _aware(dt: datetime) -> datetime:
    """pymongo returns naive datetimes (UTC) unless the client is tz_aware; all times here are aware UTC."""
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def normalize_username(username: str) -> str:
    """Usernames are case-insensitive: 3-64 of `a-z 0-9 . _ @ + -`, starting with a letter or digit."""
    name = username.strip().lower() if isinstance(username, str) else ""
    if not USERNAME_RE.fullmatch(name):
        raise UserError("a username is 3-64 characters: letters, digits, '.', '_', '@', '+', '-'",
                        "invalid_username", "username")
    return name


def _ledger_key(username: str) -> str:
    """The key under which attempts are counted; any input counts, valid or not, existing or not."""
    return username.strip().lower()[:128] if isinstance(username, str) else ""


def client_key(ip: str | None) -> str | None:
    """The rate-limit key of a client address: IPv4 as is, IPv6 by its /64 (one subscriber's usual allocation)."""
    if not ip:
        return None
    try:
        addr = ipaddress.ip_address(ip.strip())
    except ValueError:
        return ip.strip()[:64]
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{addr}/64", strict=False))
    return str(addr)


def check_password(password: str, username: str | None = None) -> None:
    """Policy: at least 10 characters (at most 1024), not the username, not a well-known password."""
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"a password has at least {MIN_PASSWORD_LENGTH} characters", "policy", "password")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise UserError(f"a password has at most {MAX_PASSWORD_LENGTH} characters", "policy", "password")
    folded = password.casefold()
    if username and folded == username.casefold():
        raise UserError("the password must not be the username", "policy", "password")
    if folded in COMMON_PASSWORDS:
        raise UserError("this password is too common", "policy", "password")


def _normalize_code(code: str) -> str:
    return re.sub(r"[\s-]", "", code).upper() if isinstance(code, str) else ""


def _new_recovery_code() -> str:
    raw = "".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(RECOVERY_CODE_LENGTH))
    return "-".join(raw[i:i + 4] for i in range(0, RECOVERY_CODE_LENGTH, 4))


def _recovery_hash(username: str, code: str) -> str:
    """SHA-256 of username and normalized code: codes carry ~78 bits, so a fast hash is enough, and it is stable."""
    return _sha256(f"{username}:{_normalize_code(code)}")


def _wait_seconds(others: list[datetime], limit: int, window: timedelta, now: datetime) -> int:
    """Seconds until one more attempt fits: 0 when `others` plus this one stay within `limit`."""
    if len(others) + 1 <= limit:
        return 0
    others.sort()
    # The next attempt fits once only limit-1 earlier attempts remain inside the window.
    frees = others[len(others) - limit] + window
    return max(1, math.ceil((frees - now).total_seconds()))


class UserStore:
    """Accounts, passwords, lockout, second factor and password reset over one database."""

    def __init__(self, db: Database, *, notifier: Notifier | None = None,
                 clock: Callable[[], datetime] = _utcnow, hasher: PasswordHasher | None = None,
                 limits: LoginLimits | None = None, issuer: str = "FHIR Server",
                 reset_url: str = "/auth/reset?token={token}") -> None:
        """`hasher` defaults to argon2-cffi's `PasswordHasher()` (argon2id, RFC 9106 low-memory profile); tests may
        pass lighter parameters. `clock` returns aware UTC datetimes. `reset_url` gets the token as `{token}`."""
        self.store = AuthStore(db)
        self.clock = clock
        self.hasher = hasher or PasswordHasher()
        self.limits = limits or LoginLimits()
        self.notifier: Notifier = notifier or OutboxNotifier(db, clock=clock)
        self.issuer = issuer
        self.reset_url = reset_url
        self._dummy_hash: str | None = None

    # ----------------------------------------------------------------------------------------------- accounts

    def create_user(self, username: str, password: str, fhir_user: str, email: str | None = None,
                    roles: tuple[str, ...] | list[str] = (), display: str | None = None) -> User:
        """Create an account; `_id` = username, so a second account of that name fails the insert (UserError)."""
        name = normalize_username(username)
        if not isinstance(fhir_user, str) or not FHIR_USER_RE.fullmatch(fhir_user):
            raise UserError("fhirUser is a Patient, Practitioner or RelatedPerson reference, e.g. 'Patient/123'",
                            "invalid_fhir_user", "fhir_user")
        mail = email.strip().lower() if isinstance(email, str) and email.strip() else None
        if mail is not None and not EMAIL_RE.fullmatch(mail):
            raise UserError("not an e-mail address", "invalid_email", "email")
        check_password(password, name)
        doc = {
            "_id": name, "password": self.hasher.hash(password), "fhir_user": fhir_user, "display": display,
            "email": mail, "roles": sorted({str(r) for r in roles}), "totp_secret": None, "recovery_codes": [],
            "created": self.clock(),
        }
        try:
            self.store.users.insert_one(doc)
        except DuplicateKeyError:
            raise UserError(f"the username {name!r} is taken", "exists", "username") from None
        return User.from_doc(doc)

    def get(self, username: str) -> User | None:
        """The account, or None."""
        name = _ledger_key(username)
        doc = self.store.users.find_one({"_id": name}) if name else None
        return User.from_doc(doc) if doc else None

    def set_password(self, username: str, new_password: str) -> None:
        """Replace the password (policy applies); UserError for an unknown account."""
        name = normalize_username(username)
        check_password(new_password, name)
        self._store_password(name, self.hasher.hash(new_password))

    def _store_password(self, name: str, hashed: str) -> None:
        with self._locked(name):
            if self.store.users.find_one({"_id": name}, {"_id": 1}) is None:
                raise UserError("no such account", "unknown_user", "username")
            self.store.users.update_one({"_id": name}, {"$set": {"password": hashed, "password_changed": self.clock()}})

    # ----------------------------------------------------------------------------------------------- login

    def verify_password(self, username: str, password: str, client_ip: str | None) -> LoginResult:
        """First login step. Unknown accounts cost the same argon2 work and give the same "bad" result, and their
        failures are counted and locked alike, so neither answer nor timing tells whether an account exists."""
        name = _ledger_key(username)
        now = self.clock()
        attempt, blocked = self._begin(name, client_key(client_ip), now, "password")
        if blocked:
            return blocked
        doc = self.store.users.find_one({"_id": name}) if name else None
        if doc is None:
            self._check_hash(self._dummy(), password)
            self._fail(attempt)
            return LoginResult("bad")
        if not self._check_hash(doc["password"], password):
            self._fail(attempt)
            return LoginResult("bad")
        self._maybe_rehash(name, doc["password"], password)
        user = User.from_doc(doc)
        if user.totp_enabled:
            # Not a failure, but not a completed login either: failures keep counting until the second factor passes.
            self.store.login_failures.delete_one({"_id": attempt})
            return LoginResult("ok", user=user, second_factor_required=True)
        self._succeed(attempt, name, now)
        return LoginResult("ok", user=user)

    def check_second_factor(self, username: str, code: str, client_ip: str | None = None) -> LoginResult:
        """Second login step: a TOTP code (previous, current or next step) or an unused recovery code.

        Each TOTP step and each recovery code is consumed by a unique insert into `auth_used_codes`, so a code works
        once even when two requests present it at the same moment (RFC 6238 section 5.2: "the verifier MUST NOT
        accept the second attempt of the same OTP after the successful validation"). Wrong codes count as failures.
        """
        name = _ledger_key(username)
        now = self.clock()
        attempt, blocked = self._begin(name, client_key(client_ip), now, "second_factor")
        if blocked:
            return blocked
        doc = self.store.users.find_one({"_id": name}) if name else None
        secret = doc.get("totp_secret") if doc else None
        ok = False
        used_recovery = False
        if doc and secret:
            normalized = _normalize_code(code)
            if TOTP_RE.fullmatch(normalized):
                step = self._match_totp(secret, normalized, now)
                ok = step is not None and self._consume_totp(name, step, now)
            elif RECOVERY_RE.fullmatch(normalized):
                ok = used_recovery = self._consume_recovery(name, doc, normalized, now)
        if not ok:
            self._fail(attempt)
            return LoginResult("bad")
        self._succeed(attempt, name, now)
        if used_recovery:
            doc = self.store.users.find_one({"_id": name}) or doc
        return LoginResult("ok", user=User.from_doc(doc))

    def verify_second_factor(self, username: str, code: str, client_ip: str | None = None) -> bool:
        """True when the second factor is accepted (see `check_second_factor`)."""
        return self.check_second_factor(username, code, client_ip).ok

    def _begin(self, name: str, ip: str | None, now: datetime, kind: str) -> tuple[str, LoginResult | None]:
        """Record this attempt as pending, then count it with every other live attempt; over a limit -> locked.

        Writing first and counting after means that of two concurrent attempts at least the later counter sees
        the other, so a burst of parallel guesses cannot all slip under the limit.
        """
        attempt = uuid.uuid4().hex
        self.store.login_failures.insert_one(
            {"_id": attempt, "user": name, "ip": ip, "ts": now, "kind": kind, "outcome": PENDING})
        live = {"$in": [PENDING, FAILED]}
        since = now - self.limits.user_window
        marker = self.store.login_successes.find_one({"_id": name})
        if marker and isinstance(marker.get("ts"), datetime):
            # A success "resets" the count: only failures after the last success count.
            since = max(since, _aware(marker["ts"]))
        rows = self.store.login_failures.find(
            {"user": name, "ts": {"$gt": since}, "outcome": live, "_id": {"$ne": attempt}}, {"ts": 1})
        user_wait = _wait_seconds([_aware(r["ts"]) for r in rows], self.limits.user_max_failures,
                                  self.limits.user_window, now)
        ip_wait = 0
        if ip:
            rows = self.store.login_failures.find(
                {"ip": ip, "ts": {"$gt": now - self.limits.ip_window}, "outcome": live, "_id": {"$ne": attempt}},
                {"ts": 1})
            ip_wait = _wait_seconds([_aware(r["ts"]) for r in rows], self.limits.ip_max_failures,
                                    self.limits.ip_window, now)
        if user_wait or ip_wait:
            # Refused attempts are not recorded: hammering a locked account does not extend its lock.
            self.store.login_failures.delete_one({"_id": attempt})
            reason = "user" if user_wait >= ip_wait else "ip"
            log.info("login refused", extra={"reason": reason, "retry_after": max(user_wait, ip_wait)})
            return attempt, LoginResult("locked", retry_after=max(user_wait, ip_wait), reason=reason)
        return attempt, None

    def _fail(self, attempt: str) -> None:
        """Only the attempt's owner writes its row, so this update has no competitor."""
        self.store.login_failures.update_one({"_id": attempt}, {"$set": {"outcome": FAILED}})

    def _succeed(self, attempt: str, name: str, now: datetime) -> None:
        self.store.login_failures.delete_one({"_id": attempt})
        self._mark_success(name, now)

    def _mark_success(self, name: str, now: datetime) -> None:
        """Failures before this moment stop counting; history is kept until `purge`."""
        try:
            self.store.login_successes.update_one({"_id": name}, {"$set": {"ts": now}}, upsert=True)
        except DuplicateKeyError:  # two first successes raced to create the marker: the other one made it
            self.store.login_successes.update_one({"_id": name}, {"$set": {"ts": now}})

    def _check_hash(self, stored: str, password: str) -> bool:
        try:
            return self.hasher.verify(stored, password if isinstance(password, str) else "")
        except (VerificationError, InvalidHashError):
            return False

    def _dummy(self) -> str:
        """A hash of a random password with the current parameters, verified against for unknown accounts."""
        if self._dummy_hash is None:
            self._dummy_hash = self.hasher.hash(secrets.token_urlsafe(16))
        return self._dummy_hash

    def _maybe_rehash(self, name: str, old_hash: str, password: str) -> None:
        """Re-hash with the current parameters when they changed; skipped if the account is busy or changed."""
        if not self.hasher.check_needs_rehash(old_hash):
            return
        new_hash = self.hasher.hash(password)
        token = self._acquire(name, wait=0)
        if token is None:
            return
        try:
            doc = self.store.users.find_one({"_id": name}, {"password": 1})
            # Under the lease: a password set meanwhile (reset) is never overwritten by the old one re-hashed.
            if doc and doc.get("password") == old_hash:
                self.store.users.update_one({"_id": name}, {"$set": {"password": new_hash}})
        finally:
            self._release(name, token)

    # ----------------------------------------------------------------------------------------------- TOTP

    def enable_totp(self, username: str) -> tuple[str, str, list[str]]:
        """Start TOTP enrolment: a new secret, its otpauth:// URI and fresh recovery codes (shown once).

        Nothing changes for login until `confirm_totp` proves the authenticator works; an existing factor stays
        active until then. The caller must have re-authenticated the user.
        """
        name = normalize_username(username)
        secret = pyotp.random_base32()
        codes = [_new_recovery_code() for _ in range(RECOVERY_CODE_COUNT)]
        with self._locked(name):
            doc = self.store.users.find_one({"_id": name}, {"email": 1})
            if doc is None:
                raise UserError("no such account", "unknown_user", "username")
            self.store.users.update_one({"_id": name}, {"$set": {
                "totp_pending": secret, "recovery_pending": [_recovery_hash(name, c) for c in codes]}})
        uri = self._totp(secret).provisioning_uri(name=doc.get("email") or name, issuer_name=self.issuer)
        return secret, uri, codes

    def confirm_totp(self, username: str, code: str) -> bool:
        """Finish enrolment with a code from the new authenticator; that code is consumed and cannot log in."""
        name = normalize_username(username)
        now = self.clock()
        doc = self.store.users.find_one({"_id": name}, {"totp_pending": 1})
        pending = doc.get("totp_pending") if doc else None
        normalized = _normalize_code(code)
        if not pending or not TOTP_RE.fullmatch(normalized):
            return False
        step = self._match_totp(pending, normalized, now)
        if step is None or not self._consume_totp(name, step, now):
            return False
        with self._locked(name):
            doc = self.store.users.find_one({"_id": name})
            if not doc or doc.get("totp_pending") != pending:  # enrolment restarted meanwhile
                return False
            self.store.users.update_one({"_id": name}, {"$set": {
                "totp_secret": pending, "recovery_codes": doc.get("recovery_pending") or [],
                "totp_pending": None, "recovery_pending": [], "totp_enabled_at": now}})
        return True

    def disable_totp(self, username: str) -> None:
        """Remove the second factor and its recovery codes (the caller must have re-authenticated the user)."""
        name = normalize_username(username)
        with self._locked(name):
            self.store.users.update_one({"_id": name}, {"$set": {
                "totp_secret": None, "recovery_codes": [], "totp_pending": None, "recovery_pending": []}})

    @staticmethod
    def _totp(secret: str) -> pyotp.TOTP:
        return pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_INTERVAL)

    def _match_totp(self, secret: str, code: str, now: datetime) -> int | None:
        """The time step whose code equals `code`, looking one step back and one ahead (clock drift)."""
        totp = self._totp(secret)
        counter = int(now.timestamp()) // TOTP_INTERVAL
        found = None
        for step in range(counter - TOTP_VALID_STEPS, counter + TOTP_VALID_STEPS + 1):
            if hmac.compare_digest(totp.generate_otp(step), code):
                found = step  # no early exit: the same work whichever step matches
        return found

    def _consume_totp(self, name: str, step: int, now: datetime) -> bool:
        """Claim the step by unique insert; also refuse a step older than one already used (RFC 6238 5.2)."""
        later = [f"{name}:totp:{s}" for s in range(step + 1, step + 2 * TOTP_VALID_STEPS + 1)]
        if self.store.used_codes.find_one({"_id": {"$in": later}}, {"_id": 1}):
            return False
        # Kept until the code can no longer be accepted (its step, plus the drift allowance), then purged.
        expires = datetime.fromtimestamp((step + 2 * TOTP_VALID_STEPS + 1) * TOTP_INTERVAL, UTC)
        return self.store.claim(USED_CODES, {"_id": f"{name}:totp:{step}", "user": name, "kind": "totp",
                                             "ts": now, "expires": expires})

    def _consume_recovery(self, name: str, doc: dict[str, Any], code: str, now: datetime) -> bool:
        """A recovery code is single use: the unique insert of `{username}:{hash}` is the one use."""
        digest = _recovery_hash(name, code)
        if not any(hmac.compare_digest(digest, h) for h in doc.get("recovery_codes") or []):
            return False
        if not self.store.claim(USED_CODES, {"_id": f"{name}:{digest}", "user": name, "kind": "recovery", "ts": now}):
            return False
        # Tidy the list (best effort; the claim above is what keeps the code from working twice).
        token = self._acquire(name, wait=1.0)
        if token is not None:
            try:
                fresh = self.store.users.find_one({"_id": name}, {"recovery_codes": 1}) or {}
                left = [h for h in fresh.get("recovery_codes") or [] if h != digest]
                self.store.users.update_one({"_id": name}, {"$set": {"recovery_codes": left}})
            finally:
                self._release(name, token)
        return True

    # ----------------------------------------------------------------------------------------------- reset

    def request_reset(self, username_or_email: str) -> None:
        """Send a reset link to the account (by username, or every account with that e-mail, at most 5).

        Returns nothing and raises nothing, whether or not an account exists, has an e-mail or was sent too many
        links: the caller answers the same in every case, so the request never reveals an account.
        """
        key = username_or_email.strip().lower() if isinstance(username_or_email, str) else ""
        if not key:
            return
        now = self.clock()
        found: dict[str, dict[str, Any]] = {}
        doc = self.store.users.find_one({"_id": key})
        if doc:
            found[doc["_id"]] = doc
        if "@" in key:
            for doc in self.store.users.find({"email": key}).limit(RESET_MAX_ACCOUNTS):
                found.setdefault(doc["_id"], doc)
        for doc in list(found.values())[:RESET_MAX_ACCOUNTS]:
            self._send_reset(doc, now)

    def _send_reset(self, doc: dict[str, Any], now: datetime) -> None:
        name, email = doc["_id"], doc.get("email")
        if not email:
            log.info("password reset not sent: account has no e-mail")
            return
        if self.store.reset_tokens.count_documents({"user": name, "expires": {"$gt": now}}) >= RESET_MAX_LIVE:
            log.info("password reset not sent: too many live links")
            return
        token = secrets.token_urlsafe(RESET_TOKEN_BYTES)
        digest = _sha256(token)
        expires = now + RESET_TTL
        # Only the SHA-256 is stored: a copy of the database does not hold usable links.
        self.store.reset_tokens.insert_one({"_id": digest, "user": name, "created": now, "expires": expires})
        link = self.reset_url.format(token=token)
        body = (f"A password reset was requested for the account {name}.\n\n"
                f"To choose a new password, open this link within {int(RESET_TTL.total_seconds() // 60)} minutes "
                f"(it works once):\n\n{link}\n\n"
                "If you did not ask for this, ignore this message; your password stays the same.\n")
        try:
            self.notifier.send(email, "Reset your password", body, "password_reset",
                               {"user": name, "expires": expires.isoformat()})
        except Exception:  # a failing transport must not tell the caller that the account exists
            log.exception("password reset not sent: notifier failed")
            self.store.reset_tokens.delete_one({"_id": digest})

    def reset_password(self, token: str, new_password: str) -> str:
        """Set a new password with a reset token; returns the username.

        Valid once: the token is consumed by a unique insert of "reset:" + its hash into `auth_used_codes` before the
        password changes, so of concurrent uses exactly one proceeds; then its expiry is checked. A password the
        policy refuses does not consume the token. Invalid, used or expired -> UserError("invalid_token").
        """
        invalid = UserError("this reset link is invalid, used or expired; ask for a new one", "invalid_token", "token")
        if not isinstance(token, str) or not token or len(token) > 256:
            raise invalid
        digest = _sha256(token)
        doc = self.store.reset_tokens.find_one({"_id": digest})
        if doc is None:
            raise invalid
        name = doc["user"]
        check_password(new_password, name)
        hashed = self.hasher.hash(new_password)  # the slow part, before the token is spent
        now = self.clock()
        expires = _aware(doc["expires"])
        if not self.store.claim(USED_CODES, {"_id": "reset:" + digest, "user": name, "kind": "reset", "ts": now,
                                             "expires": expires}):
            raise invalid
        if expires <= now:
            raise invalid
        self._store_password(name, hashed)
        # Proven control of the mailbox: earlier failures stop counting; every other link for the account dies.
        self._mark_success(name, now)
        self.store.reset_tokens.delete_many({"user": name})
        return name

    # ----------------------------------------------------------------------------------------------- upkeep

    def purge(self, now: datetime | None = None) -> dict[str, int]:
        """Delete expired ledger rows, success markers, reset tokens, used-code markers and stale leases.

        FerretDB has no TTL indexes, so this runs on a timer; concurrent runs only delete what has expired.
        Recovery-code markers have no expiry: they outlive the code.
        """
        now = now or self.clock()
        horizon = now - max(self.limits.user_window, self.limits.ip_window)
        return {
            "login_failures": self.store.login_failures.delete_many({"ts": {"$lt": horizon}}).deleted_count,
            "login_successes": self.store.login_successes.delete_many(
                {"ts": {"$lt": now - self.limits.user_window}}).deleted_count,
            "reset_tokens": self.store.reset_tokens.delete_many({"expires": {"$lt": now}}).deleted_count,
            "used_codes": self.store.used_codes.delete_many({"expires": {"$lt": now}}).deleted_count,
            "locks": self.store.locks.delete_many({"until": {"$lt": _utcnow()}}).deleted_count,
        }

    # ----------------------------------------------------------------------------------------------- leases

    def _acquire(self, name: str, wait: float = LOCK_WAIT) -> str | None:
        """Take the user's write lease by unique insert; a lease past its `until` (holder died) is taken over.

        Leases use the real clock, not the injected one: they guard process liveness, not business time.
        """
        key = f"user:{name}"
        deadline = time.monotonic() + wait
        delay = 0.002
        while True:
            token = uuid.uuid4().hex
            t = _utcnow()
            if self.store.claim(LOCKS, {"_id": key, "owner": token, "ts": t, "until": t + LOCK_TTL}):
                return token
            held = self.store.locks.find_one({"_id": key})
            if held and _aware(held["until"]) < t:
                self.store.locks.delete_one({"_id": key, "owner": held["owner"]})
                continue
            if time.monotonic() >= deadline:
                return None
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _release(self, name: str, token: str) -> None:
        self.store.locks.delete_one({"_id": f"user:{name}", "owner": token})

    @contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        """Hold the user's write lease for one read-modify-write of the user document."""
        token = self._acquire(name)
        if token is None:
            raise UserBusy(name)
        try:
            yield
        finally:
            self._release(name, token)


__all__ = [
    "IP_MAX_FAILURES", "IP_WINDOW", "MIN_PASSWORD_LENGTH", "RECOVERY_CODE_COUNT", "RESET_TTL", "TOTP_INTERVAL",
    "TOTP_VALID_STEPS", "USER_MAX_FAILURES", "USER_WINDOW", "LoginLimits", "LoginResult", "User", "UserBusy",
    "UserError", "UserStore", "check_password", "client_key", "normalize_username",
]

"""How smart_auth reaches its collections: a plain `AuthStore(db)` over a pymongo `Database`.

Every collection the authorization server owns is named here once. The store adds one primitive, `claim`: the
unique insert, which is the only write that is atomic on FerretDB v1 and MongoDB alike (DESIGN.md, "Atomicity
without database transactions"). Everything in smart_auth that must not race (single-use codes, locks) is built on it.
"""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

USERS = "auth_users"
LOGIN_FAILURES = "auth_login_failures"
LOGIN_SUCCESSES = "auth_login_successes"
USED_CODES = "auth_used_codes"
RESET_TOKENS = "auth_reset_tokens"
LOCKS = "auth_locks"
OUTBOX = "outbox"
OUTBOX_CLAIMS = "outbox_claims"


class AuthStore:
    """The smart_auth collections of one database, by name; no state beyond the database handle."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def collection(self, name: str) -> Collection:
        """Any collection by name (the properties below are the ones smart_auth uses)."""
        return self.db[name]

    @property
    def users(self) -> Collection:
        """Accounts: `_id` is the username, so it is unique by construction."""
        return self.db[USERS]

    @property
    def login_failures(self) -> Collection:
        """Ledger of login attempts (pending or failed), one document per attempt, never updated by others."""
        return self.db[LOGIN_FAILURES]

    @property
    def login_successes(self) -> Collection:
        """Last successful login per user (`_id` = username): earlier failures stop counting."""
        return self.db[LOGIN_SUCCESSES]

    @property
    def used_codes(self) -> Collection:
        """Single-use markers (recovery codes, TOTP steps, reset tokens): inserting one is consuming it."""
        return self.db[USED_CODES]

    @property
    def reset_tokens(self) -> Collection:
        """Password reset tokens, stored only as their SHA-256 (`_id`)."""
        return self.db[RESET_TOKENS]

    @property
    def locks(self) -> Collection:
        """Short per-user leases that serialize writes to one user document."""
        return self.db[LOCKS]

    @property
    def outbox(self) -> Collection:
        """Messages waiting to be delivered (see smart_auth.notify)."""
        return self.db[OUTBOX]

    @property
    def outbox_claims(self) -> Collection:
        """One document per outbox message a relay has taken for delivery."""
        return self.db[OUTBOX_CLAIMS]

    def claim(self, name: str, doc: dict[str, Any]) -> bool:
        """Insert `doc` into collection `name`; False when its `_id` exists (someone else claimed it first)."""
        try:
            self.db[name].insert_one(doc)
            return True
        except DuplicateKeyError:
            return False

    def ensure_indexes(self) -> None:
        """Secondary indexes for the ledger scans and the e-mail lookup (used by MongoDB; FerretDB accepts them)."""
        self.login_failures.create_index([("user", ASCENDING), ("ts", ASCENDING)])
        self.login_failures.create_index([("ip", ASCENDING), ("ts", ASCENDING)])
        self.login_failures.create_index([("ts", ASCENDING)])
        self.users.create_index([("email", ASCENDING)])
        self.reset_tokens.create_index([("user", ASCENDING)])
        self.reset_tokens.create_index([("expires", ASCENDING)])
        self.used_codes.create_index([("expires", ASCENDING)])
        self.outbox.create_index([("status", ASCENDING), ("ts", ASCENDING)])

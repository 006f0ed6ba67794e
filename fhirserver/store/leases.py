"""Leases: short-lived exclusive holds taken by unique insert, with expiry, for work that must not run twice at once."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import timedelta

from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from fhirserver.errors import Conflict
from fhirserver.store.commit import now

LEASES = "leases"


class LeaseBusy(Conflict):
    """Another holder kept the lease for longer than we were willing to wait (409: try again)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"another request holds {name!r}; try again shortly")


class Leases:
    """Named leases in one collection: `_id` is the name, so only one holder can insert it."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def try_acquire(self, name: str, ttl: float) -> str | None:
        """Take the lease if it is free or expired; return a token for release, else None."""
        token = uuid.uuid4().hex
        t = now()
        try:
            self.db[LEASES].insert_one({"_id": name, "owner": token, "ts": t, "until": t + timedelta(seconds=ttl)})
            return token
        except DuplicateKeyError:
            held = self.db[LEASES].find_one({"_id": name})
            if held and held["until"].replace(tzinfo=t.tzinfo) < t:
                # Expired: remove exactly that holder's record, then race for a fresh insert.
                self.db[LEASES].delete_one({"_id": name, "owner": held["owner"]})
            return None

    def release(self, name: str, token: str) -> None:
        self.db[LEASES].delete_one({"_id": name, "owner": token})

    @contextmanager
    def hold_all(self, names: list[str], ttl: float = 30.0, wait: float = 10.0) -> Iterator[None]:
        """Hold several leases, taken in sorted order so that two holders never wait on each other."""
        with ExitStack() as stack:
            for name in sorted(set(names)):
                stack.enter_context(self.hold(name, ttl, wait))
            yield

    @contextmanager
    def hold(self, name: str, ttl: float = 30.0, wait: float = 10.0) -> Iterator[None]:
        """Hold lease `name` for the block, waiting up to `wait` seconds for it."""
        deadline = time.monotonic() + wait
        delay = 0.002
        while (token := self.try_acquire(name, ttl)) is None:
            if time.monotonic() > deadline:
                raise LeaseBusy(name)
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        try:
            yield
        finally:
            self.release(name, token)

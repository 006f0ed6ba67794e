"""Background jobs of the authorization server, each run by one process at a time under a lease: the purge of
expired codes, tokens, launches, sessions, login ledgers, keys and assertion `jti`s, and the outbox relay.

DESIGN.md "Scale": every background job is safe when several processes run it at once, "a lease taken by unique
insert, with expiry". The lease here is smart_auth's own (it imports nothing of fhirserver): a document in
`auth_job_leases` whose `_id` is the job's name; whoever inserts it holds the job until `until`. An expired lease is
deleted by `_id` and owner (only that holder's record) and raced for again by insert. The time a job last finished
is kept in `auth_job_runs`, so a job runs once per interval across all processes, not once per process.
Both jobs are correct without the lease too (purge deletes only what expired; the relay claims each message by
unique insert): the lease saves duplicate work, and a holder that dies simply lets its lease expire.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pymongo.database import Database
from pymongo.errors import DuplicateKeyError, PyMongoError

from smart_auth.notify import Notifier, relay_outbox

JOB_LEASES = "auth_job_leases"
JOB_RUNS = "auth_job_runs"
PURGE_INTERVAL = 600.0
RELAY_INTERVAL = 30.0

log = logging.getLogger("smart_auth.jobs")


class JobLease:
    """Named leases by unique insert, with expiry (seconds since the epoch from `clock`)."""

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.leases = db[JOB_LEASES]
        self.clock = clock

    def try_acquire(self, name: str, ttl: float) -> str | None:
        """The owner token of a fresh hold on `name`, or None while someone else holds it."""
        for _ in range(2):  # a second try only after deleting an expired holder's record
            owner = uuid.uuid4().hex
            now = self.clock()
            try:
                self.leases.insert_one({"_id": name, "owner": owner, "since": now, "until": now + ttl})
                return owner
            except DuplicateKeyError:
                held = self.leases.find_one({"_id": name})
                if held is None:
                    continue  # released in between: race for it again
                if held["until"] >= now:
                    return None
                self.leases.delete_one({"_id": name, "owner": held["owner"]})
        return None

    def release(self, name: str, owner: str) -> None:
        self.leases.delete_one({"_id": name, "owner": owner})


@dataclass(frozen=True)
class Job:
    """`run()` every `interval` seconds, by one process at a time; `ttl` bounds how long a holder keeps the lease."""

    name: str
    interval: float
    run: Callable[[], Any]
    ttl: float = 120.0


class Jobs:
    """The jobs of one process; `run_due()` runs each job that is due and whose lease it gets."""

    def __init__(self, db: Database, jobs: list[Job], clock: Callable[[], float] = time.time) -> None:
        self.lease = JobLease(db, clock)
        self.runs = db[JOB_RUNS]
        self.jobs = jobs
        self.clock = clock

    @property
    def tick(self) -> float:
        """How often to call `run_due`: the shortest interval."""
        return min((job.interval for job in self.jobs), default=PURGE_INTERVAL)

    def due(self, job: Job) -> bool:
        last = self.runs.find_one({"_id": job.name})
        return last is None or self.clock() - last["done"] >= job.interval

    def run_due(self) -> dict[str, Any]:
        """{job name: its result} of the jobs this call ran (not due, or held elsewhere: left out)."""
        results: dict[str, Any] = {}
        for job in self.jobs:
            try:
                if not self.due(job):
                    continue
                owner = self.lease.try_acquire(job.name, job.ttl)
                if owner is None:
                    continue
                try:
                    if self.due(job):  # another process may have finished it between our check and our lease
                        results[job.name] = job.run()
                        # only the lease holder writes the run record, so this plain upsert does not race
                        self.runs.update_one({"_id": job.name}, {"$set": {"done": self.clock()}}, upsert=True)
                finally:
                    self.lease.release(job.name, owner)
            except PyMongoError as exc:
                log.warning("smart_auth job %s failed: %s", job.name, type(exc).__name__)
            except Exception:  # one failing job must not stop the others, nor the upkeep thread
                log.exception("smart_auth job %s failed", job.name)
        return results


def auth_jobs(db: Database, purge: Callable[[], Any], transport: Notifier | None = None, *,
              purge_interval: float = PURGE_INTERVAL, relay_interval: float = RELAY_INTERVAL,
              clock: Callable[[], float] = time.time) -> Jobs:
    """The authorization server's jobs: `purge` (SmartAuth.purge) and, when a transport is configured, the relay
    of queued notifications from the outbox to it."""
    jobs = [Job("smart-auth-purge", purge_interval, purge)]
    if transport is not None:
        jobs.append(Job("smart-auth-outbox-relay", relay_interval, lambda: relay_outbox(db, transport)))
    return Jobs(db, jobs, clock)


__all__ = ["JOB_LEASES", "JOB_RUNS", "Job", "JobLease", "Jobs", "auth_jobs"]

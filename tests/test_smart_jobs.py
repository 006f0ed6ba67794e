"""smart_auth.jobs against a real FerretDB: the lease (one holder, expiry, release by owner only), jobs that run once
per interval across processes (several `Jobs` on one database, racing threads), the real purge of expired tokens
through the app's authorization server, and the outbox relay delivering each queued message exactly once."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from flask import Flask
from pymongo.database import Database

from smart_auth.jobs import JOB_LEASES, JOB_RUNS, Job, JobLease, Jobs, auth_jobs
from smart_auth.notify import QUEUED, SENT, OutboxNotifier
from smart_auth.tokens import ACCESS, TokenStore
from smart_auth.web import init_app
from tests.smart_helpers import fresh_database, together
from tests.test_users import Recorder


@pytest.fixture
def db(ferretdb) -> Iterator[Database]:
    yield from fresh_database(ferretdb.uri, "smartjobs")


def test_lease_has_one_holder_expires_and_is_released_by_its_owner_only(db: Database):
    now = [1000.0]
    lease = JobLease(db, clock=lambda: now[0])
    owners = together(12, lambda i: lease.try_acquire("job", ttl=30))
    holders = [o for o in owners if o]
    assert len(holders) == 1
    lease.release("job", "not-the-owner")
    assert lease.try_acquire("job", ttl=30) is None  # still held
    now[0] += 31  # the holder died: its lease expires and another process takes it over
    taken = lease.try_acquire("job", ttl=30)
    assert taken and taken != holders[0]
    lease.release("job", holders[0])  # the old holder's late release does not free the new hold
    assert db[JOB_LEASES].find_one({"_id": "job"})["owner"] == taken
    lease.release("job", taken)
    assert db[JOB_LEASES].count_documents({}) == 0


def test_a_job_runs_once_per_interval_across_processes(db: Database):
    now = [5000.0]
    runs: list[int] = []
    job = Job("count", interval=60, run=lambda: runs.append(1) or len(runs))
    processes = [Jobs(db, [job], clock=lambda: now[0]) for _ in range(8)]
    results = together(8, lambda i: processes[i].run_due())
    assert len(runs) == 1 and sum(1 for r in results if r) == 1
    assert all(not p.run_due() for p in processes)  # not due again yet
    now[0] += 61
    results = together(8, lambda i: processes[i].run_due())
    assert len(runs) == 2 and sum(1 for r in results if r) == 1
    assert processes[0].tick == 60


def test_a_failing_job_releases_its_lease_and_the_others_run(db: Database):
    def boom() -> None:
        raise RuntimeError("job failed")

    jobs = Jobs(db, [Job("boom", interval=1, run=boom), Job("fine", interval=1, run=lambda: "ok")])
    assert jobs.run_due() == {"fine": "ok"}
    assert db[JOB_LEASES].count_documents({}) == 0  # the next run is not blocked by a dead hold
    assert db[JOB_RUNS].find_one({"_id": "boom"}) is None  # and it counts as not run: due again


def test_purge_job_of_the_app_deletes_expired_tokens(db: Database):
    old = TokenStore(db, clock=lambda: 1000.0)  # issued long ago: expired by days
    expired, _ = old.issue(kind=ACCESS, grant="g-old", client_id="c", scope="patient/*.rs", grant_type="x",
                           aud="http://x/fhir", ttl=60)
    live, _ = TokenStore(db).issue(kind=ACCESS, grant="g-new", client_id="c", scope="patient/*.rs", grant_type="x",
                                   aud="http://x/fhir", ttl=3600)
    smart = init_app(Flask("jobs-test"), db, SimpleNamespace(base_url="http://x/fhir", secret_key="k" * 32))
    assert smart.jobs is not None and [j.name for j in smart.jobs.jobs] == ["smart-auth-purge"]
    results = smart.jobs.run_due()
    assert results["smart-auth-purge"]["tokens"] == 1
    assert TokenStore(db).find(expired) is None and TokenStore(db).active(live) is not None
    assert smart.jobs.run_due() == {}  # ran: not due for another interval


def test_outbox_relay_delivers_each_message_once(db: Database):
    outbox = OutboxNotifier(db)
    for i in range(6):
        outbox.send(f"user{i}@example.org", f"message {i}", "body", "test", {})
    inbox = Recorder()
    clock = [0.0]
    processes = [auth_jobs(db, purge=lambda: {}, transport=inbox, clock=lambda: clock[0]) for _ in range(4)]
    assert [j.name for j in processes[0].jobs] == ["smart-auth-purge", "smart-auth-outbox-relay"]
    together(4, lambda i: processes[i].run_due())
    assert sorted(to for to, _ in inbox.sent) == [f"user{i}@example.org" for i in range(6)]
    statuses = [m["status"] for m in db["outbox"].find({})]
    assert statuses.count(SENT) == 6 and QUEUED not in statuses
    outbox.send("late@example.org", "later", "body", "test", {})
    assert "smart-auth-outbox-relay" not in processes[1].run_due()  # relayed 0 s ago: not due
    clock[0] += 31
    assert processes[2].run_due()["smart-auth-outbox-relay"] == 1
    assert inbox.sent[-1] == ("late@example.org", "later")

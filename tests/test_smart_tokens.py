"""Token records against a real FerretDB: single use by unique insert under a race, revocation of a grant racing the
issue of new tokens in it, and the patient-list cache of the token verifier."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pymongo.database import Database

from smart_auth.server import PatientDirectory
from smart_auth.tokens import ACCESS, Context, TokenStore
from smart_auth.users import User
from tests.smart_helpers import fresh_database, together


@pytest.fixture
def db(ferretdb) -> Iterator[Database]:
    yield from fresh_database(ferretdb.uri, "smarttok")


def test_consume_has_exactly_one_winner(db: Database):
    tokens = TokenStore(db)
    wins = together(16, lambda i: tokens.consume("code:abc", 2e9))
    assert wins.count(True) == 1
    assert tokens.was_consumed("code:abc") and not tokens.was_consumed("code:other")


def test_revocation_racing_issue_leaves_no_live_token(db: Database):
    """Insert-then-check: a token issued while its grant is revoked is either flagged by the revocation or sees the
    revocation marker and flags itself; none stays usable."""
    tokens = TokenStore(db)

    def work(i: int):
        if i == 5:
            tokens.revoke_grant("g1", "test")
            return "revoked"
        return tokens.issue(kind=ACCESS, grant="g1", client_id="c", scope="patient/*.rs", grant_type="x",
                            aud="http://x/fhir", ttl=60, context=Context(patient="p"))

    results = together(12, work)
    assert db["auth_tokens"].count_documents({"grant": "g1", "revoked": False}) == 0
    for result in results:
        if isinstance(result, tuple):
            assert tokens.active(result[0]) is None
    after = tokens.issue(kind=ACCESS, grant="g1", client_id="c", scope="s", grant_type="x", aud="a", ttl=60)
    assert after is None  # a revoked grant issues nothing more


def test_token_records_round_trip_and_expire(db: Database):
    now = [1_000.0]
    tokens = TokenStore(db, clock=lambda: now[0])
    secret, record = tokens.issue(kind=ACCESS, grant="g", client_id="c", scope="user/*.rs", grant_type="code",
                                  aud="http://x/fhir", ttl=60, user_id="mum", claims={"client_id": "c"},
                                  context=Context(patient="p1", fhir_user="Patient/m", amr=("pwd",)))
    found = tokens.active(secret)
    assert found == record and found.context.amr == ("pwd",) and found.get_expires_in() == 60
    assert db["auth_tokens"].find_one({"_id": secret}) is None  # stored only as its hash
    now[0] += 60
    assert tokens.active(secret) is None and tokens.find(secret) is not None
    now[0] += 86400 * 2
    assert tokens.purge()["tokens"] == 1


def test_patient_directory_caches_briefly():
    calls: list[str] = []
    clock = [0.0]

    class Users:
        def get(self, username: str) -> User | None:
            return User(username, "Patient/m", None, None, (), False, 0, None)

    def patients_for(user: User) -> list[tuple[str, str]]:
        calls.append(user.username)
        return [("Patient/m", "Me"), ("Patient/k", "Kid"), ("Observation/x", "not a patient")]

    directory = PatientDirectory(Users(), patients_for, ttl=5.0, clock=lambda: clock[0])  # type: ignore[arg-type]
    user, refs = directory.lookup("mum")
    assert refs == ("Patient/m", "Patient/k") and user is not None
    directory.lookup("mum")
    assert len(calls) == 1
    clock[0] = 5.1
    directory.lookup("mum")
    assert len(calls) == 2
    assert directory.may_act_for(user, "k", refs) and not directory.may_act_for(user, "z", refs)

"""The commit record carries no resource text: a commit that dies after its decision is rolled forward with the
texts of its history records, inline or external entries alike, and records in the older shape (texts inside)
still recover."""

from __future__ import annotations

import uuid

import pytest

from fhirserver.store import commit as commit_module
from fhirserver.store.commit import Version, now
from fhirserver.store.database import Store


class _Killed(Exception):
    pass


def _die(*_args, **_kwargs):
    raise _Killed


def _version(rid: str, n: int = 1) -> Version:
    text = f'{{"resourceType":"Basic","id":"{rid}","meta":{{"versionId":"{n}"}},"text":"{rid * 40}"}}'
    return Version("Basic", rid, n, now(), text, "PUT", {"code": [f"c|{rid}"]}, [f"Patient/{rid}"])


@pytest.fixture
def store(ferretdb):
    s = Store(ferretdb.uri, f"recovery{uuid.uuid4().hex[:8]}")
    yield s
    s.db.client.drop_database(s.db.name)
    s.close()


@pytest.mark.parametrize("inline", [True, False])
def test_decided_commit_rolls_forward_from_history_texts(store, monkeypatch, inline):
    committer, db = store.committer, store.db
    if not inline:
        monkeypatch.setattr(commit_module, "INLINE_LIMIT", 0)  # every entry in COMMIT_ENTRIES
    versions = [_version(f"r{k}") for k in range(5)]

    monkeypatch.setattr(committer, "_apply", _die)
    with pytest.raises(_Killed):
        committer.commit(versions)
    record = db[commit_module.COMMITS].find_one({})
    entries = record.get("entries") or [d["e"] for d in db[commit_module.COMMIT_ENTRIES].find({})]
    assert len(entries) == 5 and all("text" not in e for e in entries)
    assert ("entries" in record) is inline
    assert db.Basic.count_documents({}) == 0  # nothing current yet
    monkeypatch.undo()

    assert committer.recover(all_stale=True)["rolled-forward"] == 1
    for v in versions:
        doc = db.Basic.find_one({"_id": v.id})
        assert doc["text"] == v.text and doc["idx"] == v.idx and doc["comp"] == v.comp and doc["v"] == 1
    assert db[commit_module.COMMITS].count_documents({}) == 0
    assert db[commit_module.COMMIT_ENTRIES].count_documents({}) == 0


def test_undecided_commit_rolls_back_without_reading_texts(store, monkeypatch):
    committer, db = store.committer, store.db
    monkeypatch.setattr(committer, "_decide", _die)
    with pytest.raises(_Killed):
        committer.commit([_version("a"), _version("b")])
    monkeypatch.undo()
    assert committer.recover(all_stale=True)["rolled-back"] == 1
    assert db.history.count_documents({}) == 0 and db.Basic.count_documents({}) == 0


def test_record_of_the_older_shape_still_recovers(store):
    """A record written before entries lost their text (texts inside) rolls forward with those texts."""
    committer, db = store.committer, store.db
    v = _version("old")
    cid = uuid.uuid4().hex
    db.history.insert_one(v.history_doc(cid))
    db.decisions.insert_one({"_id": cid, "outcome": "committed", "ts": now()})
    db.commits.insert_one({"_id": cid, "ts": now(), "solo": False, "keys": [v.key],
                           "entries": [{**v.entry(), "text": v.text}]})
    assert committer.recover(all_stale=True)["rolled-forward"] == 1
    assert db.Basic.find_one({"_id": "old"})["text"] == v.text

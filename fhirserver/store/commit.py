"""The commit protocol: all-or-nothing writes of one or many resource versions without database transactions.

The only atomic primitive is the unique insert (DESIGN.md, "Atomicity"). A commit:
1. inserts a commit record (`commits`, pending) naming every version it will write, with their search index and
   compartments (their text goes only into their history records, where recovery reads it);
2. claims each version by inserting its history record `Type/id/version` (a duplicate means someone else owns it);
3. for several versions, inserts its decision `committed` (`decisions`, unique per commit: recovery may insert
   `aborted` first, and then the owner backs off); for one version the claim itself is the decision;
4. applies the current documents, then deletes its commit record (and decision).
A commit may also carry unique claims (documents in other collections, e.g. "this key is taken"), inserted in step 2
under the commit id (field `c`) and deleted again on rollback, and releases (deletions of claims by key and holding
commit) done in step 4, so that taking one key and giving up another is all-or-nothing too.
Recovery, at start-up and on a timer in every process, rolls stale commits forward when decided and back otherwise
(deleting their claims). History records of a commit whose record still exists are not visible.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import orjson
from pymongo import ReplaceOne
from pymongo.database import Database
from pymongo.errors import BulkWriteError, DuplicateKeyError

from fhirserver.store.variants import Variants

log = logging.getLogger("fhirserver.store.commit")

HISTORY = "history"
COMMITS = "commits"
DECISIONS = "decisions"
COMMIT_ENTRIES = "commit_entries"
INLINE_LIMIT = 4 * 1024 * 1024  # bytes of entries kept inside the commit record; more go to COMMIT_ENTRIES


def now() -> datetime:
    """The current time in UTC, at millisecond precision (what BSON dates keep)."""
    t = datetime.now(UTC)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


@dataclass
class Version:
    """One version to write: its content as served (None for a delete) and its search index and compartments."""

    type: str
    id: str
    version: int
    ts: datetime
    text: str | None
    method: str
    idx: dict = field(default_factory=dict)
    comp: list[str] = field(default_factory=list)
    srt: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.type}/{self.id}/{self.version}"

    @property
    def deleted(self) -> bool:
        return self.text is None

    def current_doc(self) -> dict:
        doc = {"_id": self.id, "v": self.version, "ts": self.ts, "text": self.text, "del": self.deleted}
        if not self.deleted:
            doc["idx"] = self.idx
            doc["comp"] = self.comp
            doc["srt"] = self.srt
        return doc

    def history_doc(self, cid: str) -> dict:
        return {"_id": self.key, "t": self.type, "rid": self.id, "v": self.version, "ts": self.ts,
                "text": self.text, "del": self.deleted, "m": self.method, "c": cid, "comp": self.comp}

    def entry(self) -> dict:
        """The version in its commit record, without its text (the history record holds that)."""
        return {"t": self.type, "id": self.id, "v": self.version, "ts": self.ts, "m": self.method, "idx": self.idx,
                "comp": self.comp, "srt": self.srt}

    @classmethod
    def from_entry(cls, e: dict, text: str | None) -> Version:
        return cls(e["t"], e["id"], e["v"], e["ts"], text, e["m"], e.get("idx") or {}, e.get("comp") or [],
                   e.get("srt") or {})


@dataclass
class Claim:
    """A unique document `key` in collection `coll` inserted under the commit. `replaced` is an existing claim
    document on the key that this commit takes over: deleted by key and holder (`c`) first, and put back when the
    commit is rolled back (unless someone else has taken the key meanwhile)."""

    coll: str
    key: str
    fields: dict = field(default_factory=dict)
    replaced: dict | None = None

    def to_json(self) -> dict:
        return {"coll": self.coll, "key": self.key, "fields": self.fields, "replaced": self.replaced}


@dataclass
class Release:
    """Delete claim `key` of `coll` held by commit `holder` (nothing when someone else holds it now)."""

    coll: str
    key: str
    holder: str

    def to_json(self) -> dict:
        return {"coll": self.coll, "key": self.key, "holder": self.holder}


class ClaimTaken(Exception):
    """A claim of this commit exists already (held by another commit); nothing of this commit was applied."""

    def __init__(self, coll: str, key: str) -> None:
        super().__init__(f"{key} is held by another request")
        self.coll = coll
        self.key = key


class VersionConflict(Exception):
    """A version was claimed by another writer first; nothing of this commit was applied."""

    def __init__(self, key: str) -> None:
        super().__init__(f"version {key} was written by another request first")
        self.key = key


class CommitAborted(Exception):
    """Recovery judged this commit stale and rolled it back before it was decided; nothing was applied."""


def _insert_ignoring_duplicates(coll, docs: list[dict]) -> None:
    """Insert documents; one whose _id exists already was applied before (a re-run) and is left alone."""
    try:
        coll.insert_many(docs, ordered=False)
    except BulkWriteError as exc:
        if any(e.get("code") != 11000 for e in exc.details.get("writeErrors") or []):
            raise


def _size(entries: list[dict]) -> int:
    return sum(len(orjson.dumps(e["idx"], default=str)) * 2 + 512 for e in entries)


class Committer:
    """Writes commits and recovers interrupted ones on one database."""

    def __init__(self, db: Database, stale_after: float = 30.0) -> None:
        self.db = db
        self.stale_after = stale_after
        self.variants = Variants(db)

    # -- writing ---------------------------------------------------------------------------------------------
    def commit(self, versions: list[Version], claims: list[Claim] | None = None,
               releases: list[Release] | None = None) -> None:
        """Write all `versions`, `claims` and `releases` or none; raise VersionConflict, ClaimTaken or
        CommitAborted when none were written."""
        claims, releases = claims or [], releases or []
        if not versions and not claims and not releases:
            return
        for v in versions:
            self.variants.record(v.type, v.idx)  # before the documents become visible to searches
        cid = uuid.uuid4().hex
        solo = len(versions) == 1 and not claims and not releases
        entries = [v.entry() for v in versions]
        record: dict = {"_id": cid, "ts": now(), "solo": solo, "keys": [v.key for v in versions]}
        if claims or releases:
            record["claims"] = [c.to_json() for c in claims]
            record["releases"] = [r.to_json() for r in releases]
        if _size(entries) <= INLINE_LIMIT:
            record["entries"] = entries
        else:
            self.db[COMMIT_ENTRIES].insert_many(
                [{"_id": f"{cid}/{n}", "c": cid, "n": n, "e": e} for n, e in enumerate(entries)], ordered=False)
            record["external"] = len(entries)
        self.db[COMMITS].insert_one(record)
        # New claims go first (losing a claim race then costs the fewest writes); takeovers delete a claim, and
        # FerretDB deletes what matched a moment before by _id alone, so they wait until this commit owns its
        # versions: two takeovers of one key then never run at once when both also write the same version.
        fresh = [c for c in claims if not c.replaced]
        self._take(cid, fresh, [], [])
        self._claim(cid, versions, fresh)
        self._take(cid, [c for c in claims if c.replaced], record["keys"], fresh)
        if not solo:
            self._decide(cid, "committed")
        self._release(releases)
        self._apply(versions)
        self._forget(cid, record)

    def _claim(self, cid: str, versions: list[Version], claims: list[Claim]) -> None:
        """Insert every history record; on a duplicate, undo our claims and the record, then raise."""
        docs = [v.history_doc(cid) for v in versions]
        try:
            self.db[HISTORY].insert_many(docs, ordered=True)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors") or []
            dup = next((e for e in errors if e.get("code") == 11000), None)
            if dup is None:
                raise
            failed = docs[dup["index"]]["_id"]
            self._undo(cid, [d["_id"] for d in docs[:dup["index"]]], claims)
            raise VersionConflict(failed) from None

    def _take(self, cid: str, claims: list[Claim], keys: list[str], taken: list[Claim]) -> None:
        """Insert every claim under the commit; on a duplicate, undo the commit so far (history `keys`, claims
        `taken` before), then raise ClaimTaken."""
        for n, claim in enumerate(claims):
            if claim.replaced:
                self.db[claim.coll].delete_one({"_id": claim.key, "c": claim.replaced["c"]})
            try:
                self.db[claim.coll].insert_one({**claim.fields, "_id": claim.key, "c": cid})
            except DuplicateKeyError:
                self._undo(cid, keys, taken + claims[:n + 1])
                raise ClaimTaken(claim.coll, claim.key) from None

    def _undo(self, cid: str, keys: list[str], claims: Iterable[Claim | dict]) -> None:
        """Delete this undecided commit's history records and claims, then its record (a decision `aborted`
        that recovery may have written goes with the record, or later as an orphan)."""
        if keys:
            self.db[HISTORY].delete_many({"_id": {"$in": keys}, "c": cid})
        by_coll: dict[str, list[str]] = defaultdict(list)
        replaced: list[tuple[str, dict]] = []
        for c in claims:
            coll, key, old = (c.coll, c.key, c.replaced) if isinstance(c, Claim) else \
                (c["coll"], c["key"], c.get("replaced"))
            by_coll[coll].append(key)
            if old:
                replaced.append((coll, old))
        for coll, ids in by_coll.items():
            self.db[coll].delete_many({"_id": {"$in": ids}, "c": cid})
        for coll, old in replaced:
            try:
                self.db[coll].insert_one(old)
            except DuplicateKeyError:
                pass  # still there (never deleted), or taken by someone else since
        self.db[COMMITS].delete_one({"_id": cid})

    def _release(self, releases: Iterable[Release | dict]) -> None:
        """Delete released claims by key and holder (idempotent: a re-run deletes nothing more)."""
        for r in releases:
            coll, key, holder = (r.coll, r.key, r.holder) if isinstance(r, Release) else \
                (r["coll"], r["key"], r["holder"])
            self.db[coll].delete_one({"_id": key, "c": holder})

    def _decide(self, cid: str, outcome: str) -> str:
        """Insert the commit's decision unless one exists; return the decision that stands."""
        try:
            self.db[DECISIONS].insert_one({"_id": cid, "outcome": outcome, "ts": now()})
            return outcome
        except DuplicateKeyError:
            found = self.db[DECISIONS].find_one({"_id": cid})
            standing = found["outcome"] if found else outcome
            if standing != outcome and outcome == "committed":
                raise CommitAborted(f"commit {cid} was rolled back as stale") from None
            return standing

    def _apply(self, versions: Iterable[Version]) -> None:
        """Make each version the current document unless a newer one is already there (idempotent)."""
        by_type: dict[str, list[Version]] = defaultdict(list)
        for v in versions:
            by_type[v.type].append(v)
        for rtype, group in by_type.items():
            coll = self.db[rtype]
            # FerretDB answers an upsert that hits a duplicate _id without nModified, which breaks pymongo's bulk
            # results; so first versions are inserted and later ones replace a strictly older current document.
            fresh = [v for v in group if v.version == 1]
            later = [v for v in group if v.version > 1]
            if fresh:
                _insert_ignoring_duplicates(coll, [v.current_doc() for v in fresh])
            if later:
                # Filter by _id alone: FerretDB scans the whole collection for any other filter. Its conditional
                # replace is read-then-write anyway (DESIGN.md, "Atomicity"), so reading v first loses nothing.
                current = {v.id: coll.find_one({"_id": v.id}, {"v": 1}) for v in later}
                ops = [ReplaceOne({"_id": v.id}, v.current_doc()) for v in later
                       if current[v.id] is not None and current[v.id]["v"] < v.version]
                if ops:
                    coll.bulk_write(ops, ordered=False)
                missing = [v.current_doc() for v in later if current[v.id] is None]
                if missing:
                    _insert_ignoring_duplicates(coll, missing)

    def _forget(self, cid: str, record: dict) -> None:
        """Delete the commit's bookkeeping; its history records become visible."""
        self.db[COMMITS].delete_one({"_id": cid})
        self.db[DECISIONS].delete_one({"_id": cid})
        if record.get("external"):
            self.db[COMMIT_ENTRIES].delete_many({"c": cid})

    # -- recovery --------------------------------------------------------------------------------------------
    def _versions(self, record: dict) -> list[Version]:
        """The versions of a decided commit: its entries with their texts from their history records (all inserted
        before the decision; records written before entries lost their text still carry it)."""
        if "entries" in record:
            entries = record["entries"]
        else:
            parts = sorted(self.db[COMMIT_ENTRIES].find({"c": record["_id"]}), key=lambda d: d["n"])
            if len(parts) != record.get("external"):
                return []  # the record was written before all its entries: nothing can have been claimed
            entries = [p["e"] for p in parts]
        out = []
        for e in entries:
            if "text" in e:
                out.append(Version.from_entry(e, e["text"]))
                continue
            key = f"{e['t']}/{e['id']}/{e['v']}"
            found = self.db[HISTORY].find_one({"_id": key}, {"text": 1})
            if found is None:
                log.error("a decided commit lacks a history record", extra={"commit": record["_id"], "key": key})
                continue
            out.append(Version.from_entry(e, found.get("text")))
        return out

    def recover_one(self, record: dict) -> str:
        """Finish or undo one commit; return 'rolled-forward', 'rolled-back' or 'finished' (by its owner)."""
        cid = record["_id"]
        if record.get("solo"):
            claim = self.db[HISTORY].find_one({"_id": record["keys"][0]}, {"c": 1})
            outcome = "committed" if claim and claim.get("c") == cid else "aborted"
        else:
            outcome = self._decide(cid, "aborted")
            if outcome == "aborted" and self.db[COMMITS].find_one({"_id": cid}, {"_id": 1}) is None:
                # The owner finished and forgot the commit (its decision first gone) after we read the record:
                # nothing to undo, and undoing would delete a finished commit's history records and claims.
                self.db[DECISIONS].delete_one({"_id": cid})
                return "finished"
        versions = self._versions(record) if outcome == "committed" else []
        if outcome == "committed" and (versions or not record["keys"]):
            self._release(record.get("releases") or [])
            self._apply(versions)
            result = "rolled-forward"
        else:
            self._undo(cid, record["keys"], record.get("claims") or [])
            result = "rolled-back"
        self._forget(cid, record)
        log.info("recovered commit", extra={"commit": cid, "result": result, "versions": len(record["keys"])})
        return result

    def recover(self, all_stale: bool = False) -> dict[str, int]:
        """One recovery pass over stale commits: decided ones forward, the others back. Safe in many processes."""
        counts = {"rolled-forward": 0, "rolled-back": 0, "finished": 0}
        cutoff = now() - timedelta(seconds=0 if all_stale else self.stale_after)
        # Decided commits are finished by their owner within moments; rolling them forward while the owner still
        # runs would repeat its releases (deletes), which FerretDB may apply to a claim taken since: wait until stale.
        for record in self.db[COMMITS].find({}):
            if record["ts"].replace(tzinfo=UTC) <= cutoff:
                counts[self.recover_one(record)] += 1
        orphans = [d["_id"] for d in self.db[DECISIONS].find({"ts": {"$lte": cutoff}}, {"_id": 1})
                   if not self.db[COMMITS].find_one({"_id": d["_id"]}, {"_id": 1})]
        if orphans:
            self.db[DECISIONS].delete_many({"_id": {"$in": orphans}})
        return counts

    def unblock(self, key: str) -> bool:
        """A claim on `key` blocks a writer: recover its commit if stale. True when it was cleared."""
        claim = self.db[HISTORY].find_one({"_id": key}, {"c": 1})
        if not claim:
            return True
        record = self.db[COMMITS].find_one({"_id": claim.get("c")})
        if record is None:
            return False  # a finished commit: a real conflict
        if record["ts"].replace(tzinfo=UTC) > now() - timedelta(seconds=self.stale_after):
            return False
        self.recover_one(record)
        return True

    def pending_commit_ids(self, cids: Iterable[str]) -> set[str]:
        """Which of these commits are still in flight (their history records are not yet visible)."""
        wanted = list(set(cids))
        if not wanted:
            return set()
        return {d["_id"] for d in self.db[COMMITS].find({"_id": {"$in": wanted}}, {"_id": 1})}


def wait_a_little(attempt: int) -> None:
    """Back off between retries of a conflicting write."""
    time.sleep(min(0.002 * (2**attempt), 0.1))

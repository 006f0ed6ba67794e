"""Reading stored resources: current documents, past versions and history, as stored JSON text."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime

from pymongo.database import Database

from fhirserver.store.commit import HISTORY, Committer
from fhirserver.store.variants import Shapes


@dataclass(frozen=True)
class Stored:
    """One version of a resource as stored: its text is served as it is (None for a delete)."""

    type: str
    id: str
    version: int
    ts: datetime
    text: str | None
    method: str = ""
    # the search index fields read along with it, when asked for (every asked code present)
    idx: dict | None = field(default=None, compare=False, hash=False)

    @property
    def deleted(self) -> bool:
        return self.text is None


def _stored(rtype: str, doc: dict, index: tuple[str, ...] = ()) -> Stored:
    idx = {code: (doc.get("idx") or {}).get(code, []) for code in index} if index else None
    return Stored(rtype, doc["_id"] if "rid" not in doc else doc["rid"], doc["v"], doc["ts"], doc.get("text"),
                  doc.get("m", ""), idx)


def _history_query(rtype: str | None, rid: str | None, since: datetime | None, at: datetime | None) -> dict:
    query: dict = {}
    if rtype:
        query["t"] = rtype
    if rid:
        query["rid"] = rid
    ts: dict = {}
    if since:
        ts["$gte"] = since
    if at:
        ts["$lte"] = at
    if ts:
        query["ts"] = ts
    return query


ID_LOOKUPS = 200  # up to this many ids, `_id $in` is asked as one lookup per id


def _id_list(query: dict) -> list[str] | None:
    """The ids of a filter that is `_id $in [...]` alone or with `del: false`, when few enough; else None."""
    ids = (query.get("_id") or {}).get("$in") if isinstance(query.get("_id"), dict) else None
    if not isinstance(ids, list) or len(ids) > ID_LOOKUPS or set(query) - {"_id", "del"}:
        return None
    if "del" in query and query["del"] is not False or set(query["_id"]) != {"$in"}:
        return None
    return [i for i in ids if isinstance(i, str)] if all(isinstance(i, str) for i in ids) else None


class ResourceReader:
    """Reads of current documents and history records."""

    def __init__(self, db: Database, committer: Committer) -> None:
        self.db = db
        self.committer = committer

    def current(self, rtype: str, rid: str) -> Stored | None:
        """The current version (possibly a delete), or None when the resource never existed."""
        doc = self.db[rtype].find_one({"_id": rid}, {"idx": 0, "comp": 0, "srt": 0})
        return _stored(rtype, doc) if doc else None

    def version(self, rtype: str, rid: str, version: int) -> Stored | None:
        """One committed version, or None."""
        cur = self.current(rtype, rid)
        if cur is None or version > cur.version or version < 1:
            return None
        if version == cur.version:
            return cur
        doc = self.db[HISTORY].find_one({"_id": f"{rtype}/{rid}/{version}"})
        return _stored(rtype, doc) if doc else None

    def history(self, *, rtype: str | None = None, rid: str | None = None, since: datetime | None = None,
                at: datetime | None = None, before: tuple[datetime, str] | None = None,
                limit: int = 50, within: dict | None = None) -> list[Stored]:
        """Committed versions, newest first; `before` is the (ts, key) of the last record of the previous page."""
        query = _history_query(rtype, rid, since, at)
        if before:
            query["$or"] = [{"ts": {"$lt": before[0]}}, {"ts": before[0], "_id": {"$lt": before[1]}}]
        if within is not None:
            query = {"$and": [query, within]}
        docs = list(self.db[HISTORY].find(query).sort([("ts", -1), ("_id", -1)]).limit(limit + 5))
        pending = self.committer.pending_commit_ids(d.get("c") for d in docs)
        visible = [d for d in docs if d.get("c") not in pending][:limit]
        return [_stored(d["t"], d) for d in visible]

    def find(self, rtype: str, query: dict, limit: int, sort: list[tuple[str, int]] | None = None,
             index: tuple[str, ...] = ()) -> list[Stored]:
        """Current documents matching a compiled search filter, in `sort` order (default `_id`), with the search
        index fields `index` read along (for `_include`: no second read of the matches)."""
        projection: dict = {"v": 1, "ts": 1, "text": 1, "del": 1, **{f"idx.{c}": 1 for c in index}} if index else \
            {"idx": 0, "comp": 0, "srt": 0}
        if sort is None and (ids := _id_list(query)) is not None:
            return [_stored(rtype, d, index) for d in self._by_ids(rtype, ids, projection, query)[:limit]]
        docs = self.db[rtype].find(query, projection).sort(sort or [("_id", 1)]).limit(limit)
        return [_stored(rtype, d, index) for d in docs]

    def _by_ids(self, rtype: str, ids: list[str], projection: dict, query: dict) -> list[dict]:
        """`{_id: {$in: ids}[, del: false]}` as one `_id` lookup per id, in `_id` order: FerretDB pushes `_id`
        equality alone down to SQL, never `$in`, so the list form reads the whole collection."""
        keep_deleted = "del" not in query
        if any(v == 0 for v in projection.values()):
            fields = projection
        else:
            fields = {**projection, "del": 1}
        docs = (self.db[rtype].find_one({"_id": rid}, fields) for rid in sorted(set(ids)))
        return [d for d in docs if d is not None and (keep_deleted or not d.get("del"))]

    def find_raw(self, rtype: str, query: dict, projection: dict, limit: int = 0,
                 sort: list[tuple[str, int]] | None = None) -> list[dict]:
        """Raw current documents (for index fields such as `idx.subject` or sort keys), not resources."""
        if sort is None and (ids := _id_list(query)) is not None:
            found = self._by_ids(rtype, ids, projection, query)
            return found[:limit] if limit else found
        cursor = self.db[rtype].find(query, projection)
        if sort:
            cursor = cursor.sort(sort)
        return list(cursor.limit(limit) if limit else cursor)

    def count(self, rtype: str, query: dict) -> int:
        """How many current documents match."""
        return self.db[rtype].count_documents(query)

    def shapes(self, rtype: str) -> Shapes:
        """The index key shapes that exist in `rtype` (variant keys, parameters holding absolute URLs)."""
        return self.committer.variants.shapes(rtype)

    def scan(self, rtype: str, batch: int = 500) -> Iterator[list[dict]]:
        """Every current document of `rtype` (id, version, text, deleted), in `_id` order, a batch at a time."""
        after = None
        while True:
            query = {"_id": {"$gt": after}} if after is not None else {}
            docs = list(self.db[rtype].find(query, {"v": 1, "text": 1, "del": 1}).sort("_id", 1).limit(batch))
            if not docs:
                return
            yield docs
            after = docs[-1]["_id"]

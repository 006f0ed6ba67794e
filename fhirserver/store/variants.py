"""The shapes index keys take somewhere in a resource type, so that searches test only the shapes that exist.

- Range and composite parameters with more than one value (their `code~n` index keys): searches test every variant
  key that exists.
- Parameters with an absolute URL among their values (`absolute/<Type>/<code>`): only then must a reference search
  also test the absolute form of `Type/id` on this server's base.
- The types that relative references of a parameter point to (`targets/<Type>/<code>/<Target>`): a search by bare
  id (`patient=123`) tests only those, so it is usually one plain equality, which FerretDB pushes down to SQL.

Writers record a new shape before their documents become visible, by unique insert in `schema`, so it is safe in
many processes. Readers keep the shapes of a type in memory with the token of its stamp (`shapes-stamp/<Type>`): a
writer deletes the stamp after inserting a new shape, a reader takes (or makes) the stamp before reading the shapes,
so a cached token that is still the stamp's proves that no shape came since. One `_id` lookup per search instead of
a scan of `schema`.
"""

from __future__ import annotations

import re
import threading
import uuid
from dataclasses import dataclass, field

from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

SCHEMA = "schema"


def counts_in(idx: dict) -> dict[str, int]:
    """Variant counts of one index: `{"date": 3}` when keys date, date~1, date~2 exist (only counts above 1)."""
    counts: dict[str, int] = {}
    for key in idx:
        code, sep, n = key.rpartition("~")
        if sep and n.isdigit():
            counts[code] = max(counts.get(code, 1), int(n) + 1)
    return counts


_TARGET = re.compile(r"^([A-Z][A-Za-z]+)/[^/]+$")


def references_in(idx: dict) -> tuple[set[str], set[tuple[str, str]]]:
    """The index keys of `idx` with an absolute URL among their string values, and the (key, type) pairs of its
    relative `Type/id` values."""
    absolute: set[str] = set()
    targets: set[tuple[str, str]] = set()
    for key, value in idx.items():
        for v in value if isinstance(value, list) else [value]:
            if not isinstance(v, str):
                continue
            if "://" in v:
                absolute.add(key)
            elif (m := _TARGET.match(v)) is not None:
                targets.add((key, m.group(1)))
    return absolute, targets


@dataclass(frozen=True)
class Shapes:
    """What `Variants.shapes` knows of one resource type."""

    counts: dict[str, int] = field(default_factory=dict)
    absolute: frozenset[str] = frozenset()
    targets: dict[str, frozenset[str]] = field(default_factory=dict)


def _stamp(rtype: str) -> str:
    return f"shapes-stamp/{rtype}"


class Variants:
    """The registry of variant keys per resource type."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.recorded: set[str] = set()
        self.cache: dict[str, tuple[str, Shapes]] = {}
        self.lock = threading.Lock()

    def record(self, rtype: str, idx: dict) -> None:
        """Make the shapes of `idx` known (cheap when none or when already recorded)."""
        keys = [f"variants/{rtype}/{code}~{k}" for code, n in counts_in(idx).items() for k in range(1, n)]
        absolute, targets = references_in(idx)
        keys += [f"absolute/{rtype}/{code}" for code in absolute]
        keys += [f"targets/{rtype}/{code}/{target}" for code, target in targets]
        fresh = [key for key in keys if key not in self.recorded]
        for key in fresh:
            try:
                self.db[SCHEMA].insert_one({"_id": key})
            except DuplicateKeyError:
                pass  # its writer deletes the stamp too, but perhaps not yet: we do it below
        if fresh:
            self.db[SCHEMA].delete_one({"_id": _stamp(rtype)})  # after the inserts: cached shapes are stale now
            self.recorded.update(fresh)

    def shapes(self, rtype: str) -> Shapes:
        """How many variant keys each parameter of `rtype` may have (1 when not listed), which parameters hold
        absolute URLs, and which types each parameter's relative references point to."""
        stamp = self.db[SCHEMA].find_one({"_id": _stamp(rtype)})
        cached = self.cache.get(rtype)
        if stamp is not None and cached is not None and cached[0] == stamp["token"]:
            return cached[1]
        if stamp is None:
            try:
                stamp = {"_id": _stamp(rtype), "token": uuid.uuid4().hex}
                self.db[SCHEMA].insert_one(stamp)
            except DuplicateKeyError:
                stamp = self.db[SCHEMA].find_one({"_id": _stamp(rtype)})
        shapes = self._read(rtype)  # after taking the stamp: a shape recorded meanwhile deletes it again
        if stamp is not None:
            with self.lock:
                self.cache[rtype] = (stamp["token"], shapes)
        return shapes

    def _read(self, rtype: str) -> Shapes:
        """The shapes of `rtype` as recorded in `schema` now."""
        counts: dict[str, int] = {}
        absolute = set()
        targets: dict[str, set[str]] = {}
        pattern = f"^(variants|absolute|targets)/{re.escape(rtype)}/"
        for doc in self.db[SCHEMA].find({"_id": {"$regex": pattern}}, {"_id": 1}):
            kind, _, rest = doc["_id"].split("/", 2)
            if kind == "absolute":
                absolute.add(rest)
            elif kind == "targets":
                code, _, target = rest.rpartition("/")
                targets.setdefault(code, set()).add(target)
            else:
                code, _, n = rest.rpartition("~")
                counts[code] = max(counts.get(code, 1), int(n) + 1)
        return Shapes(counts, frozenset(absolute), {k: frozenset(v) for k, v in targets.items()})

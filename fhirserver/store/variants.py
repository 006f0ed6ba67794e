"""The shapes index keys take somewhere in a resource type, so that searches test only the shapes that exist.

- Range and composite parameters with more than one value (their `code~n` index keys): searches test every variant
  key that exists.
- Parameters with an absolute URL among their values (`absolute/<Type>/<code>`): only then must a reference search
  also test the absolute form of `Type/id` on this server's base.
- The types that relative references of a parameter point to (`targets/<Type>/<code>/<Target>`): a search by bare
  id (`patient=123`) tests only those, so it is usually one plain equality, which FerretDB pushes down to SQL.

Writers record a new shape before their documents become visible, by unique insert in `schema`, so it is safe in
many processes.
"""

from __future__ import annotations

import re
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


class Variants:
    """The registry of variant keys per resource type."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.recorded: set[str] = set()

    def record(self, rtype: str, idx: dict) -> None:
        """Make the shapes of `idx` known (cheap when none or when already recorded)."""
        keys = [f"variants/{rtype}/{code}~{k}" for code, n in counts_in(idx).items() for k in range(1, n)]
        absolute, targets = references_in(idx)
        keys += [f"absolute/{rtype}/{code}" for code in absolute]
        keys += [f"targets/{rtype}/{code}/{target}" for code, target in targets]
        for key in keys:
            if key in self.recorded:
                continue
            try:
                self.db[SCHEMA].insert_one({"_id": key})
            except DuplicateKeyError:
                pass
            self.recorded.add(key)

    def shapes(self, rtype: str) -> Shapes:
        """How many variant keys each parameter of `rtype` may have (1 when not listed), which parameters hold
        absolute URLs, and which types each parameter's relative references point to."""
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

"""Which range and composite parameters have more than one value somewhere (their `code~n` index keys).

Searches test every variant key that exists; writers record a new variant before their documents become visible.
Recorded by unique insert in `schema` (`variants/<Type>/<code>~<n>`), so it is safe in many processes.
"""

from __future__ import annotations

import re

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


class Variants:
    """The registry of variant keys per resource type."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.recorded: set[str] = set()

    def record(self, rtype: str, idx: dict) -> None:
        """Make the variant keys of `idx` known (cheap when none or when already recorded)."""
        for code, n in counts_in(idx).items():
            for k in range(1, n):
                key = f"variants/{rtype}/{code}~{k}"
                if key in self.recorded:
                    continue
                try:
                    self.db[SCHEMA].insert_one({"_id": key})
                except DuplicateKeyError:
                    pass
                self.recorded.add(key)

    def counts(self, rtype: str) -> dict[str, int]:
        """How many variant keys each parameter of `rtype` may have (1 when not listed)."""
        out: dict[str, int] = {}
        prefix = f"variants/{rtype}/"
        for doc in self.db[SCHEMA].find({"_id": {"$regex": "^" + re.escape(prefix)}}, {"_id": 1}):
            code, _, n = doc["_id"][len(prefix):].rpartition("~")
            out[code] = max(out.get(code, 1), int(n) + 1)
        return out

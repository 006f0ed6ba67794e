"""Re-indexing stored resources when the search definitions or the index format change (an administrative
interaction: it combines the search index with the resource rules, as the write path does)."""

from __future__ import annotations

from collections.abc import Callable

from fhirserver import fhirjson
from fhirserver.resources.scheduling import with_slot_day
from fhirserver.search.extract import compartments, extract_index
from fhirserver.search.indexing import search_indexes
from fhirserver.search.sort import sort_values
from fhirserver.store.database import Store


def reindex(store: Store, types: list[str], progress: Callable[[int], None] = lambda n: None,
            batch: int = 500) -> dict[str, int]:
    """Recompute idx, comp and srt of every current resource of `types`; return the count updated per type."""
    updated: dict[str, int] = {}
    for rtype in types:
        store.indexes.resource_type(rtype, search_indexes(rtype))
        updated[rtype] = 0
        for docs in store.reader.scan(rtype, batch):
            items = []
            for doc in docs:
                if doc.get("del") or not doc.get("text"):
                    continue
                idx = with_slot_day(rtype, extract_index(fhirjson.loads(doc["text"])))
                items.append((doc["_id"], doc["v"], idx, compartments(rtype, doc["_id"], idx), sort_values(rtype, idx)))
            updated[rtype] += store.set_index(rtype, items)
            progress(len(docs))
    return updated

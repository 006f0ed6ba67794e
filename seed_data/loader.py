"""The streaming loader: groups of resources -> transaction Bundles -> the server's validated write path.

Groups come from a generator (seed data) or from files (import); the loader packs whole groups into batches of
about `batch_size` resources, asks the sink which groups are already there (by the id of each group's first
resource: a group is written in one transaction, so it is all there or not at all), and writes the rest as one
transaction Bundle (see `group_entries`: keyed resources PUT at their ids, the rest POSTed under urn:uuid
fullUrls). Nothing is kept after a batch is sent; at most `workers * 2` batches are in memory, so memory stays
flat at any size. Loading the same data twice writes nothing.

Why not `ifNoneExist` on every entry: a conditional create is a search, and FerretDB on SQLite filters only `_id`
in the database (every other filter reads the whole collection), so at 1,000,000 resources each entry would read
its whole collection. The presence check by id costs one indexed read per group; `conditional=True` adds
`ifNoneExist` on the seed identifier to every POST for loaders that run concurrently on the same data.

Two sinks: `HttpSink` POSTs to a running server (the path every client takes: validation, indexing, commits,
access control); `StoreSink` runs the same `Transaction` interaction in this process (used by `fhirserver run`
to load the demo into an empty database before it serves).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import requests

from seed_data.common import Resource

FHIR_JSON = "application/fhir+json"
RETRY_STATUS = {409, 429, 500, 502, 503, 504}
ATTEMPTS = 5


class LoadError(RuntimeError):
    """A batch the server refused (with the reason it gave)."""


class Sink(Protocol):
    def present(self, keys: list[tuple[str, str]]) -> set[tuple[str, str]]: ...

    def write(self, bundle: dict[str, Any]) -> None: ...


# Types written with PUT at their own id: those other groups refer to, and Patients (user accounts name them).
KEYED_TYPES = frozenset({"Patient", "Organization", "Location", "Practitioner", "PractitionerRole", "Schedule",
                         "Questionnaire", "HealthcareService", "Endpoint", "Medication", "Group"})
_FULL_URLS = uuid.UUID("6f1c2b56-9d0e-4c55-9f5e-51ed5eed0001")


def _rewrite(value: Any, local: dict[str, str]) -> Any:
    """A copy with each `reference` to a resource of `local` replaced by its urn:uuid fullUrl."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out[k] = local.get(v, v) if k == "reference" and isinstance(v, str) else _rewrite(v, local)
        return out
    if isinstance(value, list):
        return [_rewrite(v, local) for v in value]
    return value


def group_entries(group: list[Resource], conditional: bool = False) -> list[dict[str, Any]]:
    """Transaction entries of one group: its first resource and the keyed types PUT at their ids (so that other
    groups, user accounts and the presence check can find them), every other resource POSTed under a urn:uuid
    fullUrl that the group's references are rewritten to (a create costs the server no read, an update does).
    `conditional` adds `ifNoneExist` on the seed identifier to each POST (safe against concurrent loaders of the
    same data, but each is a search: slow on large collections)."""
    head = group[0]
    posted = [r for r in group[1:] if r["resourceType"] not in KEYED_TYPES]
    keys = [f"{r['resourceType']}/{r['id']}" for r in posted]
    local = {key: f"urn:uuid:{uuid.uuid5(_FULL_URLS, key)}" for key in keys}
    out = []
    for r in group:
        key = f"{r['resourceType']}/{r['id']}"
        body = _rewrite(r, local) if local else r
        if key in local and r is not head:
            request: dict[str, Any] = {"method": "POST", "url": r["resourceType"]}
            ident = r.get("identifier")
            first = ident[0] if isinstance(ident, list) and ident else ident
            if conditional and isinstance(first, dict) and first.get("system") and first.get("value"):
                request["ifNoneExist"] = f"identifier={first['system']}|{first['value']}"
            out.append({"fullUrl": local[key], "resource": {k: v for k, v in body.items() if k != "id"},
                        "request": request})
        else:
            out.append({"resource": body, "request": {"method": "PUT", "url": key}})
    return out


def transaction(groups: Iterable[list[Resource]], conditional: bool = False) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction",
            "entry": [e for g in groups for e in group_entries(g, conditional)]}


def _reason(body: bytes) -> str:
    try:
        outcome = orjson.loads(body)
        issues = outcome.get("issue") or []
        return "; ".join(i.get("diagnostics") or i.get("code", "") for i in issues[:3]) or body[:300].decode()
    except (orjson.JSONDecodeError, AttributeError):
        return body[:300].decode(errors="replace")


class HttpSink:
    """A FHIR server at `base` (e.g. http://127.0.0.1:8080/fhir), with an optional bearer token."""

    def __init__(self, base: str, token: str | None = None, timeout: float = 600.0) -> None:
        self.base = base.rstrip("/")
        self.timeout = timeout
        self.headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self._local = threading.local()

    @property
    def session(self) -> requests.Session:
        """One connection pool per thread (requests.Session is not documented as thread-safe)."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.headers.update(self.headers)
        return session

    def _post(self, bundle: dict[str, Any]) -> dict[str, Any]:
        body = orjson.dumps(bundle)
        for attempt in range(ATTEMPTS):
            try:
                r = self.session.post(self.base, data=body, timeout=self.timeout)
            except requests.ConnectionError as exc:
                if attempt == ATTEMPTS - 1:
                    raise LoadError(f"cannot reach {self.base}: {exc}") from None
                time.sleep(0.5 * 2 ** attempt)
                continue
            if r.status_code == 200:
                return orjson.loads(r.content)
            if r.status_code not in RETRY_STATUS or attempt == ATTEMPTS - 1:
                raise LoadError(f"the server answered {r.status_code}: {_reason(r.content)}")
            time.sleep(float(r.headers.get("Retry-After", 0.5 * 2 ** attempt)))
        raise AssertionError("unreachable")

    def present(self, keys: list[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of these resources exist (or existed: a deleted one is not brought back), by a batch of reads."""
        if not keys:
            return set()
        bundle = {"resourceType": "Bundle", "type": "batch",
                  "entry": [{"request": {"method": "GET", "url": f"{t}/{i}"}} for t, i in keys]}
        answer = self._post(bundle)
        out = set()
        for key, entry in zip(keys, answer.get("entry") or [], strict=True):
            status = str(entry.get("response", {}).get("status", ""))
            if status.startswith(("200", "410")):
                out.add(key)
            elif not status.startswith("404"):
                raise LoadError(f"reading {key[0]}/{key[1]} answered {status}")
        return out

    def write(self, bundle: dict[str, Any]) -> None:
        self._post(bundle)


class StoreSink:
    """The Transaction interaction of this process on a Store (no HTTP, no token: for local set-up only)."""

    def __init__(self, store: Any, base: str) -> None:
        self.store = store
        self.base = base

    def present(self, keys: list[tuple[str, str]]) -> set[tuple[str, str]]:
        return {(t, i) for t, i in keys if self.store.reader.current(t, i) is not None}

    def write(self, bundle: dict[str, Any]) -> None:
        from fhirserver.errors import FHIRError
        from fhirserver.interactions.transaction import Transaction

        def no_get(*_: Any) -> Any:
            raise AssertionError("seed transactions have no GET entries")

        try:
            Transaction(self.store, self.base, no_get).run(bundle)
        except FHIRError as exc:
            raise LoadError(f"the transaction was refused ({exc.status}): {exc}") from None


@dataclass
class Summary:
    """What a load did."""

    written: Counter = field(default_factory=Counter)  # resources written, by type
    skipped: int = 0  # resources already present
    groups_written: int = 0
    groups_skipped: int = 0
    batches: int = 0
    seconds: float = 0.0

    @property
    def total_written(self) -> int:
        return sum(self.written.values())

    @property
    def rate(self) -> float:
        return (self.total_written + self.skipped) / self.seconds if self.seconds else 0.0

    def lines(self) -> list[str]:
        out = [f"{self.total_written} resources written, {self.skipped} already present "
               f"({self.groups_written} groups written, {self.groups_skipped} skipped, {self.batches} batches) "
               f"in {self.seconds:.1f} s = {self.rate:.0f} resources/s"]
        out += [f"  {t:<24} {n:>9}" for t, n in sorted(self.written.items())]
        return out


def batches(groups: Iterable[list[Resource]], batch_size: int) -> Iterator[list[list[Resource]]]:
    """Whole groups packed into batches of about `batch_size` resources (a bigger group goes alone)."""
    batch: list[list[Resource]] = []
    size = 0
    for group in groups:
        if not group:
            continue
        if batch and size + len(group) > batch_size:
            yield batch
            batch, size = [], 0
        batch.append(group)
        size += len(group)
    if batch:
        yield batch


def _send(sink: Sink, batch: list[list[Resource]], conditional: bool) -> tuple[Counter, int, int, int, int]:
    heads = [(g[0]["resourceType"], g[0]["id"]) for g in batch]
    there = sink.present(heads)
    todo = [g for g, head in zip(batch, heads, strict=True) if head not in there]
    written: Counter = Counter()
    if todo:
        sink.write(transaction(todo, conditional))
        written.update(r["resourceType"] for g in todo for r in g)
    skipped = sum(len(g) for g, head in zip(batch, heads, strict=True) if head in there)
    return written, skipped, len(todo), len(batch) - len(todo), sum(len(g) for g in batch)


def load(groups: Iterable[list[Resource]], sink: Sink, batch_size: int = 250, workers: int = 2,
         progress: Callable[[int], None] | None = None, conditional: bool = False) -> Summary:
    """Write every group that is not there yet; `progress(n)` after each batch with its resource count."""
    summary = Summary()
    started = time.perf_counter()
    in_flight: list[Future] = []

    def settle(future: Future) -> None:
        written, skipped, g_written, g_skipped, size = future.result()
        summary.written.update(written)
        summary.skipped += skipped
        summary.groups_written += g_written
        summary.groups_skipped += g_skipped
        summary.batches += 1
        if progress:
            progress(size)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        try:
            for batch in batches(groups, batch_size):
                in_flight.append(pool.submit(_send, sink, batch, conditional))
                while len(in_flight) >= max(1, workers) * 2 or (in_flight and in_flight[0].done()):
                    settle(in_flight.pop(0))
            while in_flight:
                settle(in_flight.pop(0))
        except BaseException:
            for f in in_flight:
                f.cancel()
            raise
    summary.seconds = time.perf_counter() - started
    return summary

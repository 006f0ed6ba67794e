"""Search latency and throughput of the server next to the same MongoDB filter issued directly with pymongo.

    .venv/bin/python -m bench.search [--backend postgresql|sqlite] [--observations 200000] [--requests N]
                                     [--threads 8] [--max-seconds 60] [--nested-pushdown] [--pg-gin] [--breakdown]
                                     [--only obs-code,...] [--load-only] [--reload]

The searches a portal and apps make, each over random patients (fixed seed):

1. `Observation?patient=Patient/X&code=http://loinc.org|NNNN&_sort=-date`
2. `Observation?patient=X&category=laboratory&date=ge2023-01-01&date=lt2024-01-01`
3. `Encounter?patient=X&_include=Encounter:practitioner`
4. `Claim?patient=X&created=ge2022-01-01`
5. `Immunization?patient=X&date=ge2020`

The floor of each is the filter and sort the server compiles (`fhirserver.search.query.parse`, `parse_sort`), issued
with pymongo: `find(filter, {"text": 1}).sort(...).limit(count)` (plus one `find` by `_id $in` for the included
Practitioners). The data (bench/datagen.py) is loaded once through the server as transaction Bundles and kept in
`.local/bench/<backend>/` (PostgreSQL cluster and FerretDB state) with a marker file naming the dataset, so the next
run with the same parameters skips loading. `--nested-pushdown` runs FerretDB with `--test-enable-nested-pushdown`,
adds a third side (the floor with the filter in the form FerretDB can push down to SQL: see `pushdown_form`) and
compares with the last default report of the same data. `--pg-gin` (PostgreSQL) adds GIN expression
indexes in the shape of FerretDB's pushed-down SQL for the run and drops them afterwards. `--breakdown` times every
database command of one request per search, in process. Writes bench/results/search-<backend>[-nested][-gin].json
and .md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import random
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit

import orjson
from pymongo import MongoClient, monitoring
from pymongo.collection import Collection
from pymongo.errors import PyMongoError

from bench.crud import free_port
from bench.datagen import LABS, Dataset, logical, patient_id, transaction
from bench.harness import (
    HTTP,
    RESULTS,
    as_dict,
    children,
    cpu_seconds,
    machine,
    rss_mb,
    run_concurrently,
    write_report,
)
from fhirserver.dbserver import FERRETDB_VERSION, FerretDB, PostgreSQL, build_ferretdb
from fhirserver.dbserver.postgres import ensure_installed
from fhirserver.interactions.search import Paging, search
from fhirserver.search.query import parse
from fhirserver.search.sort import mongo_sort, parse_sort
from fhirserver.store.database import Store

REPO = Path(__file__).resolve().parent.parent
DB_NAME = "bench"  # the server's database (FHIR_DB_NAME), as in bench.crud
PAGE = 50  # the server's default _count (FHIR_PAGE_SIZE), which the floor's limit mirrors
MARKER = "dataset.json"


class NestedPushdownFerretDB(FerretDB):
    """FerretDB started with `--test-enable-nested-pushdown`: dot-notation equality is pushed down to SQL."""

    def argv(self) -> list[str]:
        argv = super().argv()
        return argv if "--test-enable-nested-pushdown" in argv else [*argv, "--test-enable-nested-pushdown"]


# -- the database, kept between runs -----------------------------------------------------------------------------
@dataclass
class Database:
    """The running PostgreSQL (or none) and FerretDB of one state folder."""

    state: Path
    backend: str
    ferret: FerretDB
    pg: PostgreSQL | None

    def pids(self) -> list[int]:
        """FerretDB and PostgreSQL processes (with the postmaster's children)."""
        found = [self.ferret.pid() or 0]
        if self.pg is not None and self.pg.pid():
            found += children(self.pg.pid() or 0)
        return found

    def stop(self) -> None:
        self.ferret.stop()
        if self.pg is not None:
            self.pg.stop()


def _traversable(path: Path) -> None:
    """Create `path` and make it and its parents inside the repo readable by others (PostgreSQL runs as postgres)."""
    path.mkdir(parents=True, exist_ok=True)
    for folder in (path, *path.parents):
        if folder == REPO:
            break
        folder.chmod(0o755)


def stop_leftovers(state: Path) -> None:
    """Stop a FerretDB or PostgreSQL that an interrupted earlier run left running on this state folder."""
    FerretDB(Path("ferretdb"), state / "ferretdb", 0).stop()
    pg = PostgreSQL(state / "pg", 0)
    if pg.pid() is not None:
        pg.stop()


def start_database(state: Path, backend: str, nested: bool = False) -> Database:
    """PostgreSQL (for that backend) and FerretDB on the data of `state`, on free loopback ports."""
    binary = build_ferretdb(REPO / ".local" / "bin" / "ferretdb")
    _traversable(state)
    pg = None
    url = ""
    if backend == "postgresql":
        pg = PostgreSQL(state / "pg", free_port())
        pg.start()
        pg.create_database("ferretdb")
        url = pg.url("ferretdb")
    kind = NestedPushdownFerretDB if nested else FerretDB
    ferret = kind(binary, state / "ferretdb", free_port(), backend, url)
    ferret.start()
    return Database(state, backend, ferret, pg)


def psql(pg: PostgreSQL, sql: str) -> str:
    """Run SQL on FerretDB's PostgreSQL database (as the postgres user when root); its unaligned output."""
    argv = [str(ensure_installed() / "psql"), "-h", str(pg.socket_dir), "-p", str(pg.port), "-U", "postgres",
            "-d", "ferretdb", "-tA", "-v", "ON_ERROR_STOP=1", "-c", sql]
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def vacuum(pg: PostgreSQL) -> None:
    """VACUUM ANALYZE after the bulk load, so that autovacuum does not run during the measurements."""
    psql(pg, "VACUUM ANALYZE")


# GIN expression indexes in the shapes of FerretDB's pushed-down SQL: `_jsonb->'_id' @> '"x"'` (a top-level key) and,
# with nested pushdown, `_jsonb #> '{idx,patient}' @> '"Patient/x"'`. FerretDB v1 only creates btree indexes, which
# `@>` cannot use; these are created behind its back for an experiment (--pg-gin) and dropped afterwards.
GIN = {"Observation": ("patient", "code", "category"), "Encounter": ("patient",), "Claim": ("patient",),
       "Immunization": ("patient",), "Patient": (), "Coverage": ("beneficiary",)}


def gin_indexes(pg: PostgreSQL, create: bool) -> list[str]:
    """Create (or drop) the GIN expression indexes of GIN on the benchmark's tables; the index names."""
    rows = psql(pg, f"SELECT _jsonb->>'_id', _jsonb->>'table' FROM {DB_NAME}._ferretdb_database_metadata")
    tables = dict(line.split("|", 1) for line in rows.splitlines() if "|" in line)
    names = []
    for collection, codes in GIN.items():
        table = tables.get(collection)
        if table is None:
            continue
        for key in ("_id", *codes):
            name = f"benchgin_{table}_{key.strip('_')}"
            names.append(name)
            expression = "(_jsonb -> '_id')" if key == "_id" else f"(_jsonb #> '{{idx,{key}}}')"
            if create:
                psql(pg, f"CREATE INDEX IF NOT EXISTS {name} ON {DB_NAME}.{table} USING gin ({expression})")
            else:
                psql(pg, f"DROP INDEX IF EXISTS {DB_NAME}.{name}")
        if create:
            psql(pg, f"ANALYZE {DB_NAME}.{table}")
    return names


def start_server(uri: str, workers: int, log: Path, wait: float = 300.0, db_name: str = DB_NAME,
                 threads: int = 4) -> tuple[subprocess.Popen, str]:
    """The server under gunicorn as bench.crud starts it (database `bench`, 4 threads per worker), but waiting up to
    `wait` seconds for it to answer: on a busy machine its start takes longer than crud's 30 s; stopped on failure."""
    port = free_port()
    env = {**os.environ, "MONGODB_URI": uri, "FHIR_DB_NAME": db_name, "FHIR_PORT": str(port),
           "FHIR_WORKERS": str(workers), "FHIR_THREADS": str(threads), "FHIR_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "fhirserver.cli", "serve"], env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/fhir"
    client = HTTP(base)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and proc.poll() is None:
        if client.request("GET", "/metadata")[0] == 200:
            return proc, base
        time.sleep(0.2)
    proc.terminate()
    proc.wait(15)
    raise RuntimeError(f"the server did not start within {wait:.0f} s; see {log}")


# -- loading -----------------------------------------------------------------------------------------------------
def post_bundle(base: str, body: bytes, timeout: float = 600.0) -> tuple[int, bytes]:
    """POST one transaction Bundle on a fresh connection (a long timeout: a 500-entry Bundle takes seconds)."""
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        conn.request("POST", parts.path, body=body, headers={"Content-Type": "application/fhir+json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _locations(answer: bytes, base: str) -> list[str]:
    """`Type/id` of each created resource, from a transaction-response Bundle, in request order."""
    out = []
    for e in orjson.loads(answer).get("entry", []):
        location = e.get("response", {}).get("location", "")
        out.append("/".join(location.removeprefix(base + "/").split("/")[:2]))
    return out


def load(base: str, ds: Dataset, bundle_size: int, threads: int) -> tuple[dict, dict[str, str]]:
    """Load the dataset through the server as transaction Bundles of POSTs, `threads` at a time.

    The shared resources go first (their server ids are needed by every later Bundle); returns the load figures
    and `Type/logical id` -> `Type/server id` of the shared resources, the Patients and the sample Observations.
    """
    samples = set(ds.sample_observations())
    groups: queue.Queue[list[dict] | None] = queue.Queue(maxsize=threads * 2)
    assigned: dict[str, str] = {}
    failures: list[str] = []
    done = {"resources": 0, "bundles": 0}
    lock = threading.Lock()
    began = time.perf_counter()

    def send(group: list[dict]) -> None:
        body = orjson.dumps(transaction(group, assigned, ds.seed))
        status, answer = post_bundle(base, body)
        if status != 200:
            raise RuntimeError(f"transaction answered {status}: {answer[:300]!r}")
        created = _locations(answer, base)
        with lock:
            for resource, location in zip(group, created, strict=True):
                kind = resource["resourceType"]
                if kind in ("Organization", "Practitioner", "Patient") or (
                        kind == "Observation" and resource["id"] in samples):
                    assigned[logical(resource)] = location
            done["resources"] += len(group)
            done["bundles"] += 1
            if done["bundles"] % 25 == 0:
                rate = done["resources"] / (time.perf_counter() - began)
                print(f"  loaded {done['resources']} resources ({rate:.0f}/s)", file=sys.stderr, flush=True)

    def sender() -> None:
        while (group := groups.get()) is not None:
            try:
                send(group)
            except (RuntimeError, OSError, http.client.HTTPException) as exc:
                with lock:
                    failures.append(str(exc))

    produced = ds.groups(bundle_size)
    send(next(produced))
    pool = [threading.Thread(target=sender) for _ in range(threads)]
    for t in pool:
        t.start()
    for group in produced:
        if failures:
            break
        groups.put(group)
    for _ in pool:
        groups.put(None)
    for t in pool:
        t.join()
    seconds = time.perf_counter() - began
    if failures:
        raise RuntimeError(f"loading failed ({len(failures)} Bundles): {failures[0]}")
    figures = {"resources": done["resources"], "bundles": done["bundles"], "bundle_size": bundle_size,
               "threads": threads, "seconds": round(seconds, 1),
               "per_second": round(done["resources"] / seconds, 1)}
    return figures, assigned


def prepare(args: argparse.Namespace, ds: Dataset, state: Path) -> tuple[Database, dict, bool]:
    """Start the database of `state`, wiping it first when its marker names another dataset; (db, marker, fresh)."""
    marker_path = state / MARKER
    wanted = {"backend": args.backend, "dataset": ds.marker()}
    marker: dict = {}
    if marker_path.exists():
        marker = json.loads(marker_path.read_text())
    stop_leftovers(state)
    cached = not args.reload and {k: marker.get(k) for k in wanted} == wanted
    if not cached and state.exists():
        print(f"removing {state} (it holds another dataset or an unfinished load)", file=sys.stderr)
        shutil.rmtree(state)
    database = start_database(state, args.backend, nested=args.nested_pushdown)
    return database, marker if cached else wanted, not cached


# -- workloads ---------------------------------------------------------------------------------------------------
class LongHTTP(HTTP):
    """The harness's keep-alive client with a longer timeout (a search over a large collection takes minutes);
    the last transport error is kept for the report."""

    def __init__(self, base: str, timeout: float) -> None:
        super().__init__(base)
        self.timeout = timeout
        self.last_error = ""

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """One request; a kept-alive connection that the server closed meanwhile (idle > its keepalive) is
        reopened once."""
        for attempt in range(2):
            conn = getattr(self.local, "conn", None)
            fresh = conn is None
            if conn is None:
                conn = self.local.conn = http.client.HTTPConnection(self.host or "127.0.0.1", self.port,
                                                                    timeout=self.timeout)
            started = time.perf_counter()
            try:
                conn.request(method, self.prefix + path, body=body)
                response = conn.getresponse()
                return response.status, response.read()
            except (http.client.HTTPException, OSError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.local.conn = None
                conn.close()
                stale = isinstance(exc, http.client.RemoteDisconnected | BrokenPipeError | ConnectionResetError) \
                    and time.perf_counter() - started < 1.0
                if fresh or not stale or attempt:
                    break
        return 0, self.last_error.encode()


@dataclass
class Request:
    """One request: the server's path, and the floor's type, filter, sort, limit and include."""

    path: str
    rtype: str
    filter: dict
    sort: list[tuple[str, int]]
    limit: int = PAGE
    include: str | None = None  # the reference index field whose targets the floor fetches too
    pairs: list[tuple[str, str]] | None = None  # the search's query parameters (None for a read)
    total: bool = False  # the floor counts the matches too (the server's Bundle.total, `_total=accurate`)


@dataclass
class Workload:
    name: str
    title: str
    rtype: str
    make: Callable[[random.Random, str], list[tuple[str, str]]]  # (rng, patient id) -> query pairs


def _lab_code(rng: random.Random, pid: str) -> list[tuple[str, str]]:
    code = rng.choice(LABS)[0]
    return [("patient", f"Patient/{pid}"), ("code", f"http://loinc.org|{code}"), ("_sort", "-date")]


WORKLOADS = [
    Workload("obs-code", "Observation?patient=Patient/X&code=http://loinc.org|NNNN&_sort=-date", "Observation",
             _lab_code),
    Workload("obs-lab-year", "Observation?patient=X&category=laboratory&date=ge2023-01-01&date=lt2024-01-01",
             "Observation", lambda rng, pid: [("patient", pid), ("category", "laboratory"),
                                              ("date", "ge2023-01-01"), ("date", "lt2024-01-01")]),
    Workload("encounter-include", "Encounter?patient=X&_include=Encounter:practitioner", "Encounter",
             lambda rng, pid: [("patient", pid), ("_include", "Encounter:practitioner")]),
    Workload("claim-created", "Claim?patient=X&created=ge2022-01-01", "Claim",
             lambda rng, pid: [("patient", pid), ("created", "ge2022-01-01")]),
    Workload("immunization-date", "Immunization?patient=X&date=ge2020", "Immunization",
             lambda rng, pid: [("patient", pid), ("date", "ge2020")]),
]
READ = "obs-read"  # a diagnostic beside the searches: GET Observation/<id> and find_one by _id
NAMES = [w.name for w in WORKLOADS] + [READ]


def pushdown_form(query: dict) -> dict:
    """The filter as FerretDB v1 can push it down to SQL: one plain equality per field where possible.

    `$and` clauses are lifted to the top level, and a reference `$in` (`idx.patient: {$in: [Patient/X,
    <base>/Patient/X, Group/X, ...]}`) becomes an equality on its first relative value (`Patient/X`): FerretDB pushes
    down plain values and `$eq` only, never `$in`, `$and`, `$or` or ranges. Not equivalent in general (it drops the
    absolute-URL and other-target alternatives); the benchmark checks that it finds the same ids on its data.
    """
    out: dict = {}
    rest = []
    for clause in [{k: v for k, v in query.items() if k != "$and"}, *query.get("$and", [])]:
        for key, value in clause.items():
            if key.startswith("$") or key in out:
                rest.append({key: value})
                continue
            if isinstance(value, dict) and list(value) == ["$in"]:
                relative = [v for v in value["$in"] if isinstance(v, str) and "/" in v and "://" not in v]
                value = relative[0] if relative else value
            out[key] = value
    if rest:
        out["$and"] = rest
    return out


def compile_search(rtype: str, pairs: list[tuple[str, str]], base: str, store: Store, total: bool = False) -> Request:
    """One search request: the server's path, and the floor's filter, sort and limit compiled as the server compiles
    them (`_include` of a reference parameter fetches its targets' `idx.<parameter>`)."""
    parsed = parse(rtype, pairs, base, finder=store.reader)
    sort = mongo_sort(parse_sort(rtype, parsed.control.get("_sort", [])))
    includes = parsed.control.get("_include") or []
    include = f"idx.{includes[0].split(':')[1]}" if includes else None
    count = (parsed.control.get("_count") or [str(PAGE)])[-1]
    return Request(f"/{rtype}?{urlencode(pairs, quote_via=quote, safe='/:')}", rtype, parsed.filter, sort,
                   int(count), include, pairs, total)


def search_requests(w: Workload, n: int, patients: list[str], seed: int, base: str, store: Store,
                    total: bool = False) -> list[Request]:
    """`n` requests of workload `w` over random patients; the floor's filter compiled as the server compiles it."""
    rng = random.Random(f"{seed}/{w.name}")
    return [compile_search(w.rtype, w.make(rng, rng.choice(patients)), base, store, total) for _ in range(n)]


def read_requests(n: int, observations: list[str], seed: int) -> list[Request]:
    """`n` reads of random Observations by id."""
    rng = random.Random(f"{seed}/{READ}")
    return [Request(f"/Observation/{rid}", "Observation", {"_id": rid}, [], 1)
            for rid in (rng.choice(observations) for _ in range(n))]


def floor_find(db, r: Request, flat: bool = False, max_ms: int = 0) -> tuple[list[str], list[str]]:
    """The floor of one request: match ids, and the ids of the included Practitioners (maxTimeMS when given).

    The queries the server issues for it: the page (one more than `limit` when it gives a total, to know whether a
    next page exists), a count only when there is one (`r.total`), and the included resources by `_id`, one lookup
    per id (FerretDB pushes `_id` equality down to SQL, never `$in`; fhirserver/store/resources.py does the same).
    """
    query = pushdown_form(r.filter) if flat else r.filter
    projection = {"text": 1, r.include: 1} if r.include else {"text": 1}
    cursor = db[r.rtype].find(query, projection, max_time_ms=max_ms or None)
    docs = list((cursor.sort(r.sort) if r.sort else cursor).limit(r.limit + 1 if r.total else r.limit))
    if r.total and len(docs) > r.limit:
        db[r.rtype].count_documents(query, **({"maxTimeMS": max_ms} if max_ms else {}))
    docs = docs[:r.limit]
    included: list[str] = []
    if r.include:
        refs = {ref.split("/", 1)[1] for d in docs for ref in d.get("idx", {}).get("practitioner", [])
                if ref.startswith("Practitioner/")}
        coll: Collection = db["Practitioner"]
        found = (coll.find_one({"_id": rid}, {"text": 1, "del": 1}, max_time_ms=max_ms or None)
                 for rid in sorted(refs))
        included = sorted(d["_id"] for d in found if d is not None and not d.get("del"))
    return [d["_id"] for d in docs], included


def server_ids(client: HTTP, r: Request) -> tuple[list[str], list[str], list[str]]:
    """Match ids, included ids and outcome issues of the server's first page (or the id read)."""
    status, body = client.request("GET", r.path)
    if status != 200:
        raise RuntimeError(f"server answered {status}: {body[:200]!r}")
    answer = orjson.loads(body)
    if answer.get("resourceType") != "Bundle":
        return [answer["id"]], [], []
    mode = [(e.get("search", {}).get("mode"), e["resource"]) for e in answer.get("entry", [])]
    return ([x["id"] for m, x in mode if m == "match"], sorted(x["id"] for m, x in mode if m == "include"),
            [i.get("diagnostics", "") for m, x in mode if m == "outcome" for i in x.get("issue", [])])


def check(client: HTTP, db, reqs: list[Request], max_ms: int, flat: bool) -> tuple[dict, list]:
    """Compare the server's ids with the floor's (and the pushdown-form floor's) for these requests (untimed; they warm
    the caches too)."""
    mismatches: list[dict] = []
    failed: list[str] = []
    seen: list = []
    for r in reqs:
        try:
            ids, included, issues = server_ids(client, r)
            floor_ids, floor_included = floor_find(db, r, max_ms=max_ms)
            flat_ids, flat_included = floor_find(db, r, True, max_ms) if flat else (floor_ids, floor_included)
        except (RuntimeError, PyMongoError) as exc:
            failed.append(f"{r.path}: {str(exc)[:200]}")
            seen.append(None)
            continue
        seen.append([ids, included])
        if ids != floor_ids or included != floor_included or issues or (flat_ids, flat_included) != (
                floor_ids, floor_included):
            mismatches.append({"path": r.path, "server": ids[:10], "floor": floor_ids[:10], "flat": flat_ids[:10],
                               "issues": issues})
    compared = len(reqs) - len(failed)
    return {"compared": compared, "identical": (not mismatches) if compared else None,
            "matches_seen": sum(len(x[0]) for x in seen if x), "included_seen": sum(len(x[1]) for x in seen if x),
            "mismatches": mismatches[:3], "failed": failed[:3]}, seen


def settle(database: Database, base: str) -> bool:
    """After a measurement: when FerretDB still works on queries whose clients gave up (the server's database
    timeout), restart it on the same data and port so the next measurement does not pay for them. True if so."""
    pid = database.ferret.pid() or 0
    before = cpu_seconds([pid])
    time.sleep(2)
    if cpu_seconds([pid]) - before < 0.2:
        return False
    kind, old = type(database.ferret), database.ferret
    old.stop()
    database.ferret = kind(old.binary, old.state, old.port, old.handler, old.postgresql_url)
    database.ferret.start()
    root = HTTP(base.rsplit("/fhir", 1)[0])  # the probes live beside the FHIR base
    deadline = time.monotonic() + 60
    while root.request("GET", "/readyz")[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    return True


class Tally:
    """Outcomes of one side's requests: status codes or exception names, counted across threads."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()

    def add(self, outcome: str) -> None:
        with self.lock:
            self.counts[outcome] += 1


def measure(args: argparse.Namespace, ds: Dataset, marker: dict, database: Database, label: str) -> dict:
    """Start the server on `database`, run each workload on the server and on the floor; the figures."""
    if args.db_timeout:
        os.environ["FHIR_DB_TIMEOUT"] = str(args.db_timeout)
    server, base = start_server(database.ferret.uri, args.workers, database.state / f"server-{label}.log")
    store = Store(database.ferret.uri, DB_NAME)
    mongo = MongoClient(database.ferret.uri, maxPoolSize=args.threads * 2)[DB_NAME]
    client = LongHTTP(base, args.request_timeout)
    max_ms = int(args.request_timeout * 1000)
    rows: list[dict] = []
    ids: dict[str, list] = {}
    sides = args.sides.split(",") if args.sides else ["server", "floor"] + (["flat"] if label != "default" else [])
    try:
        for name in (args.only.split(",") if args.only else NAMES):
            w = next((x for x in WORKLOADS if x.name == name), None)
            if w is None:
                title = "Observation/id (read, diagnostic)"
                reqs = read_requests(args.requests, marker["observations"], ds.seed)
            else:
                title = w.title
                reqs = search_requests(w, args.requests, marker["patients"], ds.seed, base, store)
            load_before = os.getloadavg()[0]
            correct, ids[name] = check(client, mongo, reqs[:args.check], max_ms, "flat" in sides and w is not None)
            restarted = settle(database, base)
            timed = reqs[args.check:]
            tallies = {side: Tally() for side in sides}

            def on_server(n: int, timed: list[Request] = timed, tallies: dict[str, Tally] = tallies) -> bool:
                status = client.request("GET", timed[n].path)[0]
                tallies["server"].add(str(status))
                return status == 200

            def on_floor(n: int, timed: list[Request] = timed, tallies: dict[str, Tally] = tallies,
                         side: str = "floor") -> bool:
                try:
                    floor_find(mongo, timed[n], side == "flat", max_ms)
                except PyMongoError as exc:
                    tallies[side].add(type(exc).__name__)
                    return False
                tallies[side].add("ok")
                return True

            def on_flat(n: int, timed: list[Request] = timed, tallies: dict[str, Tally] = tallies) -> bool:
                return on_floor(n, timed, tallies, "flat")

            row: dict = {"workload": name, "search": title, "correctness": correct}
            for side, fn in (("server", on_server), ("floor", on_floor), ("flat", on_flat)):
                if side not in sides or (side == "flat" and w is None):
                    continue
                m = run_concurrently(f"{name}: {side}", fn, len(timed), args.threads, args.max_seconds)
                row[side] = {**as_dict(m), "outcomes": dict(tallies[side].counts)}
                if settle(database, base):
                    restarted = True
            if "server" in row and "floor" in row and row["floor"]["per_second"]:
                row["ratio"] = round(row["server"]["per_second"] / row["floor"]["per_second"], 3)
            row["ferretdb_restarted"] = restarted
            row["loadavg_1m"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]
            rows.append(row)
            print(f"  [{label}] {name}: " + "; ".join(
                f"{side} {row[side]['per_second']} req/s p50 {row[side]['p50_ms']} ms p99 {row[side]['p99_ms']} ms "
                f"{row[side]['outcomes']}" for side in ("server", "floor", "flat") if side in row)
                + f"; ids identical: {correct['identical']}; load average {row['loadavg_1m']}",
                file=sys.stderr, flush=True)
        rss = {"server": rss_mb(children(server.pid)), "ferretdb": rss_mb([database.ferret.pid() or 0])}
        if database.pg is not None:
            rss["postgresql"] = rss_mb(database.pids()[1:])
        spent = breakdown(database, ds, marker, base, args.only.split(",") if args.only else NAMES) \
            if args.breakdown else []
    finally:
        server.terminate()
        server.wait(15)
        store.close()
        mongo.client.close()
    return {"label": label, "rows": rows, "rss_mb": rss, "ids": ids, "breakdown": spent}


# -- where one request's time goes --------------------------------------------------------------------------------
class Commands(monitoring.CommandListener):
    """Records the database commands (name, collection, duration) issued by the thread that switched it on."""

    def __init__(self) -> None:
        self.local = threading.local()

    def start(self) -> list[dict]:
        self.local.log = []
        return self.local.log

    def stop(self) -> None:
        self.local.log = None

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        log = getattr(self.local, "log", None)
        if log is not None:
            target = event.command.get(event.command_name)
            log.append({"command": event.command_name, "collection": target if isinstance(target, str) else "",
                        "id": event.request_id, "ms": None})

    def _finish(self, event: monitoring.CommandSucceededEvent | monitoring.CommandFailedEvent) -> None:
        for entry in getattr(self.local, "log", None) or []:
            if entry["id"] == event.request_id:
                entry["ms"] = round(event.duration_micros / 1000, 1)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self._finish(event)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._finish(event)


COMMANDS = Commands()
monitoring.register(COMMANDS)  # before any client of this process exists: the listener sees them all


def breakdown(database: Database, ds: Dataset, marker: dict, base: str, names: list[str]) -> list[dict]:
    """One request per search run in this process through the server's search function, and through the floor,
    with every database command timed: how much of the server's time is database work, and which."""
    store = Store(database.ferret.uri, DB_NAME, timeout=600.0)
    mongo = MongoClient(database.ferret.uri, socketTimeoutMS=None)[DB_NAME]
    out = []
    try:
        for w in (x for x in WORKLOADS if x.name in names):
            r = search_requests(w, 1, marker["patients"], ds.seed, base, store)[0]
            sides: dict = {}
            for side in ("server", "floor"):
                log = COMMANDS.start()
                started = time.perf_counter()
                if side == "server":
                    search(store, base, w.rtype, r.pairs or [], Paging(PAGE, 1000))
                else:
                    floor_find(mongo, r)
                total = (time.perf_counter() - started) * 1000
                COMMANDS.stop()
                in_db = sum(c["ms"] or 0 for c in log)
                sides[side] = {"ms": round(total, 1), "db_ms": round(in_db, 1), "python_ms": round(total - in_db, 1),
                               "commands": [{k: v for k, v in c.items() if k != "id"} for c in log]}
            out.append({"workload": w.name, **sides})
            print(f"  breakdown {w.name}: server {sides['server']['ms']} ms ({len(sides['server']['commands'])} "
                  f"commands, {sides['server']['db_ms']} ms in the database), floor {sides['floor']['ms']} ms",
                  file=sys.stderr, flush=True)
    finally:
        store.close()
        mongo.client.close()
    return out


def breakdown_table(rows: list[dict]) -> list[str]:
    lines = ["## One request, in process, every database command timed", "",
             "| search | server ms | of which database | server commands (ms) | floor ms | floor commands (ms) |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['workload']} | {row['server']['ms']} | {row['server']['db_ms']} | "
                     f"{_listing(row['server'])} | {row['floor']['ms']} | {_listing(row['floor'])} |")
    return lines


def _listing(side: dict) -> str:
    return ", ".join(f"{c['command']} {c['collection']} {c['ms']}" for c in side["commands"])


# -- report ------------------------------------------------------------------------------------------------------
def versions(database: Database) -> dict:
    found = {"ferretdb": FERRETDB_VERSION, "pymongo": package_version("pymongo"),
             "gunicorn": package_version("gunicorn"), "flask": package_version("flask"),
             "fhirserver": package_version("fhirserver")}
    if database.pg is not None:
        found["postgresql"] = subprocess.run([str(ensure_installed() / "postgres"), "--version"],
                                             capture_output=True, text=True).stdout.strip()
    return found


def _cells(m: dict) -> str:
    return f"{m['requests']} | {m['errors']} | {m['per_second']} | {m['p50_ms']} | {m['p95_ms']} | {m['p99_ms']}"


def table_of(run: dict, heading: str) -> list[str]:
    lines = [heading, "", "| search | side | requests | errors | req/s | p50 ms | p95 ms | p99 ms | server/floor |",
             "|---|---|---|---|---|---|---|---|---|"]
    names = {"server": "server", "floor": "floor (pymongo)", "flat": "floor, pushdown form of the filter"}
    for row in run["rows"]:
        label = f"`{row['search']}`"
        for side in ("server", "floor", "flat"):
            if side in row:
                ratio = row.get("ratio", "") if side == "server" else ""
                lines.append(f"| {label} | {names[side]} | {_cells(row[side])} | {ratio} |")
                label = ""
    return lines


def fill(args: argparse.Namespace, ds: Dataset, database: Database, marker: dict) -> None:
    """Load the dataset through the server, vacuum, and write the marker (last: an interrupted load is redone)."""
    print(f"loading {ds.observations} Observations for {ds.patients} patients into {database.state} ...",
          file=sys.stderr, flush=True)
    server, base = start_server(database.ferret.uri, args.workers, database.state / "server-load.log")
    try:
        marker["load"], assigned = load(base, ds, args.bundle_size, args.load_threads)
    finally:
        server.terminate()
        server.wait(15)
    if database.pg is not None:
        started = time.perf_counter()
        vacuum(database.pg)
        marker["load"]["vacuum_seconds"] = round(time.perf_counter() - started, 1)
    marker["counts"] = ds.counts()
    marker["patients"] = [assigned[f"Patient/{patient_id(p)}"].split("/")[1] for p in range(ds.patients)]
    marker["observations"] = [assigned[f"Observation/{sample}"].split("/")[1] for sample in ds.sample_observations()]
    (database.state / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
    print(f"  loaded: {marker['load']}", file=sys.stderr, flush=True)


def compare(baseline: dict, run: dict) -> dict:
    """The nested-pushdown run next to a default run on the same data: p50 ratios and whether the server's ids of the
    checked requests are the same."""
    before = {row["workload"]: row for row in baseline["runs"][0]["rows"]}
    out: dict = {}
    for row in run["rows"]:
        old = before.get(row["workload"])
        if old is None:
            continue
        pairs = [(a, b) for a, b in zip((baseline.get("checked_ids") or {}).get(row["workload"]) or [],
                                        run["ids"][row["workload"]], strict=False) if a is not None and b is not None]
        entry: dict = {"server_ids_identical": all(a == b for a, b in pairs) if pairs else None}
        for side in ("server", "floor"):
            if side in row and side in old and old[side]["p50_ms"]:
                entry[f"{side}_p50_ratio"] = round(row[side]["p50_ms"] / old[side]["p50_ms"], 3)
                entry[f"{side}_errors"] = [old[side]["errors"], row[side]["errors"]]
        out[row["workload"]] = entry
    return out


def build_report(args: argparse.Namespace, marker: dict, run: dict, fresh: bool, found: dict, seconds: float,
                 baseline: dict | None) -> tuple[dict, list[str]]:
    """The JSON report and the Markdown table."""
    report: dict = {
        "benchmark": "search", "backend": args.backend, "ferretdb": run["label"], "machine": machine(),
        "versions": found,
        "settings": {"requests": args.requests, "checked_untimed": args.check, "threads": args.threads,
                     "workers": args.workers, "server_threads": 4, "max_seconds": args.max_seconds,
                     "request_timeout": args.request_timeout, "page_size": PAGE, "fhir_auth": "off",
                     "fhir_db_timeout": args.db_timeout, "only": args.only, "sides": args.sides},
        "dataset": marker["dataset"], "counts": marker.get("counts"), "load": marker.get("load"),
        "loaded_this_run": fresh, "runs": [{k: v for k, v in run.items() if k != "ids"}],
        "checked_ids": run["ids"], "seconds": round(seconds, 1),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if baseline is not None:
        report["against_default"] = compare(baseline, run)
    load_info = marker.get("load") or {}
    counts = marker.get("counts") or {}
    table = [f"# Search benchmark ({args.backend}, {counts.get('Observation', '?')} Observations, "
             f"{args.threads} client threads, {args.workers} workers x 4 threads, {machine()['cores']} cores)", "",
             f"Data: {', '.join(f'{v} {k}' for k, v in counts.items())}. Loaded through the server in "
             f"{load_info.get('bundles')} transaction Bundles of up to {load_info.get('bundle_size')} POSTs, "
             f"{load_info.get('threads')} at a time: {load_info.get('resources')} resources in "
             f"{load_info.get('seconds')} s = {load_info.get('per_second')} resources/s "
             f"({'this run' if fresh else 'cached from an earlier run'}).", ""]
    table += table_of(run, f"## FerretDB {run['label']}")
    if run["breakdown"]:
        table += ["", *breakdown_table(run["breakdown"])]
    table += ["", "Server ids = floor ids (= pushdown-form ids when measured; first page and includes, untimed "
        "requests): " + ", ".join(
        f"{row['workload']} {row['correctness']['identical']}" for row in run["rows"]) + ". Load average "
        "(1 min) before/after each workload: " + ", ".join(
        f"{row['workload']} {row['loadavg_1m']}" for row in run["rows"]) + ".",
        f"RSS MB: {', '.join(f'{k} {v}' for k, v in run['rss_mb'].items())}."]
    if baseline is not None:
        table += ["", "Against the default run (" + baseline.get("when", "?") + "): " + ("; ".join(
            f"{k}: " + ", ".join(f"{a} {b}" for a, b in v.items()) for k, v in report["against_default"].items())
            or "no workload in common") + "."]
    table += ["", f"Run time {seconds:.0f} s."]
    return report, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--observations", type=int, default=200_000)
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--practitioners", type=int, default=100)
    parser.add_argument("--requests", type=int, default=100, help="requests per workload and side")
    parser.add_argument("--threads", type=int, default=8, help="client threads")
    parser.add_argument("--workers", type=int, default=2 * (os.cpu_count() or 1), help="gunicorn workers")
    parser.add_argument("--max-seconds", type=float, default=60.0,
                        help="no request starts after this many seconds of a measurement")
    parser.add_argument("--request-timeout", type=float, default=120.0,
                        help="client timeout of one request: HTTP timeout of the server side, maxTimeMS of the floor")
    parser.add_argument("--check", type=int, default=2,
                        help="untimed requests per workload whose server and floor ids are compared (also warm-up)")
    parser.add_argument("--breakdown", action="store_true",
                        help="after the workloads, time every database command of one request per search in process")
    parser.add_argument("--only", help=f"comma-separated workloads to run, of {','.join(NAMES)}")
    parser.add_argument("--sides", help="comma-separated sides to measure, of server,floor,flat (default server,floor "
                        "and, with --nested-pushdown or --pg-gin, flat: the floor with the filter in pushdown form)")
    parser.add_argument("--tag", default="", help="suffix of the report's name (search-<backend>[-nested][-gin][-tag])")
    parser.add_argument("--db-timeout", type=float,
                        help="the server's FHIR_DB_TIMEOUT (its socket timeout is 15 times that, at least 30 s)")
    parser.add_argument("--bundle-size", type=int, default=500)
    parser.add_argument("--load-threads", type=int, default=3)
    parser.add_argument("--load-only", action="store_true", help="load (unless cached) and stop")
    parser.add_argument("--state", type=Path, help="database folder (default .local/bench/<backend>)")
    parser.add_argument("--reload", action="store_true", help="wipe the cached database and load again")
    parser.add_argument("--nested-pushdown", action="store_true",
                        help="run FerretDB with --test-enable-nested-pushdown; compares with the last default report")
    parser.add_argument("--pg-gin", action="store_true",
                        help="experiment: GIN expression indexes for FerretDB's pushed-down SQL, dropped afterwards")
    args = parser.parse_args()
    # The server under test runs without authorization (no token checks, no audit writes): the searches alone.
    os.environ["FHIR_AUTH"] = "off"

    ds = Dataset(patients=args.patients, practitioners=args.practitioners, observations=args.observations)
    state = (args.state or REPO / ".local" / "bench" / args.backend).resolve()
    began = time.perf_counter()
    database, marker, fresh = prepare(args, ds, state)
    try:
        if fresh:
            fill(args, ds, database, marker)
        if args.load_only:
            return
        found = versions(database)
        label = "+".join(["nested-pushdown"] * args.nested_pushdown + ["gin"] * args.pg_gin) or "default"
        if database.pg is not None and not args.pg_gin:
            gin_indexes(database.pg, create=False)  # left over by an interrupted --pg-gin run
        if args.pg_gin and database.pg is not None:
            started = time.perf_counter()
            found["gin_indexes"] = gin_indexes(database.pg, create=True)
            found["gin_seconds"] = round(time.perf_counter() - started, 1)
        try:
            run = measure(args, ds, marker, database, label)
        finally:
            if args.pg_gin and database.pg is not None:
                gin_indexes(database.pg, create=False)
    finally:
        database.stop()
    baseline = None
    default_report = RESULTS / f"search-{args.backend}.json"
    if (label != "default" or args.tag) and default_report.exists():
        baseline = json.loads(default_report.read_text())
        if baseline.get("dataset") != marker["dataset"]:
            baseline = None
    report, table = build_report(args, marker, run, fresh, found, time.perf_counter() - began, baseline)
    suffix = "-nested" * args.nested_pushdown + "-gin" * args.pg_gin + (f"-{args.tag}" if args.tag else "")
    path = write_report(f"search-{args.backend}{suffix}", report, table)
    print(path.read_text())


if __name__ == "__main__":
    main()

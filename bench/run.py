"""The benchmark suite in one command: the server next to the database floor, side by side in one run.

    .venv/bin/python -m bench.run [--backend postgresql|sqlite] [--quick] [--data seed:large|datagen|tiny|seed:SCALE]
                                  [--threads 16] [--requests N] [--max-seconds S] [--only read,chart,ingest,...]
                                  [--no-helpers] [--no-profile] [--no-gin] [--results DIR] [--state DIR] [--reload]

1. Starts the database: FerretDB v1.24.2 (with `--test-enable-nested-pushdown`, unless `--ferretdb-default`) on
   PostgreSQL, or on SQLite, in `.local/bench/<backend>[-<data>]/` (or `--state`); on PostgreSQL with the GIN
   indexes the embedded database keeps beside FerretDB's (fhirserver/dbserver/pgindexes.py; `--no-gin` drops them).
2. Loads the data once through the server and keeps it there with a marker naming it (`dataset.json`); the next run
   with the same data skips loading; patients and Observations to sample are taken from the load or the database. The
   data source is pluggable (`--data`): `seed:large` by default (`fhirserver seed --scale large` against the
   benchmark's server: 10,000 members, about 1.17 million resources; its load time, rate and the memory of loader
   and server are kept in the marker and the report), `seed:SCALE`, `datagen` (bench/datagen.py, 1,000 patients and
   200,000 Observations) and `tiny` (the same generator, 4 patients, for the smoke test). Sample ids are spread
   over the whole data set; the searches take their patient, code and years from sampled Observations.
3. Starts the server under gunicorn (2 workers per core, 4 threads each) and drives it from this process on loopback
   with `--threads` clients, each workload bounded by a request count and a time limit per side. Next to every
   workload, the floor: the same reads and queries (filter, sort, limit, count and include fetch as the server
   compiles them) issued with pymongo on the same database.
4. Workloads: read by id, vread, Observation by patient and code sorted by date, Encounters in a date window with
   `_include`, a patient's chart page (the ten requests a portal makes on login), and transaction ingest of the
   Synthea Bundles (a second server on a scratch database) next to `insert_many` of the very documents it stored.
   Server and floor take turns (`--rounds`), so that a change of the machine's load weighs on both alike.
   Then `bench/scheduling.py` (`$find` + `$book` with contention, each beside its floor, on its own database of
   32,000 slots) and `bench/auth.py` (the cost of authorization) run, each writing its own report, which the
   suite's report includes (`--no-helpers`: their last reports). `Patient/$everything` and Bulk export do not
   exist yet.
5. py-spy samples the server's workers during each workload (collapsed stacks under `<results>/profiles/`; the
   top functions of the samples taken inside a request in the report: wall time, so waiting for the database and for
   the GIL count too).
6. Writes `<results>/run-<backend>[-<data>][-quick].json` and `.md` (machine, versions, settings, figures, targets;
   `-<data>` for other data than datagen, e.g. `run-postgresql-seed-large`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pymongo import MongoClient

from bench import search as sb
from bench.datagen import Dataset, patient_id
from bench.harness import (
    RESULTS,
    MemoryWatch,
    Profiler,
    as_dict,
    children,
    machine,
    peak_rss_mb,
    py_spy,
    rss_mb,
    summarize,
    top_functions,
    write_report,
)
from bench.workloads import (
    READS,
    Context,
    Job,
    ReadWorkload,
    floor_job,
    ingest_floor,
    ingest_server,
    observation_samples,
    server_job,
    stored_documents,
    synthea_files,
)
from fhirserver.dbserver import pgindexes
from fhirserver.search.query import parse
from fhirserver.store.database import Store

REPO = Path(__file__).resolve().parent.parent
INGEST_DB = "bench_ingest"  # the ingest server's scratch database; its floor writes to INGEST_DB + "_floor"
TARGETS = {"read": 0.5, "search": 0.4, "ingest": 0.3, "tail": 3.0}


# -- data sources ------------------------------------------------------------------------------------------------
class DataSource(Protocol):
    """Where the benchmark's data comes from. `identity()` is the cache key kept in the state folder's marker;
    `fill()` loads the data through a running server, with the loader's process given to `watch`, and returns
    figures for the marker (`load`, `counts` and, when it knows them, `patients` and `observations`: server ids to
    sample; otherwise they are read from the database)."""

    def identity(self) -> dict: ...

    def fill(self, base: str, uri: str, db_name: str, log: Path, watch: MemoryWatch) -> dict: ...


@dataclass
class Generated:
    """bench/datagen.py's deterministic clinic, loaded as transaction Bundles of up to `bundle_size` POSTs."""

    dataset: Dataset
    bundle_size: int = 500
    threads: int = 3

    def identity(self) -> dict:
        return self.dataset.marker()  # the same key bench/search.py caches under: both share the loaded data

    def fill(self, base: str, uri: str, db_name: str, log: Path, watch: MemoryWatch) -> dict:
        watch.watch("loader", os.getpid())  # loaded by threads of this process
        figures, assigned = sb.load(base, self.dataset, self.bundle_size, self.threads)
        ds = self.dataset
        return {"load": figures, "counts": ds.counts(), "sampled": "given",
                "patients": [assigned[f"Patient/{patient_id(p)}"].split("/")[1] for p in range(ds.patients)],
                "observations": [assigned[f"Observation/{o}"].split("/")[1] for o in ds.sample_observations()]}


@dataclass
class Seeded:
    """`fhirserver seed --scale SCALE` (seed_data/) POSTing its transaction Bundles to the benchmark's server, with a
    fixed seed and date anchor so that the cached data is the same every time."""

    scale: str
    seed: int = 1
    today: str = "2026-12-01"
    in_flight: int = 4  # transaction Bundles at once

    def identity(self) -> dict:
        return {"source": "seed", "scale": self.scale, "seed": self.seed, "today": self.today}

    def fill(self, base: str, uri: str, db_name: str, log: Path, watch: MemoryWatch) -> dict:
        env = {**os.environ, "MONGODB_URI": uri, "FHIR_DB_NAME": db_name}
        argv = [sys.executable, "-m", "fhirserver.cli", "seed", "--scale", self.scale, "--seed", str(self.seed),
                "--today", self.today, "--no-accounts", "--url", base, "--workers", str(self.in_flight)]
        out_path = log.with_name(log.name.replace("server", "seed", 1))
        began = time.perf_counter()
        with out_path.open("wb") as out:
            loader = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
            watch.watch("loader", loader.pid)
            if loader.wait() != 0:
                raise SystemExit(f"the seed load failed (exit {loader.returncode}); see {out_path}")
        seconds = round(time.perf_counter() - began, 1)
        said = out_path.read_text(errors="replace")
        written = re.search(r"^(\d+) resources written, (\d+) already present.*= (\d+) resources/s", said, re.M)
        counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^  ([A-Za-z]+) +(\d+)$", said, re.M)}
        return {"counts": counts, "load": {
            "command": "fhirserver " + " ".join(argv[3:]).replace(base, "<server>"), "seconds": seconds,
            "resources": int(written.group(1)) if written else None,
            "resources_per_s": round(int(written.group(1)) / seconds, 1) if written else None,
            # the loader is this process's only child waited for so far that could be big
            "loader_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
            "summary": [line for line in said.splitlines() if line.startswith("  ") or "resources written" in line],
        }}


def data_source(spec: str) -> DataSource:
    if spec == "datagen":
        return Generated(Dataset())
    if spec == "tiny":
        return Generated(Dataset(patients=4, practitioners=3, observations=160), bundle_size=100, threads=2)
    if spec.startswith("seed:"):
        return Seeded(spec.split(":", 1)[1])
    raise SystemExit(f"--data: {spec!r} is not datagen, tiny or seed:SCALE")


SAMPLING = "spread/2"  # how sample_ids picks; a cached marker picked otherwise is sampled again


def sample_ids(uri: str, db_name: str, seed: int, n: int = 1000, per_patient: int = 2) -> dict:
    """Server ids of `n` Patients picked with a fixed seed from all of them, and of up to `n` Observations (version
    1): `per_patient` of each of the first sampled patients, found as the server's `Observation?patient=` finds them
    (one indexed query each; counting or listing every Observation makes FerretDB hold them all in memory)."""
    store = Store(uri, db_name)
    try:
        db = store.db
        ids = sorted(d["_id"] for d in db["Patient"].find({"del": False}, {"_id": 1}))
        patients = sorted(random.Random(f"{seed}/Patient").sample(ids, min(n, len(ids))))
        observations: list[str] = []
        for pid in patients:
            if len(observations) >= n:
                break
            query = parse("Observation", [("patient", pid)], "http://bench.local/fhir", finder=store.reader).filter
            observations += [d["_id"] for d in db["Observation"].find({**query, "v": 1}, {"_id": 1})
                             .limit(per_patient)]
        return {"patients": patients, "observations": observations, "sampled": SAMPLING}
    finally:
        store.close()


# -- database and data, cached -----------------------------------------------------------------------------------
def prepare(source: DataSource, backend: str, state: Path, reload: bool, nested: bool
            ) -> tuple[sb.Database, dict, bool]:
    """Start the database of `state`, wiping it first when its marker names other data; (db, marker, fresh)."""
    wanted = {"backend": backend, "dataset": source.identity()}
    marker_path = state / sb.MARKER
    marker = json.loads(marker_path.read_text()) if marker_path.exists() else {}
    sb.stop_leftovers(state)
    cached = not reload and {k: marker.get(k) for k in wanted} == wanted
    if not cached and state.exists():
        print(f"removing {state} (it holds other data or an unfinished load)", file=sys.stderr)
        shutil.rmtree(state)
    return sb.start_database(state, backend, nested=nested), marker if cached else wanted, not cached


def load_through_server(source: DataSource, database: sb.Database, workers: int, log: Path) -> dict:
    """`source.fill` through a server of its own, the memory of loader and server sampled all along; its figures
    (`load` with `memory`)."""
    server, base = sb.start_server(database.ferret.uri, workers, log)
    watch = MemoryWatch()
    watch.watch("server", server.pid)
    watch.start()
    try:
        figures = source.fill(base, database.ferret.uri, sb.DB_NAME, log, watch)
        watch.sample()
        memory = {"server_peak_rss_mb_sum_of_processes": peak_rss_mb(children(server.pid)), **watch.stop()}
        figures["load"]["memory"] = memory
        return figures
    finally:
        watch.stop()
        server.terminate()
        server.wait(30)


def fill(source: DataSource, database: sb.Database, marker: dict, workers: int) -> None:
    """Load through the server, vacuum (PostgreSQL), and write the marker last (an interrupted load is redone)."""
    print(f"loading {marker['dataset']} into {database.state} ...", file=sys.stderr, flush=True)
    marker.update(load_through_server(source, database, workers, database.state / "server-load.log"))
    if database.pg is not None:
        started = time.perf_counter()
        sb.vacuum(database.pg)  # the GIN indexes follow in main() (gin_indexes), as for cached data
        marker["load"]["vacuum_seconds"] = round(time.perf_counter() - started, 1)
    (database.state / sb.MARKER).write_text(json.dumps(marker, indent=1) + "\n")
    print(f"  loaded: {marker['load']}", file=sys.stderr, flush=True)


def resample(database: sb.Database, marker: dict) -> bool:
    """Sample ids from the database when the source did not give them (or they were sampled otherwise)."""
    if marker.get("sampled") in (SAMPLING, "given") and "patients" in marker and "observations" in marker:
        return False
    marker.update(sample_ids(database.ferret.uri, sb.DB_NAME, marker["dataset"].get("seed", 1)))
    return True


def gin_indexes(pg: sb.PostgreSQL, keep: bool) -> dict:
    """The GIN indexes the embedded PostgreSQL keeps beside FerretDB's (pgindexes.mirror, which the server runs on
    its maintenance timer when it manages the database; the benchmark's server is given a MONGODB_URI, so the suite
    runs it): created when missing (kept in the cached data), or dropped with `keep` False."""
    started = time.perf_counter()
    if keep:
        created = pgindexes.mirror(pg)
        return {"created": len(created), "seconds": round(time.perf_counter() - started, 1)}
    names = pg.sql("SELECT schemaname || '.' || indexname FROM pg_indexes WHERE indexname LIKE '%\\_gin\\_%'",
                   "ferretdb").split()
    for name in names:
        schema, index = name.split(".", 1)
        pg.sql(f'DROP INDEX IF EXISTS "{schema}"."{index}"', "ferretdb")
    return {"dropped": len(names), "seconds": round(time.perf_counter() - started, 1)}


class Mirroring:
    """pgindexes.mirror every few seconds in a thread while a fresh database fills (the ingest), as the server's
    maintenance timer does on the embedded PostgreSQL."""

    def __init__(self, pg: sb.PostgreSQL | None, every: float = 5.0) -> None:
        self.pg, self.every = pg, every
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        if pg is not None:
            self.thread.start()

    def _loop(self) -> None:
        while not self.stopped.wait(self.every):
            try:
                pgindexes.mirror(self.pg)  # type: ignore[arg-type]
            except Exception as exc:  # noqa: BLE001 - a failed pass is retried on the next tick
                print(f"  GIN mirror failed: {exc}", file=sys.stderr)

    def stop(self) -> None:
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join(120)


# -- measuring ---------------------------------------------------------------------------------------------------
@dataclass
class Run:
    """Settings of one suite run."""

    args: argparse.Namespace
    name: str  # report name: run-<backend>[-quick][-tag]
    results: Path
    rows: list[dict] = field(default_factory=list)
    profiles: dict[str, dict] = field(default_factory=dict)

    def profile(self, workload: str, pid: int) -> Profiler | None:
        if self.args.no_profile:
            return None
        return Profiler(pid, self.results / "profiles" / f"{self.name}-{workload}.txt", self.args.profile_rate)

    def keep_profile(self, workload: str, profiler: Profiler | None) -> None:
        if profiler is None:
            return
        if profiler.stop():
            self.profiles[workload] = {"file": str(profiler.out.relative_to(self.results)),
                                       **top_functions(profiler.out)}
        else:
            self.profiles[workload] = {"error": profiler.error}


def measure_reads(run: Run, database: sb.Database, marker: dict, workloads: list[ReadWorkload]) -> dict:
    """The read workloads on one server: warm-up and id check, server side (profiled), floor side."""
    args = run.args
    server, base = sb.start_server(database.ferret.uri, args.workers, database.state / f"server-{run.name}.log",
                                   threads=args.server_threads)
    store = Store(database.ferret.uri, sb.DB_NAME)
    mongo = MongoClient(database.ferret.uri, maxPoolSize=args.threads * 2)[sb.DB_NAME]
    client = sb.LongHTTP(base, args.request_timeout)
    max_ms = int(args.request_timeout * 1000)
    ctx = Context(marker["patients"], marker["observations"], marker["dataset"].get("seed", 1), base, store,
                  observation_samples(mongo, marker["observations"]))
    try:
        for w in workloads:
            jobs = w.jobs(ctx, args.requests + args.check)
            load_before = os.getloadavg()[0]
            correct, _ = sb.check(client, mongo, [r for job in jobs[:args.check] for r in job], max_ms, False)
            timed = jobs[args.check:]
            row: dict = {"workload": w.name, "title": w.title, "kind": w.kind, "requests_per_job": len(timed[0]),
                         "correctness": correct, "rounds": args.rounds}
            sides = {"server": lambda n, part: server_job(client, part[n]),
                     "floor": lambda n, part: floor_job(mongo, part[n], max_ms)}
            # Server and floor take turns (`rounds` times each, on their own slice of the jobs), so that a change of
            # the machine's load in the middle of a workload weighs on both sides alike.
            latencies: dict[str, list[float]] = {side: [] for side in sides}
            errors = dict.fromkeys(sides, 0)
            seconds = dict.fromkeys(sides, 0.0)
            profiler = run.profile(w.name, server.pid)  # samples taken while the floor runs are not in requests
            for k in range(args.rounds):
                part = timed[k::args.rounds]
                for side, fn in sides.items():
                    m = sb.run_concurrently(f"{w.name}: {side}", lambda n, fn=fn, part=part: fn(n, part), len(part),
                                            args.threads, args.max_seconds / args.rounds, latencies[side])
                    errors[side] += m.errors
                    seconds[side] += m.seconds
                    if m.errors:  # timed-out queries may still run in FerretDB: let them end or restart it
                        sb.settle(database, base)
            run.keep_profile(w.name, profiler)
            for side in sides:
                row[side] = as_dict(summarize(f"{w.name}: {side}", latencies[side], errors[side], seconds[side]))
            row["server"]["rss_mb"] = rss_mb(children(server.pid))
            if len(timed[0]) > 1:
                row["per_request"] = per_request(client, mongo, timed[:args.check or 1], max_ms)
            if row["floor"]["per_second"]:
                row["ratio"] = round(row["server"]["per_second"] / row["floor"]["per_second"], 3)
            row["tail"] = round(row["server"]["p99_ms"] / row["server"]["p50_ms"], 2) if row["server"]["p50_ms"] \
                else None
            row["loadavg_1m"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]
            run.rows.append(row)
            print(f"  {w.name}: server {row['server']['per_second']}/s p50 {row['server']['p50_ms']} ms p99 "
                  f"{row['server']['p99_ms']} ms errors {row['server']['errors']}; floor {row['floor']['per_second']}/s"
                  f" p50 {row['floor']['p50_ms']} ms; ratio {row.get('ratio')}; ids identical {correct['identical']}",
                  file=sys.stderr, flush=True)
        rss = {"server": rss_mb(children(server.pid)), "ferretdb": rss_mb([database.ferret.pid() or 0])}
        if database.pg is not None:
            rss["postgresql"] = rss_mb(database.pids()[1:])
    finally:
        server.terminate()
        server.wait(30)
        store.close()
        mongo.client.close()
    return rss


def per_request(client: sb.LongHTTP, mongo, jobs: list[Job], max_ms: int) -> list[dict]:
    """One client alone: each request of these jobs timed on the server and on the floor (mean ms per request of
    the same position in the job), to show which part of a page costs what."""
    out: list[dict] = []
    for k in range(len(jobs[0])):
        server_ms = floor_ms = 0.0
        for job in jobs:
            started = time.perf_counter()
            client.request("GET", job[k].path)
            server_ms += time.perf_counter() - started
            started = time.perf_counter()
            floor_job(mongo, [job[k]], max_ms)
            floor_ms += time.perf_counter() - started
        out.append({"request": jobs[0][k].path.split("?")[0].lstrip("/").split("/")[0],
                    "server_ms": round(1000 * server_ms / len(jobs), 1),
                    "floor_ms": round(1000 * floor_ms / len(jobs), 1)})
    return out


def measure_ingest(run: Run, database: sb.Database) -> None:
    """The Synthea transaction Bundles through a second server on a scratch database, twice: first on fresh workers
    (cold: each worker imports and builds the fhir.resources models and compiles the search parameters of every type
    it meets for the first time), then again on the same workers (warm: the steady state, the figure compared with
    the floor). Then the documents the warm pass stored, with insert_many into another scratch database."""
    args = run.args
    files = synthea_files(1, shared=False) if args.quick else synthea_files()  # quick: one patient's Bundle
    if not files:
        run.rows.append({"workload": "ingest", "skipped": "no Synthea Bundles found"})
        return
    bodies = [f.read_bytes() for f in files]
    mongo = MongoClient(database.ferret.uri, maxPoolSize=args.threads * 2)
    for name in (INGEST_DB, INGEST_DB + "_floor"):
        mongo.drop_database(name)
    server, base = sb.start_server(database.ferret.uri, args.workers, database.state / f"server-{run.name}-ingest.log",
                                   db_name=INGEST_DB, threads=args.server_threads)
    mirroring = Mirroring(None if args.no_gin else database.pg)
    try:
        profiler = run.profile("ingest-cold", server.pid)
        cold, cold_resources, _ = ingest_server(base, bodies, args.ingest_threads, args.max_seconds * 4)
        run.keep_profile("ingest-cold", profiler)
        profiler = run.profile("ingest", server.pid)
        m, resources, created = ingest_server(base, bodies, args.ingest_threads, args.max_seconds * 4)
        run.keep_profile("ingest", profiler)
        rss = rss_mb(children(server.pid))
    finally:
        mirroring.stop()
        server.terminate()
        server.wait(30)
    try:
        docs = stored_documents(mongo[INGEST_DB], created[:m.requests])
        f, floor_resources = ingest_floor(mongo[INGEST_DB + "_floor"], docs, args.ingest_threads,
                                          args.max_seconds * 4)
    finally:
        for name in (INGEST_DB, INGEST_DB + "_floor"):
            mongo.drop_database(name)
        mongo.close()
    server_rate = round(resources / m.seconds, 1) if m.seconds else 0.0
    cold_rate = round(cold_resources / cold.seconds, 1) if cold.seconds else 0.0
    floor_rate = round(floor_resources / f.seconds, 1) if f.seconds else 0.0
    row = {"workload": "ingest", "kind": "ingest",
           "title": f"transaction ingest: {len(files)} Synthea Bundles, {args.ingest_threads} at a time "
                    f"(resources/s), second pass on warm workers; floor: insert_many of the stored documents",
           "server": {**as_dict(m), "resources": resources, "resources_per_second": server_rate, "rss_mb": rss},
           "cold": {**as_dict(cold), "resources": cold_resources, "resources_per_second": cold_rate},
           "floor": {**as_dict(f), "resources": floor_resources, "resources_per_second": floor_rate},
           "ratio": round(server_rate / floor_rate, 3) if floor_rate else None}
    run.rows.append(row)
    print(f"  ingest: server {server_rate} resources/s ({m.requests} Bundles, {m.errors} errors; first pass "
          f"{cold_rate}/s); floor "
          f"{floor_rate} resources/s; ratio {row['ratio']}", file=sys.stderr, flush=True)


# 32,000 slots (200 practitioners x 8 weeks x 4 a day), 60 slots raced for by 4 clients each: about 3 minutes
SCHEDULING_ARGS = ["--slots-per-day", "4", "--slots-booked", "60", "--max-seconds", "30"]


def helper_section(h: dict, backend: str) -> list[str]:
    """A helper's last report inside the suite's (its headings one level down; scheduling: this backend's part)."""
    path = REPO / h.get("report", "")
    if not h.get("report") or not path.is_file():
        return []
    lines, keep = [], h["benchmark"] != "scheduling"
    for line in path.read_text().splitlines():
        if line.startswith("# "):
            keep = h["benchmark"] != "scheduling" or f"({backend};" in line
            line = "#" + line
        if keep:
            lines.append(line)
    return ["", *lines[:1], "", f"`bench/results/{path.name}`: {h['status']}.", *lines[1:]]


def helper_benchmarks(run: Run, execute: bool) -> list[dict]:
    """bench/scheduling.py (`$find` + `$book` with contention) and bench/auth.py (the cost of authorization), when
    they exist: with `execute`, each runs as its own command (its own database and server, at most 480 s) and writes
    its own report, bench/results/<name>.md; otherwise the suite links the last report each wrote. A failure is
    recorded, not fatal."""
    out = []
    for name in ("scheduling", "auth"):
        if not (REPO / "bench" / f"{name}.py").exists():
            out.append({"benchmark": name, "status": "not present"})
            continue
        if not execute:
            report = RESULTS / f"{name}.md"
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(report.stat().st_mtime)) if report.exists() \
                else None
            out.append({"benchmark": name, "status": f"last report {when}" if when else "no report yet",
                        "report": f"bench/results/{name}.md" if when else ""})
            continue
        began = time.perf_counter()
        argv = ["--backend", run.args.backend, *SCHEDULING_ARGS] if name == "scheduling" else []
        proc = subprocess.Popen([sys.executable, "-m", f"bench.{name}", *argv], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=480)
            status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: the helper and the servers it started
            output, _ = proc.communicate()
            status = "timed out after 480 s"
        out.append({"benchmark": name, "status": status, "seconds": round(time.perf_counter() - began, 1),
                    "report": f"bench/results/{name}.md", "tail": "" if status == "ok" else output[-400:]})
    return out


# -- report ------------------------------------------------------------------------------------------------------
def targets(rows: list[dict]) -> list[dict]:
    """The issue's targets, each with the measured value."""
    out = []
    for row in rows:
        if "server" not in row:
            continue
        kind = row["kind"]
        if row.get("ratio") is not None:
            goal = TARGETS[kind]
            out.append({"target": f"{row['workload']}: server/floor throughput >= {goal}", "value": row["ratio"],
                        "met": row["ratio"] >= goal})
        if kind != "ingest" and row.get("tail") is not None:
            out.append({"target": f"{row['workload']}: p99 <= {TARGETS['tail']} x p50", "value": row["tail"],
                        "met": row["tail"] <= TARGETS["tail"]})
    return out


def _cells(m: dict, rate: str = "per_second") -> str:
    return f"{m['requests']} | {m['errors']} | {m[rate]} | {m['p50_ms']} | {m['p95_ms']} | {m['p99_ms']}"


def summary(report: dict) -> list[str]:
    """The compact table (also shown in the README): throughput of both sides, their ratio, the server's tail."""
    lines = ["| workload | server | floor (pymongo) | server/floor | server p50 / p99 ms | p99/p50 server (floor) |",
             "|---|---|---|---|---|---|"]
    for row in report["rows"]:
        if "server" not in row:
            continue
        ingest = row["kind"] == "ingest"
        rate, unit = ("resources_per_second", "resources/s") if ingest else ("per_second", "pages/s" if
                                                                            row["workload"] == "chart" else "req/s")
        sv, fl = row["server"], row["floor"]
        errors = f", {sv['errors']} errors" if sv["errors"] else ""
        tail = f"{row['tail']} ({round(fl['p99_ms'] / fl['p50_ms'], 2) if fl['p50_ms'] else '-'})" \
            if row.get("tail") else ""
        lines.append(f"| {row['workload']} | {sv[rate]} {unit}{errors} | {fl[rate]} {unit} | {row.get('ratio')} | "
                     f"{sv['p50_ms']} / {sv['p99_ms']} | {tail} |")
    return lines


def load_lines(data: dict) -> list[str]:
    """The seed load's figures (time, rate, memory of loader and server) and those of a load over it, if any."""
    out = []
    for key, what in (("load", "Load"), ("load_again", "The same load again over the loaded data")):
        load = data.get(key) or {}
        if load.get("resources") is None or "command" not in load:  # datagen's loads are described in their row
            continue
        memory = load.get("memory") or {}
        series = {k: [x[k] for x in memory.get("samples", []) if x.get(k)] for k in ("loader_rss_mb", "server_rss_mb")}
        flat = "; ".join(f"{k.split('_')[0]} {min(v)}-{max(v)} MB over {len(v)} samples"
                         for k, v in series.items() if v)
        said = (load.get("summary") or [""])[0]
        out.append(f"{what}: `{load['command']}`: {said or str(load['resources']) + ' resources'}; "
                   f"{load['seconds']} s with start-up = {load['resources_per_s']} resources/s. Peak RSS: loader "
                   f"{load.get('loader_peak_rss_mb')} MB, server {memory.get('server_peak_rss_mb_sum_of_processes')} MB"
                   f" (sum of its processes' peaks); resident memory sampled every 30 s: {flat}.")
    return out


def markdown(report: dict) -> list[str]:
    s, mach, data = report["settings"], report["machine"], report["data"]
    counts = data.get("counts") or {}
    lines = [f"# Benchmark suite: {report['backend']}{' (quick)' if s['quick'] else ''}, {report['when']}", "",
             f"Machine: {mach['cores']} cores, {mach['memory_mb']} MB, Python {mach['python']}. Versions: "
             + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + ".",
             f"Settings: {s['threads']} client threads on loopback; gunicorn {s['workers']} workers x "
             f"{s['server_threads']} threads; FerretDB {s['ferretdb']}"
             f"{'; GIN indexes beside FerretDB on PostgreSQL (pgindexes.mirror)' if s.get('pg_gin') else ''}; "
             f"at most {s['requests']} jobs and "
             f"{s['max_seconds']} s per side; authorization off; floor = pymongo in the driver process, same database.",
             f"Data ({data['source']}): " + ", ".join(f"{v} {k}" for k, v in counts.items()) + "."
             + (" Loaded this run." if report["loaded_this_run"] else " Cached from an earlier run."),
             *load_lines(data), "",
             *summary(report), "", "## Every figure", "",
             "| workload | side | jobs | errors | jobs/s | p50 ms | p95 ms | p99 ms | p99/p50 | server/floor | "
             "server RSS MB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        if "server" not in row:
            lines.append(f"| {row['workload']} | {row.get('skipped', 'skipped')} | | | | | | | | | |")
            continue
        ingest = row["kind"] == "ingest"
        rate = "resources_per_second" if ingest else "per_second"
        label = f"{row['workload']}: {row['title']}"
        lines.append(f"| {label} | server | {_cells(row['server'], rate)} | {row.get('tail') or ''} | "
                     f"{row.get('ratio')} | {row['server']['rss_mb']} |")
        if "cold" in row:
            lines.append(f"|  | server, first pass (cold workers) | {_cells(row['cold'], rate)} | | | |")
        lines.append(f"|  | floor | {_cells(row['floor'], rate)} | | | |")
    for row in report["rows"]:
        if row.get("per_request"):
            lines += ["", f"{row['workload']}, each request alone (one client, mean ms, server / floor): " + ", ".join(
                f"{p['request']} {p['server_ms']} / {p['floor_ms']}" for p in row["per_request"]) + "."]
    lines += ["", "Jobs: one request, except the chart page (one job = its 10 requests in a row) and ingest (one job "
              "= one Bundle; its rate column is resources/s). Server/floor is the ratio of throughputs.", "",
              "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['value']} | {'yes' if t['met'] else 'no'} |" for t in report["targets"]]
    checks = [f"{r['workload']} {r['correctness']['identical']}" for r in report["rows"] if "correctness" in r]
    lines += ["", "Server ids = floor ids on the untimed warm-up requests: " + ", ".join(checks) + ".",
              "RSS MB at the end: " + ", ".join(f"{k} {v}" for k, v in report["rss_mb"].items()) + "."]
    if report["profiles"]:
        lines += ["", "## Where the server's time goes (py-spy, server side of each workload, all workers)", ""]
        for workload, p in report["profiles"].items():
            if "error" in p:
                lines.append(f"- {workload}: no profile ({p['error'].strip()[:200]})")
                continue
            own = ", ".join(f"{f['function']} {f['percent']}%" for f in p["self"][:6])
            ours = ", ".join(f"{f['function']} {f['percent']}%" for f in p["project_total"] if f["percent"] < 99)
            lines.append(f"- **{workload}** ({p['samples']} samples in requests, `{p['file']}`). Own time: {own}. "
                         f"Project functions, total time: {ours}.")
    for h in report["helpers"]:
        lines += helper_section(h, report["backend"])
    lines += ["", f"Run time {report['seconds']} s. Command: `{report['command']}`."]
    return lines


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--data", default="seed:large", help="seed:large (default), seed:SCALE, datagen or tiny")
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer requests, 8 s per side, one "
                        "Synthea patient's Bundle")
    parser.add_argument("--threads", type=int, help="client threads (16; quick 4)")
    parser.add_argument("--requests", type=int,
                        help="timed jobs per workload and side (5000: about 50 above the p99; quick 100)")
    parser.add_argument("--max-seconds", type=float, help="no job starts after this many seconds of a side (40; "
                        "quick 8); ingest gets 4 times as long")
    parser.add_argument("--rounds", type=int, default=2, help="turns each side takes per workload, alternating")
    parser.add_argument("--check", type=int, default=2, help="untimed warm-up jobs whose ids are compared")
    parser.add_argument("--request-timeout", type=float, default=60.0)
    parser.add_argument("--workers", type=int, help="gunicorn workers (2 per core)")
    parser.add_argument("--server-threads", type=int, default=4)
    parser.add_argument("--ingest-threads", type=int, default=4, help="transaction Bundles in flight")
    parser.add_argument("--only", help="comma-separated workloads, of " + ",".join([w.name for w in READS] +
                                                                                     ["ingest"]))
    parser.add_argument("--no-helpers", dest="helpers", action="store_false",
                        help="do not run bench/scheduling.py ($find + $book with contention) and bench/auth.py "
                        "(their last reports are shown instead)")
    parser.add_argument("--no-profile", action="store_true", help="do not attach py-spy")
    parser.add_argument("--profile-rate", type=int, default=50, help="py-spy samples per second")
    parser.add_argument("--ferretdb-default", action="store_true",
                        help="FerretDB without --test-enable-nested-pushdown")
    parser.add_argument("--no-gin", action="store_true",
                        help="PostgreSQL: leave out the GIN indexes the embedded database keeps beside FerretDB's "
                        "(fhirserver/dbserver/pgindexes.py)")
    parser.add_argument("--state", type=Path, help="database folder (default .local/bench/<backend>, "
                        ".local/bench/<backend>-<data> for other data than datagen)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="report folder (default bench/results)")
    parser.add_argument("--tag", default="", help="suffix of the report's name")
    parser.add_argument("--reload", action="store_true", help="wipe the cached database and load again")
    parser.add_argument("--load-again", action="store_true", help="seed data: run the loader once more over the "
                        "loaded data and report what it wrote (nothing, when loading is idempotent)")
    args = parser.parse_args(argv)
    args.threads = args.threads or (4 if args.quick else 16)
    args.requests = args.requests or (100 if args.quick else 5000)
    args.max_seconds = args.max_seconds or (8.0 if args.quick else 40.0)
    args.workers = args.workers or 2 * (os.cpu_count() or 1)
    os.environ["FHIR_AUTH"] = "off"  # the server under test answers without tokens: the workloads alone
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server and the database on the way out

    only = set(args.only.split(",")) if args.only else None
    source = data_source(args.data)
    if args.load_again and not isinstance(source, Seeded):
        raise SystemExit("--load-again: only the seed data is loaded idempotently")
    # one folder per data source, so that switching sources never wipes another's cached load
    folder = args.backend if args.data == "datagen" else f"{args.backend}-{args.data.replace(':', '-')}"
    state = (args.state or REPO / ".local" / "bench" / folder).resolve()
    name = f"run-{folder}" + "-quick" * args.quick + (f"-{args.tag}" if args.tag else "")
    run = Run(args, name, args.results.resolve())
    began = time.perf_counter()
    database, marker, fresh = prepare(source, args.backend, state, args.reload, not args.ferretdb_default)
    try:
        if fresh:
            fill(source, database, marker, args.workers)
        if args.load_again:  # the loader is idempotent: a second load over the loaded data writes nothing
            print("loading the same data again ...", file=sys.stderr, flush=True)
            marker["load_again"] = load_through_server(source, database, args.workers,
                                                       database.state / "server-load-again.log")["load"]
            (database.state / sb.MARKER).write_text(json.dumps(marker, indent=1) + "\n")
            print(f"  again: {marker['load_again']}", file=sys.stderr, flush=True)
        found = sb.versions(database)
        if py_spy():
            found["py-spy"] = subprocess.run([py_spy() or "", "--version"], capture_output=True,
                                             text=True).stdout.split()[-1]
        if database.pg is not None:
            sb.gin_indexes(database.pg, create=False)  # bench/search.py --pg-gin's, if an interrupted run left them
            found["gin_indexes"] = gin_indexes(database.pg, not args.no_gin)
        if resample(database, marker):  # after the GIN indexes: it asks an indexed query per patient
            (database.state / sb.MARKER).write_text(json.dumps(marker, indent=1) + "\n")
        rss = measure_reads(run, database, marker, [w for w in READS if only is None or w.name in only])
        if only is None or "ingest" in only:
            measure_ingest(run, database)
    finally:
        database.stop()
    helpers = [] if args.quick else helper_benchmarks(run, args.helpers)
    report = {
        "benchmark": "suite", "backend": args.backend, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(), "versions": found,
        "settings": {"quick": args.quick, "threads": args.threads, "requests": args.requests,
                     "max_seconds": args.max_seconds, "rounds": args.rounds, "check": args.check,
                     "request_timeout": args.request_timeout,
                     "workers": args.workers, "server_threads": args.server_threads,
                     "ingest_threads": args.ingest_threads, "page_size": sb.PAGE, "fhir_auth": "off",
                     "ferretdb": "default" if args.ferretdb_default else "--test-enable-nested-pushdown",
                     "pg_gin": args.backend == "postgresql" and not args.no_gin,
                     "profile_rate": None if args.no_profile else args.profile_rate},
        "data": {"source": args.data, "identity": marker["dataset"], "counts": marker.get("counts"),
                 "load": marker.get("load"), "load_again": marker.get("load_again")},
        "loaded_this_run": fresh, "rows": run.rows, "targets": targets(run.rows), "rss_mb": rss,
        "profiles": run.profiles, "helpers": helpers, "seconds": round(time.perf_counter() - began, 1),
    }
    path = write_report(name, report, markdown(report), run.results)
    print(path.read_text())
    return path


if __name__ == "__main__":
    main()

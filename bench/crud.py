"""Read and create throughput of the server next to the same operations done with pymongo on the same database.

    .venv/bin/python -m bench.crud [--backend sqlite|postgresql] [--threads 8] [--reads 3000] [--creates 1000]

Starts its own FerretDB (and PostgreSQL) in a temporary folder and the server under gunicorn, then drives both
from this process on loopback. Writes bench/results/crud.json and crud.md.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson
from pymongo import MongoClient

from bench.harness import HTTP, as_dict, children, machine, rss_mb, run_concurrently, write_report
from fhirserver.dbserver import FerretDB, PostgreSQL, build_ferretdb

REPO = Path(__file__).resolve().parent.parent
OBSERVATION = orjson.loads(
    '{"resourceType":"Observation","status":"final","category":[{"coding":[{"system":'
    '"http://terminology.hl7.org/CodeSystem/observation-category","code":"laboratory"}]}],"code":{"coding":'
    '[{"system":"http://loinc.org","code":"2339-0","display":"Glucose"}]},"subject":{"reference":"Patient/p1"},'
    '"effectiveDateTime":"2024-03-05T10:00:00Z","valueQuantity":{"value":6.3,"unit":"mmol/L",'
    '"system":"http://unitsofmeasure.org","code":"mmol/L"}}')
PATIENT = {"resourceType": "Patient", "name": [{"family": "Bench", "given": ["Mark"]}], "gender": "female",
           "birthDate": "1970-01-01", "identifier": [{"system": "urn:bench", "value": "x"}]}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_database(state: Path, backend: str) -> tuple[FerretDB, PostgreSQL | None]:
    binary = build_ferretdb(REPO / ".local" / "bin" / "ferretdb")
    pg = None
    url = ""
    if backend == "postgresql":
        state.chmod(0o755)
        pg = PostgreSQL(state / "pg", free_port())
        pg.start()
        pg.create_database("ferretdb")
        url = pg.url("ferretdb")
    db = FerretDB(binary, state / "ferretdb", free_port(), backend, url)
    db.start()
    return db, pg


def start_server(uri: str, workers: int, threads: int, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "MONGODB_URI": uri, "FHIR_DB_NAME": "bench", "FHIR_PORT": str(port),
           "FHIR_WORKERS": str(workers), "FHIR_THREADS": str(threads), "FHIR_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "fhirserver.cli", "serve"], env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/fhir"
    client = HTTP(base)
    for _ in range(300):
        if client.request("GET", "/metadata")[0] == 200:
            return proc, base
        time.sleep(0.1)
    raise RuntimeError("server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2 * (os.cpu_count() or 1))
    parser.add_argument("--reads", type=int, default=3000)
    parser.add_argument("--creates", type=int, default=1000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fhirbench-") as tmp:
        state = Path(tmp)
        db, pg = start_database(state, args.backend)
        server, base = start_server(db.uri, args.workers, 4, state / "server.log")
        try:
            client = HTTP(base)
            mongo = MongoClient(db.uri, maxPoolSize=args.threads * 2).bench
            body = orjson.dumps(PATIENT)
            ids = [orjson.loads(client.request("POST", "/Patient", body)[1])["id"] for _ in range(300)]
            rng = random.Random(1)
            picks = [rng.choice(ids) for _ in range(args.reads)]
            obs = orjson.dumps(OBSERVATION)

            def server_read(n: int) -> bool:
                return client.request("GET", f"/Patient/{picks[n]}")[0] == 200

            def floor_read(n: int) -> bool:
                return mongo.Patient.find_one({"_id": picks[n]}, {"text": 1}) is not None

            def server_create(n: int) -> bool:
                return client.request("POST", "/Observation", obs)[0] == 201

            def floor_create(n: int) -> bool:
                doc = {**sample_doc, "_id": str(uuid.uuid4())}
                return mongo.floor_observation.insert_one(doc).acknowledged

            client.request("POST", "/Observation", obs)  # one, so that sample_doc has the stored shape
            sample_doc = mongo.Observation.find_one() or {}
            results = []
            for name, fn, total in (("read: server GET /Patient/id", server_read, args.reads),
                                    ("read: floor find_one(_id)", floor_read, args.reads),
                                    ("create: server POST /Observation", server_create, args.creates),
                                    ("create: floor insert_one", floor_create, args.creates)):
                results.append(run_concurrently(name, fn, total, args.threads))
            server_rss = rss_mb(children(server.pid))
            db_rss = rss_mb([db.pid() or 0])
        finally:
            server.terminate()
            server.wait(15)
            db.stop()
            if pg:
                pg.stop()

    read_ratio = results[0].per_second / results[1].per_second
    create_ratio = results[2].per_second / results[3].per_second
    report = {"benchmark": "crud", "backend": args.backend, "threads": args.threads, "workers": args.workers,
              "machine": machine(), "results": [as_dict(r) for r in results],
              "ratios": {"read": round(read_ratio, 3), "create": round(create_ratio, 3)},
              "rss_mb": {"server": server_rss, "ferretdb": db_rss}, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                        time.gmtime())}
    table = [f"# CRUD benchmark ({args.backend}, {args.threads} client threads, {args.workers} workers, "
             f"{machine()['cores']} cores)", "",
             "| workload | requests | errors | req/s | p50 ms | p95 ms | p99 ms |", "|---|---|---|---|---|---|---|"]
    table += [f"| {r.name} | {r.requests} | {r.errors} | {r.per_second} | {r.p50_ms} | {r.p95_ms} | {r.p99_ms} |"
              for r in results]
    table += ["", f"Server / floor throughput: read {read_ratio:.2f}, create {create_ratio:.2f}. "
              f"RSS: server {server_rss} MB, FerretDB {db_rss} MB."]
    path = write_report(f"crud-{args.backend}", report, table)
    print(path.read_text())


if __name__ == "__main__":
    main()

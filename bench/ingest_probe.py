"""Where transaction ingest spends its CPU: in-process steps, or a real server and FerretDB process.

    .venv/bin/python -m bench.ingest_probe [--files N] [--rounds R]
    .venv/bin/python -m bench.ingest_probe --server [--workers W] [--rounds R]

Without ``--server``: runs the steps of `Transaction` that do not touch the store over the Synthea Bundles and
prints CPU milliseconds (process time) per resource for each step (the first round, cold: model imports and
parameter compilation, then the best warm round). With ``--server``: starts FerretDB (SQLite) and `fhirserver
serve` on a scratch folder, POSTs the Bundles one at a time (round 0 on the fresh server, then again: new ids each
time) and prints, per round, wall time and the CPU seconds the server processes and FerretDB spent per resource:
CPU time is far less disturbed by other load on the machine than throughput is.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from bench.harness import children, cpu_seconds
from fhirserver import fhirjson
from fhirserver.dbserver import FerretDB, build_ferretdb
from fhirserver.interactions import transaction as tx
from fhirserver.interactions.versions import make_version, next_timestamp

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "synthea-r4"


def one_round(bodies: list[bytes]) -> tuple[dict[str, float], int]:
    spent: dict[str, float] = defaultdict(float)
    count = 0
    for body in bodies:
        t0 = time.process_time()
        bundle = fhirjson.loads(body)
        t1 = time.process_time()
        entries = tx._parse_entries(bundle, "http://probe/fhir")
        for e in entries:
            e.target = tx.create_mod.new_id()
        run = tx.Transaction.__new__(tx.Transaction)
        run.base, run.conditional_refs = "http://probe/fhir", {}
        run._rewrite_references(entries)
        t2 = time.process_time()
        run._validate(entries)
        t3 = time.process_time()
        for e in entries:
            make_version(e.type, e.target, 1, next_timestamp(None), e.resource, "POST")
        t4 = time.process_time()
        spent["loads"] += t1 - t0
        spent["parse+rewrite"] += t2 - t1
        spent["validate"] += t3 - t2
        spent["make_version"] += t4 - t3
        count += len(entries)
    return spent, count


def server_rounds(bodies: list[bytes], rounds: int, workers: int) -> None:
    from bench.crud import free_port
    from bench.search import post_bundle, start_server

    os.environ["FHIR_AUTH"] = "off"  # the server inherits it
    state = Path(tempfile.mkdtemp(prefix="ingest-probe-"))
    binary = build_ferretdb(Path(__file__).resolve().parents[1] / ".local" / "bin" / "ferretdb")
    ferret = FerretDB(binary, state / "ferretdb", free_port())
    ferret.start()
    try:
        server, base = start_server(ferret.uri, workers, state / "server.log", db_name="probe", threads=4)
        try:
            pids, fpid = children(server.pid), ferret.pid() or 0
            for n in range(rounds):
                s0, f0, t0 = cpu_seconds(pids, True), cpu_seconds([fpid], True), time.perf_counter()
                resources = 0
                for body in bodies:
                    status, answer = post_bundle(base, body)
                    assert status == 200, answer[:500]
                    resources += answer.count(b'"status":"201')
                wall = time.perf_counter() - t0
                s1, f1 = cpu_seconds(pids, True), cpu_seconds([fpid], True)
                print(f"round {n} ({'cold' if n == 0 else 'warm'}, {workers} worker(s)): {resources} resources in "
                      f"{wall:.1f} s ({resources / wall:.0f}/s); CPU ms/resource: server "
                      f"{1000 * (s1 - s0) / resources:.2f}, ferretdb {1000 * (f1 - f0) / resources:.2f}", flush=True)
        finally:
            server.terminate()
            server.wait(30)
    finally:
        ferret.stop()
        subprocess.run(["rm", "-rf", str(state)], check=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=28)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--server", action="store_true", help="through a real server and FerretDB")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    if args.server:
        from bench.workloads import synthea_files

        files = synthea_files()[: args.files]
        if not files:
            raise SystemExit("no Synthea Bundles found")
        server_rounds([f.read_bytes() for f in files], args.rounds, args.workers)
        return
    bodies = [p.read_bytes() for p in sorted(DATA.glob("*.json"))[: args.files]]
    rounds = [one_round(bodies) for _ in range(args.rounds)]
    for label, (spent, count) in (("cold", rounds[0]), ("warm", min(rounds[1:] or rounds,
                                                                      key=lambda r: sum(r[0].values())))):
        total = sum(spent.values())
        parts = "  ".join(f"{k} {1000 * v / count:.3f}" for k, v in spent.items())
        print(f"{label}: {count} resources, {1000 * total / count:.3f} ms/resource ({count / total:.0f}/s): {parts}")


if __name__ == "__main__":
    main()

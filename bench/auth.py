"""Added latency of authorization: the same server code on the same database, once with FHIR_AUTH=off and once
with FHIR_AUTH=on (a valid bearer token on every request), side by side in one run.

    .venv/bin/python -m bench.auth [--threads 4] [--requests 1500] [--search-requests 200] [--rounds 2]

Starts its own FerretDB (SQLite) in a temporary folder and two server processes on one database: `off` and `on`.
Tokens come from the real flows: a Backend Services client (`system/*.rs`, private_key_jwt ES384) and a patient's
standalone launch through the sign-in and consent pages (`patient/*.rs` with the patient in context, so searches
are confined to the patient compartment). Workloads: a read (GET Patient/id) and a search (GET Observation?patient=
id, 5 matches). Modes run in alternating order over several rounds; every row is one measurement. With FHIR_AUTH=on
the server also writes an AuditEvent per access (asynchronously): that is part of what "on" costs.
Writes bench/results/auth.json and auth.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import orjson
from pymongo import MongoClient

from bench.crud import OBSERVATION, PATIENT, free_port, start_database
from bench.harness import HTTP, Measurement, as_dict, machine, run_concurrently, write_report

DB_NAME = "benchauth"


def bearer_client(base: str, token: str | None) -> HTTP:
    """harness.HTTP with an Authorization header on every request."""
    headers = {"Accept": "application/fhir+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return HTTP(base, headers)


@dataclass
class Server:
    proc: subprocess.Popen
    url: str

    @property
    def base(self) -> str:
        return f"{self.url}/fhir"


def start_server(uri: str, auth: str, workers: int, threads: int, log: Path) -> Server:
    port = free_port()
    env = {**os.environ, "MONGODB_URI": uri, "FHIR_DB_NAME": DB_NAME, "FHIR_PORT": str(port),
           "FHIR_HOST": "127.0.0.1", "FHIR_WORKERS": str(workers), "FHIR_THREADS": str(threads),
           "FHIR_LOG_LEVEL": "WARNING", "FHIR_AUTH": auth, "FHIR_SECRET_KEY": "bench-auth-secret-key-0123456789"}
    proc = subprocess.Popen([sys.executable, "-m", "fhirserver.cli", "serve"], env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(proc, f"http://127.0.0.1:{port}")
    probe = HTTP(server.base)
    for _ in range(600):
        if probe.request("GET", "/metadata")[0] == 200:
            return server
        time.sleep(0.1)
    raise RuntimeError(f"server ({auth}) did not start: {log.read_text()[-2000:]}")


def tokens(on: Server, db_uri: str, patient: str) -> tuple[Callable[[], str], str]:
    """(a maker of fresh system tokens, a patient-scoped token), both from real flows against the `on` server.
    Backend tokens live at most 5 minutes, so each measurement takes a new one."""
    from tests.smart_helpers import Browser, new_app, new_backend, new_user

    class Target:  # what the helpers need of a server: its origin and FHIR base
        url, base = on.url, on.base

    db = MongoClient(db_uri)[DB_NAME]
    backend = new_backend(Target, db, "system/*.rs", client_id="bench-backend")
    new_user(db, "bench-patient", f"Patient/{patient}")
    app = new_app(Target, db, name="Bench App")
    launched = app.launch(Browser(on.url), "bench-patient", "launch/patient patient/*.rs")
    assert launched["patient"] == patient
    return (lambda: backend.fetch("system/*.rs", alg="ES384")["access_token"]), launched["access_token"]


def verify_cost(on: Server, db_uri: str, tokens: dict[str, str], calls: int) -> dict[str, dict[str, float]]:
    """Token verification alone, in this process: the `SmartServices.verify` the server runs per request (token
    lookup, audience check, the user's patients through the few-seconds cache), timed over `calls` calls."""
    from flask import Flask

    from fhirserver.resources import proxies
    from fhirserver.store.database import Store
    from smart_auth.web import init_app

    store = Store(db_uri, DB_NAME)
    smart = init_app(Flask("bench-auth"), store.db, SimpleNamespace(base_url=on.base, secret_key="x" * 32),
                     patients_for=lambda user: proxies.patients_for(store, user.username, user.fhir_user))
    out = {}
    for name, token in tokens.items():
        assert smart.verify(token) is not None
        timings = []
        for _ in range(calls):
            started = time.perf_counter()
            smart.verify(token)
            timings.append((time.perf_counter() - started) * 1000)
        timings.sort()
        out[name] = {"p50_ms": round(statistics.median(timings), 2),
                     "p95_ms": round(timings[int(0.95 * len(timings))], 2)}
    return out


def seed(off: Server, patients: int) -> tuple[str, list[str]]:
    """`patients` Patients with 5 Observations each; (the benchmarked patient, all patient ids)."""
    client = bearer_client(off.base, None)
    ids = []
    for _ in range(patients):
        status, body = client.request("POST", "/Patient", orjson.dumps(PATIENT))
        assert status == 201, body
        pid = orjson.loads(body)["id"]
        ids.append(pid)
        for _ in range(5):
            obs = {**OBSERVATION, "subject": {"reference": f"Patient/{pid}"}}
            assert client.request("POST", "/Observation", orjson.dumps(obs))[0] == 201
    return ids[0], ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--requests", type=int, default=1500, help="per read measurement")
    parser.add_argument("--search-requests", type=int, default=200, help="per search measurement")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--patients", type=int, default=20)
    args = parser.parse_args()

    rows: list[tuple[int, str, str, Measurement]] = []
    with tempfile.TemporaryDirectory(prefix="fhirbench-auth-") as tmp:
        state = Path(tmp)
        db, _ = start_database(state, "sqlite")
        servers: list[Server] = []
        try:
            off = start_server(db.uri, "off", args.workers, 4, state / "off.log")
            servers.append(off)
            on = start_server(db.uri, "on", args.workers, 4, state / "on.log")
            servers.append(on)
            patient, _ = seed(off, args.patients)
            system_token, patient_token = tokens(on, db.uri, patient)
            system = bearer_client(on.base, system_token())
            clients = {"off": bearer_client(off.base, None), "on, system token": system,
                       "on, patient token": bearer_client(on.base, patient_token)}
            workloads = {"read GET /Patient/id": (f"/Patient/{patient}", args.requests),
                         "search GET /Observation?patient=id": (f"/Observation?patient={patient}",
                                                                args.search_requests)}
            for mode, client in clients.items():  # every mode answers 200 with the same body size
                for path, _ in workloads.values():
                    status, body = client.request("GET", path)
                    assert status == 200, (mode, path, status, body[:300])
                    client.request("GET", path)  # warm the connection and caches
            verify = verify_cost(on, db.uri, {"system token": system_token(), "patient token": patient_token}, 300)
            for round_ in range(args.rounds):
                order = list(clients.items()) if round_ % 2 == 0 else list(clients.items())[::-1]
                for workload, (path, total) in workloads.items():
                    for mode, client in order:
                        if client is system:
                            system.headers["Authorization"] = f"Bearer {system_token()}"

                        def work(n: int, client: HTTP = client, path: str = path) -> bool:
                            return client.request("GET", path)[0] == 200
                        run_concurrently("warm-up", work, max(20, total // 10), args.threads)
                        m = run_concurrently(f"{workload} [{mode}]", work, total, args.threads)
                        rows.append((round_ + 1, workload, mode, m))
                        print(f"round {round_ + 1} {m.name}: {m.per_second} req/s, p50 {m.p50_ms} ms, "
                              f"p95 {m.p95_ms}, p99 {m.p99_ms}, errors {m.errors}", flush=True)
        finally:
            for server in servers:
                server.proc.terminate()
                server.proc.wait(15)
            db.stop()

    summary = []
    for workload in dict.fromkeys(r[1] for r in rows):
        base = [r[3] for r in rows if r[1] == workload and r[2] == "off"]
        for mode in ("on, system token", "on, patient token"):
            ms = [r[3] for r in rows if r[1] == workload and r[2] == mode]

            def mean(values: list[float]) -> float:
                return round(statistics.fmean(values), 2)

            summary.append({
                "workload": workload, "mode": mode,
                "added_p50_ms": mean([m.p50_ms - b.p50_ms for m, b in zip(ms, base, strict=True)]),
                "added_p95_ms": mean([m.p95_ms - b.p95_ms for m, b in zip(ms, base, strict=True)]),
                "added_p99_ms": mean([m.p99_ms - b.p99_ms for m, b in zip(ms, base, strict=True)]),
                "throughput_ratio": round(statistics.fmean(m.per_second for m in ms)
                                          / statistics.fmean(b.per_second for b in base), 3)})
    report = {"benchmark": "auth", "threads": args.threads, "workers_per_server": args.workers,
              "requests_per_measurement": {"read": args.requests, "search": args.search_requests},
              "rounds": args.rounds, "machine": machine(),
              "results": [{"round": r, "workload": w, "mode": mode, **as_dict(m)} for r, w, mode, m in rows],
              "added_by_authorization": summary, "token_verification_in_process": verify,
              "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    table = [f"# Authorization overhead (FHIR_AUTH off vs on, same database, {args.threads} client threads, "
             f"{args.workers} workers per server, {machine()['cores']} cores)", "",
             "`.venv/bin/python -m bench.auth` — both servers run at once on one FerretDB (SQLite); modes alternate "
             "order each round. `on` includes token lookup, scope and compartment checks, and the asynchronous "
             "AuditEvent per access.", "",
             "| round | workload | mode | requests | errors | req/s | p50 ms | p95 ms | p99 ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    table += [f"| {r} | {w} | {mode} | {m.requests} | {m.errors} | {m.per_second} | {m.p50_ms} | {m.p95_ms} | "
              f"{m.p99_ms} |" for r, w, mode, m in rows]
    table += ["", "Added by authorization (mean over rounds of on minus off):", "",
              "| workload | mode | + p50 ms | + p95 ms | + p99 ms | throughput on/off |", "|---|---|---|---|---|---|"]
    table += [f"| {s['workload']} | {s['mode']} | {s['added_p50_ms']} | {s['added_p95_ms']} | {s['added_p99_ms']} | "
              f"{s['throughput_ratio']} |" for s in summary]
    table += ["", "Token verification alone (`SmartServices.verify`, in-process, 300 calls, single thread): "
              + ", ".join(f"{k} p50 {v['p50_ms']} ms / p95 {v['p95_ms']} ms" for k, v in verify.items())
              + ". The rest of the difference is what else `on` does per request, not separated here: the "
              "AuditEvent of each request (queued, then written by a thread of the same process through the normal "
              "create path, competing for the same cores and database), and for patient tokens the compartment "
              "filter of the read and search."]
    path = write_report("auth", report, table)
    print(path.read_text())


if __name__ == "__main__":
    main()

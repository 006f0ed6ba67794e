"""Measure a seed load end to end: a FerretDB (SQLite) and a server of its own under a state folder, the loader in
this process over HTTP, time-bounded if asked; reports time, resources/s and the resident memory of the loader,
the server (master and workers) and the database, sampled along the way to show whether it stays flat.

    .venv/bin/python -m seed_data.measure --scale large --seconds 1200 --state /tmp/seed-large

SIGINT or SIGTERM ends it early the same way: no new batches, the ones in flight finish, the summary is written.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import date
from pathlib import Path

import requests

from fhirserver.dbserver import FerretDB, build_ferretdb
from seed_data import generator
from seed_data.common import Resource
from seed_data.loader import HttpSink, load

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _status(pid: int, field: str) -> int:
    """A /proc/<pid>/status value in kB (0 when the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _bounded(groups: Iterable[list[Resource]], seconds: float | None,
             interrupted: threading.Event) -> Iterator[list[Resource]]:
    """The groups until `seconds` have passed or a signal came; the batches in flight are then finished."""
    end = time.monotonic() + seconds if seconds else None
    for group in groups:
        if interrupted.is_set() or (end is not None and time.monotonic() > end):
            return
        yield group


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="large", choices=["small", "medium", "large"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=None, help="stop generating after this long")
    parser.add_argument("--state", type=Path, required=True, help="folder for the database and logs")
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--workers", type=int, default=3, help="transactions in flight")
    parser.add_argument("--server-workers", default="3", help="gunicorn worker processes")
    args = parser.parse_args()

    args.state.mkdir(parents=True, exist_ok=True)
    db = FerretDB(binary=build_ferretdb(REPO / ".local" / "bin" / "ferretdb"), state=args.state / "ferretdb",
                  port=_free_port())
    db.start()
    port = _free_port()
    env = {**os.environ, "MONGODB_URI": db.uri, "FHIR_DB_NAME": "seedmeasure", "FHIR_AUTH": "off",
           "FHIR_WORKERS": args.server_workers, "FHIR_PORT": str(port), "FHIR_HOST": "127.0.0.1",
           "FHIR_LOG_LEVEL": "WARNING", "FHIR_JOBS": "off"}
    with open(args.state / "server.log", "ab") as log:
        server = subprocess.Popen([sys.executable, "-m", "fhirserver.cli", "serve"], env=env, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}/fhir"
    samples: list[dict] = []
    stop = threading.Event()
    try:
        for _ in range(300):
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        done = {"n": 0}
        started = time.perf_counter()

        def sample() -> None:
            while not stop.wait(10):
                tree = _tree(server.pid)
                samples.append({
                    "t": round(time.perf_counter() - started, 1), "resources": done["n"],
                    "loader_rss_mb": round(_status(os.getpid(), "VmRSS") / 1024, 1),
                    "server_rss_mb": round(sum(_status(p, "VmRSS") for p in tree) / 1024, 1),
                    "server_processes": len(tree),
                    "ferretdb_rss_mb": round(_status(db.pid() or 0, "VmRSS") / 1024, 1),
                })
                s = samples[-1]
                print(f"{s['t']:>7.0f}s {s['resources']:>9} resources {s['resources'] / s['t']:7.1f}/s  "
                      f"RSS loader {s['loader_rss_mb']} MB, server {s['server_rss_mb']} MB "
                      f"({s['server_processes']} processes), ferretdb {s['ferretdb_rss_mb']} MB", flush=True)

        threading.Thread(target=sample, daemon=True).start()

        def progress(n: int) -> None:
            done["n"] += n

        interrupted = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: interrupted.set())
        groups = _bounded(generator.groups(args.seed, args.scale, date.today()), args.seconds, interrupted)
        summary = load(groups, HttpSink(base), batch_size=args.batch, workers=args.workers, progress=progress)
        stop.set()
        tree = _tree(server.pid)
        result = {
            "scale": args.scale, "seconds_bound": args.seconds, "estimate_total": generator.estimate(args.scale),
            "written": summary.total_written, "skipped": summary.skipped, "seconds": round(summary.seconds, 1),
            "resources_per_s": round(summary.rate, 1), "by_type": dict(summary.written),
            "loader_peak_rss_mb": round(_status(os.getpid(), "VmHWM") / 1024, 1),
            "server_peak_rss_mb_per_process": {p: round(_status(p, "VmHWM") / 1024, 1) for p in tree},
            "server_peak_rss_mb_sum_sampled": max((s["server_rss_mb"] for s in samples), default=None),
            "ferretdb_peak_rss_mb": round(_status(db.pid() or 0, "VmHWM") / 1024, 1),
            "samples": samples,
        }
        (args.state / "measure.json").write_text(json.dumps(result, indent=2))
        print("\n".join(summary.lines()))
        print(json.dumps({k: v for k, v in result.items() if k not in ("samples", "by_type")}, indent=2))
    finally:
        stop.set()
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
        db.stop()


if __name__ == "__main__":
    main()

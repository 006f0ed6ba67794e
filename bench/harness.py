"""Shared pieces of the benchmarks: a timed concurrent loop, latency percentiles, and result files."""

from __future__ import annotations

import http.client
import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Measurement:
    """One workload's figures."""

    name: str
    requests: int
    errors: int
    seconds: float
    per_second: float
    p50_ms: float
    p95_ms: float
    p99_ms: float


def run_concurrently(name: str, work: Callable[[int], bool], total: int, threads: int,
                     max_seconds: float = 120.0) -> Measurement:
    """Call work(n) for n in range(total) on `threads` threads (bounded by count and time); time each call."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    counter = iter(range(total))
    deadline = time.monotonic() + max_seconds

    def worker() -> None:
        nonlocal errors
        while time.monotonic() < deadline:
            with lock:
                n = next(counter, None)
            if n is None:
                return
            started = time.perf_counter()
            ok = work(n)
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                errors += 0 if ok else 1

    began = time.perf_counter()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    seconds = time.perf_counter() - began
    ms = sorted(x * 1000 for x in latencies) or [0.0]

    def pct(p: float) -> float:
        return round(ms[min(len(ms) - 1, int(p * len(ms)))], 2)

    return Measurement(name, len(latencies), errors, round(seconds, 3), round(len(latencies) / seconds, 1),
                       round(statistics.median(ms), 2), pct(0.95), pct(0.99))


class HTTP:
    """A keep-alive HTTP client per thread (http.client: far less overhead per call than requests)."""

    def __init__(self, base: str) -> None:
        parts = urlsplit(base)
        self.host, self.port, self.prefix = parts.hostname, parts.port, parts.path
        self.local = threading.local()

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        headers = {"Content-Type": "application/fhir+json"} if body is not None else {}
        try:
            conn.request(method, self.prefix + path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        except (http.client.HTTPException, OSError):
            self.local.conn = None
            conn.close()
            return 0, b""


def machine() -> dict:
    """What the figures were measured on."""
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) // 1024
    except OSError:
        pass
    return {"cores": os.cpu_count(), "memory_mb": mem, "python": platform.python_version(),
            "platform": platform.platform()}


def rss_mb(pids: list[int]) -> float:
    """Resident memory of these processes, in MB."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return round(total / 1024, 1)


def children(pid: int) -> list[int]:
    """A process and all its descendants."""
    found = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                for child in f.read().split():
                    found.extend(children(int(child)))
    except OSError:
        pass
    return found


def write_report(name: str, report: dict, table: list[str]) -> Path:
    """bench/results/<name>.json and .md."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (RESULTS / f"{name}.md").write_text("\n".join(table) + "\n")
    return RESULTS / f"{name}.md"


def as_dict(m: Measurement) -> dict:
    return asdict(m)

"""Shared pieces of the benchmarks: a timed concurrent loop, latency percentiles, a sampling profiler attached to the
server (py-spy), and result files."""

from __future__ import annotations

import http.client
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
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
                     max_seconds: float = 120.0, sink: list[float] | None = None) -> Measurement:
    """Call work(n) for n in range(total) on `threads` threads (bounded by count and time); time each call (and
    append the latencies, in seconds, to `sink` when given)."""
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
    if sink is not None:
        sink.extend(latencies)
    return summarize(name, latencies, errors, time.perf_counter() - began)


def summarize(name: str, latencies: list[float], errors: int, seconds: float) -> Measurement:
    """A Measurement from per-call latencies (seconds) over `seconds` of wall time."""
    ms = sorted(x * 1000 for x in latencies) or [0.0]

    def pct(p: float) -> float:
        return round(ms[min(len(ms) - 1, int(p * len(ms)))], 2)

    return Measurement(name, len(latencies), errors, round(seconds, 3), round(len(latencies) / max(seconds, 1e-9), 1),
                       round(statistics.median(ms), 2), pct(0.95), pct(0.99))


class HTTP:
    """A keep-alive HTTP client per thread (http.client: far less overhead per call than requests)."""

    def __init__(self, base: str, headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(base)
        self.host, self.port, self.prefix = parts.hostname, parts.port, parts.path
        self.local = threading.local()
        self.headers = headers or {}  # sent with every request

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        headers = {**self.headers, **({"Content-Type": "application/fhir+json"} if body is not None else {})}
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


def cpu_seconds(pids: list[int], waited_children: bool = False) -> float:
    """User + system CPU time consumed so far by these processes (and by their children they waited for)."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += sum(int(x) for x in fields[11:15 if waited_children else 13])
        except (OSError, IndexError, ValueError):
            continue
    return ticks / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pids: list[int]) -> float:
    """The sum of these processes' own peaks (VmHWM), in MB: an upper bound of their peak together."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next((int(line.split()[1]) for line in f if line.startswith("VmHWM:")), 0)
        except OSError:
            continue
    return round(total / 1024, 1)


class MemoryWatch:
    """Resident memory of named process trees, sampled every `every` seconds on a thread of its own, to show
    whether a long run stays flat."""

    def __init__(self, every: float = 30.0) -> None:
        self.every = every
        self.roots: dict[str, int] = {}
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._began = time.perf_counter()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def watch(self, name: str, pid: int) -> None:
        self.roots[name] = pid

    def start(self) -> MemoryWatch:
        self._thread.start()
        return self

    def sample(self) -> dict:
        row = {"t": round(time.perf_counter() - self._began, 1)}
        row.update({f"{name}_rss_mb": rss_mb(children(pid)) for name, pid in list(self.roots.items())})
        self.samples.append(row)
        return row

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()

    def stop(self) -> dict:
        """Stop sampling; the highest sampled figure of each tree, and the samples."""
        self._stop.set()
        self._thread.join()
        peaks = {k: max(s.get(k, 0) for s in self.samples) for k in {k for s in self.samples for k in s} - {"t"}}
        return {"sampled_peak_mb": peaks, "samples": self.samples}


def write_report(name: str, report: dict, table: list[str], folder: Path = RESULTS) -> Path:
    """<folder>/<name>.json and .md (folder: bench/results)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (folder / f"{name}.md").write_text("\n".join(table) + "\n")
    return folder / f"{name}.md"


def as_dict(m: Measurement) -> dict:
    return asdict(m)


# -- profiles ----------------------------------------------------------------------------------------------------
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str | None:
    """The py-spy executable beside this interpreter (a dev dependency), or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Profiler:
    """py-spy sampling a process and its children (gunicorn's master and workers) into collapsed stacks.

    `--nonblocking` reads the stacks without pausing the server, so the measurement it runs beside is not slowed by
    more than py-spy's own CPU. A missing py-spy or a refused ptrace leaves `error` set and `ok()` False.
    """

    def __init__(self, pid: int, out: Path, rate: int = 50) -> None:
        self.out = out
        self.error = ""
        self.proc: subprocess.Popen | None = None
        exe = py_spy()
        if exe is None:
            self.error = "py-spy is not installed"
            return
        out.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([exe, "record", "--pid", str(pid), "--subprocesses", "--nonblocking",
                                      "--rate", str(rate), "--format", "raw", "--output", str(out)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(0.5)  # attaching takes a moment; samples before that would be lost anyway
        if self.proc.poll() is not None:
            self.error = (self.proc.stdout.read().decode(errors="replace") if self.proc.stdout else "")[-300:]

    def stop(self) -> bool:
        """Stop sampling (py-spy writes its file on SIGINT); True if a profile was written."""
        if self.proc is None:
            return False
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.out.exists() or not self.out.stat().st_size:
            tail = (self.proc.stdout.read().decode(errors="replace") if self.proc.stdout else "")[-300:]
            self.error = self.error or tail or "py-spy wrote no samples"
            return False
        return True


def _frames(line: str) -> tuple[list[tuple[str, str]], int]:
    """(function, file) of each Python frame of one collapsed stack (root first), and its sample count."""
    stack, _, count = line.rpartition(" ")
    frames = []
    for frame in stack.split(";"):
        m = FRAME.match(frame)
        if m:
            frames.append((m["function"], m["file"]))
    return frames, int(count) if count.isdigit() else 0


def top_functions(path: Path, n: int = 12, own: tuple[str, ...] = ("fhirserver/", "smart_auth/"),
                  within: str = "Flask.wsgi_app") -> dict:
    """The hottest functions of a collapsed-stack profile, among the samples taken inside `within` (handling a
    request; threads waiting for work or the arbiter's loop are left out): by own time (the leaf frame), by total
    time (anywhere on the stack) and, among this project's code, by total time; percentages of those samples."""
    leaf: Counter[str] = Counter()
    total: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    samples = everything = 0
    for line in path.read_text(errors="replace").splitlines():
        frames, count = _frames(line)
        everything += count
        if not frames or not count or not any(f == within for f, _ in frames):
            continue
        samples += count
        function, file = frames[-1]
        leaf[f"{function} ({_short(file)})"] += count
        seen = {f"{f} ({_short(p)})" for f, p in frames}
        for name in seen:
            total[name] += count
        for name in {f"{f} ({_short(p)})" for f, p in frames if any(o in p for o in own)}:
            ours[name] += count

    def ranked(c: Counter[str]) -> list[dict]:
        return [{"function": k, "percent": round(100 * v / samples, 1)} for k, v in c.most_common(n)]

    return {"samples": samples, "all_samples": everything, "self": ranked(leaf), "total": ranked(total),
            "project_total": ranked(ours)}


def _short(file: str) -> str:
    """A source path from the package root on (`fhirserver/store/commit.py`, `pymongo/...`, `threading.py`)."""
    return LIBRARY.sub("", file).removeprefix(str(REPO) + "/")


LIBRARY = re.compile(r"^.*/(?:site-packages|lib/python3\.\d+)/")
REPO = RESULTS.parent.parent

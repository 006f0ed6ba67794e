"""The benchmark suite's one command works: a quick run on a tiny generated dataset on FerretDB/SQLite measures every
workload on the server and on the floor without errors, finds the same ids on both, writes its reports, and a
second run reuses the loaded data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.servers import REPO


def _suite(tmp_path: Path, *extra: str) -> dict:
    argv = [sys.executable, "-m", "bench.run", "--quick", "--backend", "sqlite", "--data", "tiny",
            "--state", str(tmp_path / "state"), "--results", str(tmp_path / "results"), "--threads", "2",
            "--workers", "2", "--requests", "12", "--max-seconds", "1.5", "--rounds", "1", *extra]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((tmp_path / "results" / "run-sqlite-tiny-quick.json").read_text())


def test_quick_suite_on_tiny_sqlite(tmp_path: Path) -> None:
    report = _suite(tmp_path)
    assert report["loaded_this_run"] is True
    assert report["data"]["counts"]["Observation"] == 160
    rows = {r["workload"]: r for r in report["rows"]}
    assert set(rows) == {"read", "vread", "obs-code", "encounter-window", "chart", "ingest"}
    for name, row in rows.items():
        for side in ("server", "floor"):
            assert row[side]["requests"] > 0, (name, side)
            assert row[side]["errors"] == 0, (name, side, row[side])
            assert 0 < row[side]["p50_ms"] <= row[side]["p95_ms"] <= row[side]["p99_ms"], (name, side)
        assert row["ratio"] > 0
        if name != "ingest":
            assert row["correctness"]["identical"] is True, (name, row["correctness"])
    assert rows["chart"]["requests_per_job"] == 10
    ingest = rows["ingest"]
    assert ingest["server"]["resources"] == ingest["floor"]["resources"] >= 50  # one Synthea patient's Bundle
    assert ingest["cold"]["resources"] == ingest["server"]["resources"]
    assert {t["target"].split(":")[0] for t in report["targets"]} == set(rows)
    table = (tmp_path / "results" / "run-sqlite-tiny-quick.md").read_text()
    assert "| read: GET Observation/{id} | server |" in table and "## Targets" in table
    for profile in report["profiles"].values():  # py-spy may be refused ptrace; when it ran, it named functions
        if "error" not in profile and profile["samples"]:
            assert profile["self"] and (tmp_path / "results" / profile["file"]).exists()

    again = _suite(tmp_path, "--only", "read", "--no-profile")
    assert again["loaded_this_run"] is False
    assert [r["workload"] for r in again["rows"]] == ["read"] and again["rows"][0]["server"]["errors"] == 0

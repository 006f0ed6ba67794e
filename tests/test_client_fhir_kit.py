"""The npm client `fhir-kit-client` drives the server: runs `tests/js/*.test.mjs` with node's own test runner.

`npm ci` runs first when `tests/js/node_modules` is missing or was installed from another `package-lock.json` (a stamp
holding the lock file's sha256 says which). A failing JavaScript test fails this test, with the runner's output.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.servers import REPO

JS = REPO / "tests" / "js"
STAMP = JS / "node_modules" / ".installed-from-lock"
TIMEOUT = 600


def _tool(name: str) -> str:
    """The path of a command-line tool; the test fails (not skips) without it: a missing client is a failing one."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: the fhir-kit-client tests need Node.js >= 20 and npm")
    return path


def _lock_digest() -> str:
    """sha256 of tests/js/package-lock.json."""
    return hashlib.sha256((JS / "package-lock.json").read_bytes()).hexdigest()


def _ensure_node_modules() -> None:
    """`npm ci` unless node_modules was installed from the current package-lock.json (one test run at a time)."""
    digest = _lock_digest()
    lock_path = Path(tempfile.gettempdir()) / f"fhirserver-npm-{hashlib.sha256(str(JS).encode()).hexdigest()[:12]}"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two pytest runs must not `npm ci` the same folder at once
        if STAMP.exists() and STAMP.read_text().strip() == digest:
            return
        done = subprocess.run([_tool("npm"), "ci", "--no-audit", "--no-fund"], cwd=JS, capture_output=True,
                              text=True, timeout=TIMEOUT)
        assert done.returncode == 0, f"npm ci failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        STAMP.write_text(digest + "\n")


def _test_files() -> list[str]:
    """The JavaScript test files, relative to tests/js."""
    return sorted(p.name for p in JS.glob("*.test.mjs"))


def test_fhir_kit_client(server) -> None:
    """`node --test` over every tests/js/*.test.mjs with FHIR_BASE_URL set to the running server."""
    node = _tool("node")
    _ensure_node_modules()
    files = _test_files()
    assert files, f"no *.test.mjs files in {JS}"
    env = {**os.environ, "FHIR_BASE_URL": server.base, "NO_COLOR": "1"}
    done = subprocess.run([node, "--test", "--test-reporter=spec", *files], cwd=JS, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT)
    output = f"{done.stdout}\n{done.stderr}".strip()
    assert done.returncode == 0, f"node --test exited with {done.returncode}:\n{output}"
    assert "fail 0" in output, output


def test_package_lock_pins_fhir_kit_client() -> None:
    """The lock file pins the client the tests were written against, so `npm ci` installs the same code."""
    lock = json.loads((JS / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/fhir-kit-client"]["version"] == "2.0.3"
    assert json.loads((JS / "package.json").read_text())["dependencies"]["fhir-kit-client"] == "2.0.3"

"""Every official FHIR R4 example (``hl7.fhir.r4.examples`` 4.0.1) of a supported type round-trips and validates.

For each example file of a type this server supports:

1. ``POST [type]`` (create) with the file's bytes, unchanged; the server assigns the id.
2. ``GET [type]/[id]`` of the Location must give back what was sent, apart from ``id`` and
   ``meta.versionId``/``meta.lastUpdated`` (tags, profiles and other meta must survive). JSON is compared exactly:
   ``6.30`` is not ``6.3``, ``1`` is not ``true``.
3. ``POST [type]/$validate`` with the same bytes must answer 200 with an OperationOutcome without errors.

Why POST and not PUT with the example's own id: the goal is that every example *creates*; the examples'
references to each other (``Patient/example``) are not resolved on write, so their ids need not be kept; two
files share one id (ig-r4.json is ImplementationGuide/fhir as well); and update-as-create first reads the current
version by id, which FerretDB 1.24 on SQLite answers with a scan of the whole collection (its plan is ``SCAN``), so
PUT adds half again to the database work of the test (measured: 210 s instead of 138 s of FerretDB CPU) for
nothing the test checks. PUT with a client id is tested in test_crud.py.

The examples go to a server process of their own, on the session's FerretDB but in a database of their own
(``r4examples``): 5,300 resources and 200 MB of history would otherwise slow down every later test that scans
history or a collection on the shared ``server`` fixture's database. It runs two gunicorn workers, one per core.

Bundles of every type (transaction, document, ...) are stored as Bundle resources, not processed. Examples of the
18 R4-only types (MedicinalProduct*, Substance*, *EvidenceSynthesis) are counted, not sent.

The examples that fail must be exactly those listed in ``tests/examples_expected_failures.json`` (file name ->
reason, the reason starting with its category), so that the list stays honest both ways: an unlisted failure fails
the test, and so does a listed example that passes. A listed example whose category says the example is at fault
must fail by being rejected as invalid (POST 400/422 and errors from $validate), not in some other way.
"""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from fhirserver import fhirjson
from fhirserver.resources.validation import R4_ONLY_TYPES, SUPPORTED_TYPES
from tests.servers import REPO, ServerProcess, serve

EXPECTED_FAILURES = Path(__file__).with_name("examples_expected_failures.json")
FHIR_JSON = "application/fhir+json"
THREADS = 4  # the machine has 2 cores; 4 keeps both the server and the client busy
TIMEOUT = 300  # seconds per request: the largest example is a 35 MB Bundle

# Categories of expected failures: the part of a reason before the first colon.
INVALID = "INVALID EXAMPLE"  # the example violates FHIR R4 itself
NOT_IN_R4B = "R4 ELEMENT NOT IN R4B"  # valid R4 that the R4B validation models cannot express
SERVER_BUG = "SERVER BUG"  # the server is wrong; listed so the suite passes until it is fixed
SERVER_RULE = "SERVER RULE"  # valid R4 that a documented rule of this server refuses (README, "Scheduling")
CATEGORIES = (INVALID, NOT_IN_R4B, SERVER_BUG, SERVER_RULE)


@pytest.fixture(scope="module")
def examples_server(ferretdb, tmp_path_factory) -> Iterator[ServerProcess]:
    """A server on its own database, so that the examples stay out of the other tests' way."""
    proc = serve(ferretdb.uri, tmp_path_factory.mktemp("examples") / "server.log", FHIR_DB_NAME="r4examples",
                 FHIR_WORKERS="2")
    yield proc
    proc.stop()


def _examples_dir() -> Path:
    """The unpacked package, fetched by scripts/fetch_r4_examples.py (not a package, so loaded by path)."""
    spec = importlib.util.spec_from_file_location("fetch_r4_examples", REPO / "scripts" / "fetch_r4_examples.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        return module.examples_dir()
    except module.FetchError as exc:
        pytest.fail(f"cannot get the R4 examples: {exc}")


# ---------------------------------------------------------------------------
# Exact JSON comparison


def _exact(value: Any) -> Any:
    """A form of parsed JSON whose ``==`` is exact: decimals by their digits, booleans apart from numbers."""
    if isinstance(value, dict):
        return {k: _exact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_exact(v) for v in value]
    if isinstance(value, bool | int | Decimal):
        return (type(value).__name__, str(value))
    return value


def _difference(sent: Any, got: Any, path: str = "") -> str | None:
    """Where two ``_exact`` forms first differ, as ``path: sent != got``; ``None`` when equal."""
    if isinstance(sent, dict) and isinstance(got, dict):
        for key in sorted(sent.keys() | got.keys()):
            if key not in got:
                return f"{path}.{key}: missing in the stored resource"
            if key not in sent:
                return f"{path}.{key}: added by the server ({str(got[key])[:120]})"
            found = _difference(sent[key], got[key], f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(sent, list) and isinstance(got, list):
        if len(sent) != len(got):
            return f"{path}: {len(sent)} items sent, {len(got)} stored"
        for index, (a, b) in enumerate(zip(sent, got, strict=True)):
            found = _difference(a, b, f"{path}[{index}]")
            if found:
                return found
        return None
    if sent != got:
        return f"{path}: sent {str(sent)[:120]}, stored {str(got)[:120]}"
    return None


def _comparable(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource without what the server sets: id, meta.versionId, meta.lastUpdated."""
    out = {k: v for k, v in resource.items() if k != "id"}
    meta = out.get("meta")
    if isinstance(meta, dict):
        meta = {k: v for k, v in meta.items() if k not in ("versionId", "lastUpdated")}
        if meta:
            out["meta"] = meta
        else:
            del out["meta"]
    return out


# ---------------------------------------------------------------------------
# One example against the server


@dataclass
class Example:
    """One example file of a supported type."""

    name: str
    path: Path
    rtype: str
    size: int


@dataclass
class Outcome:
    """What happened to one example; ``problems`` is empty when it passed."""

    example: Example
    problems: list[str] = field(default_factory=list)
    rejected_on_write: bool = False  # POST answered 400 or 422
    invalid_per_validate: bool = False  # $validate reported errors
    seconds: float = 0.0


_local = threading.local()


def _session() -> requests.Session:
    """One HTTP session per worker thread."""
    session = getattr(_local, "session", None)
    if session is None:
        session = _local.session = requests.Session()
    return session


def _diagnostics(response: requests.Response) -> str:
    """The error issues of an OperationOutcome response, or the start of its body."""
    try:
        body = json.loads(response.content)
        issues = [i for i in body.get("issue", []) if i.get("severity") in ("error", "fatal")]
        return "; ".join(f"{','.join(i.get('expression', []))}: {i.get('diagnostics', '')}"[:300]
                         for i in issues[:3]) or response.text[:300]
    except (ValueError, AttributeError):
        return response.text[:300]


def _run(example: Example, base: str) -> Outcome:
    """Create, read back and $validate one example."""
    started = time.perf_counter()
    outcome = Outcome(example)
    data = example.path.read_bytes()
    sent = fhirjson.loads(data)
    session = _session()
    headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}

    created = session.post(f"{base}/{example.rtype}", data=data, headers=headers, timeout=TIMEOUT)
    location = created.headers.get("Location", "")
    if created.status_code != 201:
        outcome.rejected_on_write = created.status_code in (400, 422)
        outcome.problems.append(f"POST {created.status_code}: {_diagnostics(created)}")
    elif not location.startswith(f"{base}/{example.rtype}/"):
        outcome.problems.append(f"POST 201 with Location {location!r}, not under {base}/{example.rtype}/")
    else:
        rid = location[len(base) + len(example.rtype) + 2:].split("/", 1)[0]
        got = session.get(f"{base}/{example.rtype}/{rid}", headers={"Accept": FHIR_JSON}, timeout=TIMEOUT)
        if got.status_code != 200:
            outcome.problems.append(f"GET {got.status_code}: {_diagnostics(got)}")
        else:
            stored = fhirjson.loads(got.content)
            if stored.get("id") != rid:
                outcome.problems.append(f"GET: id {stored.get('id')!r}, expected {rid!r} (from the Location)")
            difference = _difference(_exact(_comparable(sent)), _exact(_comparable(stored)), example.rtype)
            if difference:
                outcome.problems.append(f"read-back differs at {difference}")

    checked = session.post(f"{base}/{example.rtype}/$validate", data=data, headers=headers, timeout=TIMEOUT)
    if checked.status_code != 200:
        outcome.problems.append(f"$validate {checked.status_code}: {_diagnostics(checked)}")
    else:
        body = json.loads(checked.content)
        errors = [i for i in body.get("issue", []) if i.get("severity") in ("error", "fatal")]
        if body.get("resourceType") != "OperationOutcome":
            outcome.problems.append(f"$validate answered a {body.get('resourceType')}, not an OperationOutcome")
        elif errors:
            outcome.invalid_per_validate = True
            outcome.problems.append(f"$validate: {len(errors)} error(s): {_diagnostics(checked)}")
    outcome.seconds = time.perf_counter() - started
    return outcome


# ---------------------------------------------------------------------------
# The test


@dataclass
class Inventory:
    """The package's files sorted out by what the test does with them."""

    examples: list[Example] = field(default_factory=list)
    r4_only: list[str] = field(default_factory=list)
    not_resources: list[str] = field(default_factory=list)
    total: int = 0


def _inventory(folder: Path) -> Inventory:
    """Every ``*.json`` file of the package, by resourceType."""
    inventory = Inventory()
    for path in sorted(folder.glob("*.json")):
        inventory.total += 1
        resource = orjson.loads(path.read_bytes())  # only the type is needed here: fast, decimals as floats
        rtype = resource.get("resourceType") if isinstance(resource, dict) else None
        if rtype in SUPPORTED_TYPES:
            inventory.examples.append(Example(path.name, path, rtype, path.stat().st_size))
        elif rtype in R4_ONLY_TYPES:
            inventory.r4_only.append(path.name)
        else:
            inventory.not_resources.append(path.name)  # package.json
    return inventory


def _smallest_first(examples: list[Example]) -> list[Example]:
    """The examples from the smallest file to the largest.

    FerretDB 1.24 on SQLite answers ``find({"_id": ...})`` with a scan of the whole collection (its query plan is
    ``SCAN``), so each read costs as much as all the bytes of its type stored so far. Small ones first keeps the
    40 MB of StructureDefinitions and 108 MB of Bundles out of most scans: 6 times fewer bytes scanned than
    largest first (measured: 40 % less FerretDB CPU).
    """
    return sorted(examples, key=lambda e: (e.size, e.name))


def _category(reason: str) -> str:
    """The category of an expected failure: its reason up to the first colon."""
    return reason.split(":", 1)[0]


def test_expected_failures_list_is_well_formed() -> None:
    """Each reason starts with a known category and says something specific."""
    expected = json.loads(EXPECTED_FAILURES.read_text(encoding="utf-8"))
    for name, reason in expected.items():
        assert name.endswith(".json"), name
        assert _category(reason) in CATEGORIES, f"{name}: reason must start with one of {CATEGORIES}"
        assert len(reason.split(":", 1)[1].strip()) > 20, f"{name}: say what is wrong"


def test_r4_examples_round_trip_and_validate(examples_server: ServerProcess, capsys) -> None:
    """Create, read back and $validate every example; failures must match the expected list exactly."""
    inventory = _inventory(_examples_dir())
    expected: dict[str, str] = json.loads(EXPECTED_FAILURES.read_text(encoding="utf-8"))
    assert inventory.total == 5307, "the package has 5,307 JSON files (5,306 resources and package.json)"
    unknown = sorted(set(expected) - {e.name for e in inventory.examples})
    assert not unknown, f"expected failures that are not examples of a supported type: {unknown}"

    started = time.perf_counter()
    with ThreadPoolExecutor(THREADS) as pool:
        outcomes = list(pool.map(lambda e: _run(e, examples_server.base), _smallest_first(inventory.examples)))
    wall = time.perf_counter() - started

    failed = {o.example.name: o for o in outcomes if o.problems}
    unexpected = {name: o.problems for name, o in failed.items() if name not in expected}
    now_passing = sorted(name for name in expected if name not in failed)
    # an invalid example is refused on write and by $validate; one refused by a server rule only on write ($validate
    # checks the resource alone, not its place among the stored ones)
    wrong_way = {name: o.problems for name, o in failed.items() if name in expected
                 and _category(expected[name]) != SERVER_BUG
                 and not (o.rejected_on_write and (o.invalid_per_validate
                                                   or _category(expected[name]) == SERVER_RULE))}

    passed = len(outcomes) - len(failed)
    by_category = Counter(_category(expected[name]) for name in failed if name in expected)
    slowest = max(outcomes, key=lambda o: o.seconds)
    categories = ", ".join(f"{c} {by_category[c]}" for c in CATEGORIES)
    with capsys.disabled():
        print(f"\nR4 examples: {inventory.total} files, {len(inventory.examples)} of supported types: {passed} passed, "
              f"{len(failed)} failed ({len(failed) - len(unexpected)} expected: {categories}); "
              f"{len(inventory.r4_only)} R4-only skipped; {len(inventory.not_resources)} not resources; "
              f"{wall:.0f} s with {THREADS} threads (slowest {slowest.example.name} {slowest.seconds:.1f} s)")

    problems = []
    if unexpected:
        problems.append("unexpected failures (a server bug, or add them with a specific reason):\n" +
                        "\n".join(f"  {name}: {' | '.join(p)}" for name, p in sorted(unexpected.items())))
    if now_passing:
        problems.append(f"listed as failing but now pass (remove them from {EXPECTED_FAILURES.name}):\n  " +
                        "\n  ".join(now_passing))
    if wrong_way:
        problems.append("listed as invalid examples but not rejected as invalid (POST 400/422 and $validate "
                        "errors):\n" + "\n".join(f"  {name}: {' | '.join(p)}" for name, p in sorted(wrong_way.items())))
    assert not problems, "\n".join(problems)

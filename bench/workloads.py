"""The workloads of the benchmark suite (bench/run.py): the requests each sends to the server, and the same reads and
queries its floor issues to the database with pymongo.

Read workloads are lists of jobs; a job is the requests one client makes in a row (one request, or the ten a portal
makes on login for the chart page) and is timed as one. Ingest posts the Synthea transaction Bundles; its floor writes
the very documents the server stored with `insert_many`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pymongo.database import Database
from pymongo.errors import PyMongoError

from bench.harness import HTTP, Measurement, run_concurrently
from bench.search import Request, _locations, compile_search, floor_find, post_bundle
from fhirserver.store.database import Store

REPO = Path(__file__).resolve().parent.parent
SYNTHEA = REPO.parent / "shared" / "data" / "synthea-r4"
SHARED = ("hospitalInformation1559319163815.json", "practitionerInformation1559319163815.json")

Job = list[Request]


@dataclass(frozen=True)
class Sample:
    """What one sampled Observation says: whose it is, its first code and its year (searches that find something,
    whatever data set is loaded)."""

    patient: str
    code: str  # system|code
    year: int


def observation_samples(db: Database, ids: list[str]) -> list[Sample]:
    """The samples of these Observations (read by `_id`, one at a time: FerretDB scans for `$in`)."""
    out = []
    for rid in ids:
        doc = db["Observation"].find_one({"_id": rid}, {"text": 1})
        if not doc or not doc.get("text"):
            continue
        body = json.loads(doc["text"])
        coding = next(iter(body.get("code", {}).get("coding") or []), {})
        when = body.get("effectiveDateTime") or (body.get("effectivePeriod") or {}).get("start") or body.get("issued")
        subject = (body.get("subject") or {}).get("reference", "")
        if subject.startswith("Patient/") and coding.get("code") and when:
            out.append(Sample(subject.split("/", 1)[1], f"{coding.get('system', '')}|{coding['code']}",
                              int(when[:4])))
    return out


@dataclass
class Context:
    """What request builders need: the loaded data's sample ids and the server's search compiler."""

    patients: list[str]  # server ids of Patients
    observations: list[str]  # server ids of Observations (version 1)
    seed: int
    base: str
    store: Store
    samples: list[Sample]  # of the sample Observations


@dataclass
class ReadWorkload:
    name: str
    title: str
    kind: str  # "read" or "search": which target applies
    jobs: Callable[[Context, int], list[Job]]


def _rng(ctx: Context, name: str) -> random.Random:
    return random.Random(f"{ctx.seed}/suite/{name}")


def _read(rtype: str, rid: str, version: int | None = None) -> Request:
    path = f"/{rtype}/{rid}" + (f"/_history/{version}" if version else "")
    return Request(path, rtype, {"_id": rid}, [], 1)


def reads(ctx: Context, n: int) -> list[Job]:
    rng = _rng(ctx, "read")
    return [[_read("Observation", rng.choice(ctx.observations))] for _ in range(n)]


def vreads(ctx: Context, n: int) -> list[Job]:
    """`Observation/<id>/_history/1`: the server reads the current version and serves it when it is version 1; the
    floor is the same `find_one` by `_id`."""
    rng = _rng(ctx, "vread")
    return [[_read("Observation", rng.choice(ctx.observations), 1)] for _ in range(n)]


def observation_code(ctx: Context, n: int) -> list[Job]:
    """A patient's Observations of one code, newest first: patient and code of a sampled Observation."""
    rng = _rng(ctx, "obs-code")
    out = []
    for _ in range(n):
        s = rng.choice(ctx.samples)
        pairs = [("patient", f"Patient/{s.patient}"), ("code", s.code), ("_sort", "-date")]
        out.append([compile_search("Observation", pairs, ctx.base, ctx.store, True)])
    return out


def encounter_window(ctx: Context, n: int) -> list[Job]:
    """A patient's Encounters of two years with their practitioners: the years around a sampled Observation."""
    rng = _rng(ctx, "encounter-window")
    out = []
    for _ in range(n):
        s = rng.choice(ctx.samples)
        first = s.year - rng.randrange(2)
        pairs = [("patient", s.patient), ("date", f"ge{first}-01-01"), ("date", f"lt{first + 2}-01-01"),
                 ("_include", "Encounter:practitioner")]
        out.append([compile_search("Encounter", pairs, ctx.base, ctx.store, True)])
    return out


def chart_requests(pid: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """What a member portal asks for on login, for patient `pid` (a read, then searches)."""
    return [
        ("Coverage", [("beneficiary", f"Patient/{pid}"), ("status", "active")]),
        ("MedicationRequest", [("patient", pid), ("status", "active")]),
        ("Observation", [("patient", pid), ("category", "laboratory"), ("_sort", "-date"), ("_count", "20")]),
        ("DiagnosticReport", [("patient", pid), ("_sort", "-date"), ("_count", "10")]),
        ("Immunization", [("patient", pid)]),
        ("Encounter", [("patient", pid), ("_sort", "-date"), ("_count", "10")]),
        ("Appointment", [("patient", pid), ("date", "ge2025-06-01")]),
        ("Condition", [("patient", pid)]),
        ("ExplanationOfBenefit", [("patient", pid), ("_count", "10")]),
    ]


def chart(ctx: Context, n: int) -> list[Job]:
    rng = _rng(ctx, "chart")
    out = []
    for _ in range(n):
        pid = rng.choice(ctx.patients)
        out.append([_read("Patient", pid), *(compile_search(rtype, pairs, ctx.base, ctx.store, True)
                                             for rtype, pairs in chart_requests(pid))])
    return out


READS = [
    ReadWorkload("read", "GET Observation/{id}", "read", reads),
    ReadWorkload("vread", "GET Observation/{id}/_history/1", "read", vreads),
    ReadWorkload("obs-code", "Observation?patient=Patient/X&code=http://loinc.org|NNNN&_sort=-date", "search",
                 observation_code),
    ReadWorkload("encounter-window", "Encounter?patient=X&date=geY&date=ltY+2&_include=Encounter:practitioner",
                 "search", encounter_window),
    ReadWorkload("chart", "chart page: Patient/X, then Coverage, MedicationRequest, Observation (labs), "
                 "DiagnosticReport, Immunization, Encounter, Appointment, Condition, ExplanationOfBenefit of X",
                 "search", chart),
]


def server_job(client: HTTP, job: Job) -> bool:
    """Every request of the job answered 200."""
    ok = True
    for r in job:
        ok = client.request("GET", r.path)[0] == 200 and ok
    return ok


def floor_job(db: Database, job: Job, max_ms: int) -> bool:
    try:
        for r in job:
            floor_find(db, r, max_ms=max_ms)
    except PyMongoError:
        return False
    return True


# -- transaction ingest ------------------------------------------------------------------------------------------
def synthea_files(limit: int | None = None, shared: bool = True) -> list[Path]:
    """The shared Organizations and Practitioners (unless `shared` is False), then the patients' Bundles (the first
    `limit` of them)."""
    patients = sorted(p for p in SYNTHEA.glob("*.json") if p.name not in SHARED)
    return [SYNTHEA / f for f in SHARED if shared and (SYNTHEA / f).exists()] + patients[:limit]


def ingest_server(base: str, bodies: list[bytes], threads: int, max_seconds: float
                  ) -> tuple[Measurement, int, list[list[str]]]:
    """POST each transaction Bundle (`threads` at a time); the figures, the resources created, and the `Type/id` of
    each created resource per Bundle."""
    created: list[list[str]] = [[] for _ in bodies]

    def post(n: int) -> bool:
        status, answer = post_bundle(base, bodies[n])
        if status != 200:
            return False
        created[n] = _locations(answer, base)
        return True

    m = run_concurrently("ingest: server", post, len(bodies), threads, max_seconds)
    return m, sum(len(c) for c in created), created


def stored_documents(db: Database, created: list[list[str]]) -> list[list[tuple[str, list[dict]]]]:
    """The documents the server stored for each Bundle, grouped by collection (one scan per collection)."""
    by_type: dict[str, set[str]] = {}
    for locations in created:
        for location in locations:
            rtype, rid = location.split("/")
            by_type.setdefault(rtype, set()).add(rid)
    docs = {rtype: {d["_id"]: d for d in db[rtype].find({}) if d["_id"] in ids} for rtype, ids in by_type.items()}
    out = []
    for locations in created:
        groups: dict[str, list[dict]] = {}
        for location in locations:
            rtype, rid = location.split("/")
            groups.setdefault(rtype, []).append(docs[rtype][rid])
        out.append(list(groups.items()))
    return out


def ingest_floor(db: Database, bundles: list[list[tuple[str, list[dict]]]], threads: int, max_seconds: float
                 ) -> tuple[Measurement, int]:
    """The same documents written with one `insert_many` per Bundle and collection (`threads` Bundles at a time)."""
    def write(n: int) -> bool:
        try:
            for rtype, docs in bundles[n]:
                db[rtype].insert_many(docs)
        except PyMongoError:
            return False
        return True

    m = run_concurrently("ingest: floor", write, len(bundles), threads, max_seconds)
    return m, sum(len(docs) for b in bundles[:m.requests] for _, docs in b)

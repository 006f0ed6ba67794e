"""Scheduling benchmark: `Appointment/$find` latency over 8 weeks of slots for 200 practitioners, and booking
throughput under contention, each beside its database floor.

    .venv/bin/python -m bench.scheduling [--backend sqlite|postgresql] [--practitioners 200] [--weeks 8]
        [--finds 300] [--threads 4] [--slots-booked 150] [--racers 4]

Starts its own FerretDB (and PostgreSQL, with the GIN indexes the server mirrors beside FerretDB's) in a temporary
folder and the server under gunicorn (authorization and background jobs off, so only the requests are measured).
The slots are written in-process in the exact stored shape of the server's write path (`make_version`: stored
text, search index, compartments, sort keys; history record), but in bulk, because creating 128,000 slots one
request at a time would take most of an hour here; everything measured goes through HTTP. Workloads:
- find (one practitioner): GET $find for one practitioner's video slots on one random day, `_count=20`;
- find (everyone): GET $find for any video slot on one random day (all 200 practitioners), `_count=20`;
- floor of each: the same queries run straight on the database with pymongo (schedule lookup, then the slot
  filter with equalities on the slot's day and schedule, which FerretDB pushes down; sort, limit);
- range-filter floor (before the day key): the filter $find ran before (date range and schedule `$in`, which
  FerretDB cannot push down, plus a count for `total`), a few requests, as the reference of the before/after ratio;
- book (contended): `racers` clients book each slot at once (POST $book with the proposed Appointment): exactly one
  201 per slot, the rest 409; bookings/s and conflicts/s;
- floor of booking: the atomic step beneath it, a unique insert of a claim per slot by the same racing clients.
Writes bench/results/scheduling.json and .md (one run per backend; a run replaces that backend's).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from pymongo import MongoClient
from pymongo.errors import DuplicateKeyError

from bench.harness import HTTP, RESULTS, as_dict, machine, run_concurrently, write_report
from bench.search import start_database, start_server, vacuum
from fhirserver.dbserver import pgindexes
from fhirserver.interactions.versions import ensure_indexes, make_version
from fhirserver.resources.scheduling import SLOT_DAY, VISIT_MODE_SYSTEM, VISIT_MODES
from fhirserver.search.query import all_of, parse
from fhirserver.store.commit import HISTORY
from fhirserver.store.database import Store

DB_NAME = "schedbench"
SERVICE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/service-type", "code": "124",
                       "display": "General Practice"}]}


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def bulk_write(store: Store, rtype: str, resources: list[dict]) -> list[str]:
    """Write version 1 of each resource as the server's write path stores it, in bulk; their ids."""
    ensure_indexes(store, rtype)
    ts = datetime.now(UTC).replace(microsecond=0)
    versions = [make_version(rtype, r["id"], 1, ts, r, "POST") for r in resources]
    for v in versions:
        store.committer.variants.record(rtype, v.idx)
    store.db[rtype].insert_many([v.current_doc() for v in versions], ordered=False)
    store.db[HISTORY].insert_many([v.history_doc("bench-load") for v in versions], ordered=False)
    return [v.id for v in versions]


def load(store: Store, practitioners: int, weeks: int, per_day: int,
         first_day: datetime) -> tuple[list[str], list[datetime], int]:
    """Practitioners, one Schedule each and `per_day` 30-minute slots from 08:00 UTC on the weekdays of `weeks`."""
    docs = [{"resourceType": "Practitioner", "id": f"sb-dr{n:04d}", "name": [{"family": f"Doctor{n}"}]}
            for n in range(practitioners)]
    doctors = bulk_write(store, "Practitioner", docs)
    bulk_write(store, "Schedule", [{"resourceType": "Schedule", "id": f"sb-s{n:04d}", "serviceType": [SERVICE],
                                    "actor": [{"reference": f"Practitioner/{d}"}]} for n, d in enumerate(doctors)])
    days = [first_day + timedelta(days=d) for d in range(weeks * 7) if (first_day + timedelta(days=d)).weekday() < 5]
    count = 0
    for n in range(practitioners):
        slots = []
        for d, day in enumerate(days):
            for k in range(per_day):
                start = day + timedelta(hours=8, minutes=30 * k)
                mode = VISIT_MODES[(n + d + k) % len(VISIT_MODES)]
                slots.append({"resourceType": "Slot", "id": f"sb-{n:04d}-{d:02d}-{k:02d}",
                              "schedule": {"reference": f"Schedule/sb-s{n:04d}"}, "status": "free",
                              "serviceType": [SERVICE, {"coding": [{"system": VISIT_MODE_SYSTEM, "code": mode}]}],
                              "start": iso(start), "end": iso(start + timedelta(minutes=30))})
        bulk_write(store, "Slot", slots)
        count += len(slots)
    return doctors, days, count


def find_floor(db, store: Store, day: datetime, doctor: str | None) -> int:
    """$find's database work for one request as the server asks it: the schedule lookup (with a practitioner) and
    the slot filter with plain equalities on the slot's day (and schedule), sorted, one page; no count."""
    lo, hi = iso(day), iso(day + timedelta(days=1) - timedelta(seconds=1))
    pairs = [("status", "free"), ("start", f"ge{lo}"), ("start", f"le{hi}"),
             ("service-type", f"{VISIT_MODE_SYSTEM}|video")]
    query = parse("Slot", pairs, strict=True, finder=store.reader).filter
    buckets = [{f"idx.{SLOT_DAY}": day.strftime("%Y-%m-%d")}]
    if doctor:
        buckets = [{**buckets[0], "idx.schedule": f"Schedule/{s['_id']}"}
                   for s in db.Schedule.find(parse("Schedule", [("actor", f"Practitioner/{doctor}")],
                                                   finder=store.reader).filter, {"_id": 1})]
    found = 0
    for bucket in buckets:
        found += len(list(db.Slot.find(all_of(bucket, query), {"text": 1, "srt": 1})
                          .sort([("srt.start", 1), ("_id", 1)]).limit(21 - found)))
        if found >= 21:
            break
    return found


def range_floor(db, store: Store, day: datetime, doctor: str | None) -> int:
    """The database work of $find before the day key (the reference of the before/after ratio): the date range and
    schedule `$in` filter FerretDB cannot push down (every Slot read), a count for `total`, and the page."""
    lo, hi = iso(day), iso(day + timedelta(days=1) - timedelta(seconds=1))
    pairs = [("status", "free"), ("start", f"ge{lo}"), ("start", f"le{hi}"),
             ("service-type", f"{VISIT_MODE_SYSTEM}|video")]
    query = parse("Slot", pairs, strict=True, finder=store.reader).filter
    if doctor:
        schedules = db.Schedule.find(parse("Schedule", [("actor", f"Practitioner/{doctor}")],
                                           finder=store.reader).filter, {"_id": 1})
        query = all_of(query, {"idx.schedule": {"$in": [f"Schedule/{s['_id']}" for s in schedules]}})
    db.Slot.count_documents(query)
    return len(list(db.Slot.find(query, {"text": 1, "srt": 1}).sort([("srt.start", 1), ("_id", 1)]).limit(21)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--practitioners", type=int, default=200)
    parser.add_argument("--weeks", type=int, default=8)
    parser.add_argument("--slots-per-day", type=int, default=16, help="30-minute slots per weekday from 08:00")
    parser.add_argument("--finds", type=int, default=200, help="requests per $find workload")
    parser.add_argument("--range-finds", type=int, default=6,
                        help="requests of the before-the-day-key floor per workload (each reads every Slot)")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--slots-booked", type=int, default=150, help="slots raced for in the booking workload")
    parser.add_argument("--racers", type=int, default=4, help="clients booking each slot at once")
    parser.add_argument("--max-seconds", type=float, default=45.0, help="time cap per workload")
    args = parser.parse_args()
    os.environ.update(FHIR_AUTH="off", FHIR_JOBS="off")  # measure the requests, not token checks or timers
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a stopped run still stops its database and server

    first_day = (datetime.now(UTC) + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    rng = random.Random(6)
    with tempfile.TemporaryDirectory(prefix="schedbench-") as tmp:
        state = Path(tmp)
        # PostgreSQL as bench.run uses it: FerretDB pushing dot-notation equality down to SQL
        database = start_database(state, args.backend, nested=args.backend == "postgresql")
        uri = database.ferret.uri
        server = None
        gin = 0
        try:
            store = Store(uri, DB_NAME, 10.0)
            began = time.perf_counter()
            doctors, days, slot_count = load(store, args.practitioners, args.weeks, args.slots_per_day, first_day)
            load_seconds = time.perf_counter() - began
            if database.pg is not None:  # as the server keeps it on its embedded PostgreSQL (pgindexes.mirror)
                gin = len(pgindexes.mirror(database.pg))
                vacuum(database.pg)
            server, base = start_server(uri, args.workers, state / "server.log", db_name=DB_NAME)
            client = HTTP(base)
            db = MongoClient(uri, maxPoolSize=args.threads * 4)[DB_NAME]
            picks = [(rng.choice(days), rng.choice(doctors)) for _ in range(args.finds)]
            found_counts: Counter[int] = Counter()

            def find_one(n: int) -> bool:
                day, doctor = picks[n]
                status, body = client.request("GET", f"/Appointment/$find?start={day.date()}&end={day.date()}"
                                              f"&practitioner=Practitioner/{doctor}&visit-mode=video&_count=20")
                if status == 200:
                    found_counts[len(orjson.loads(body).get("entry") or [])] += 1
                return status == 200

            def find_all(n: int) -> bool:
                day = picks[n][0]
                status, _ = client.request("GET", f"/Appointment/$find?start={day.date()}&end={day.date()}"
                                           "&visit-mode=video&_count=20")
                return status == 200

            results = [
                run_concurrently("find, one practitioner, one day: server", find_one, args.finds, args.threads,
                                 args.max_seconds),
                run_concurrently("find, one practitioner, one day: floor",
                                 lambda n: find_floor(db, store, picks[n][0], picks[n][1]) >= 0, args.finds,
                                 args.threads, args.max_seconds),
                run_concurrently("find, all practitioners, one day: server", find_all, args.finds, args.threads,
                                 args.max_seconds),
                run_concurrently("find, all practitioners, one day: floor",
                                 lambda n: find_floor(db, store, picks[n][0], None) >= 0, args.finds, args.threads,
                                 args.max_seconds),
                run_concurrently("find, one practitioner, one day: range-filter floor (before the day key)",
                                 lambda n: range_floor(db, store, picks[n][0], picks[n][1]) >= 0, args.range_finds,
                                 args.threads, args.max_seconds),
                run_concurrently("find, all practitioners, one day: range-filter floor (before the day key)",
                                 lambda n: range_floor(db, store, picks[n][0], None) >= 0, args.range_finds,
                                 args.threads, args.max_seconds),
            ]

            # Booking with contention: `racers` requests per slot, consecutive, so they run at the same time.
            patients = [orjson.loads(client.request("POST", "/Patient", orjson.dumps(
                {"resourceType": "Patient", "name": [{"family": f"Racer{n}"}]}))[1])["id"] for n in range(20)]
            slot_ids = rng.sample([f"sb-{n:04d}-{d:02d}-{k:02d}" for n in range(args.practitioners)
                                   for d in range(len(days)) for k in range(args.slots_per_day)], args.slots_booked)
            slots = {s: orjson.loads(store.reader.current("Slot", s).text) for s in slot_ids}
            outcomes: Counter[int] = Counter()
            lock = threading.Lock()
            total = args.slots_booked * args.racers

            def book(n: int) -> bool:
                slot = slots[slot_ids[n // args.racers]]
                doctor = "sb-dr" + slot["id"].split("-")[1]
                appt = {"resourceType": "Appointment", "status": "proposed", "serviceType": slot["serviceType"],
                        "start": slot["start"], "end": slot["end"], "slot": [{"reference": f"Slot/{slot['id']}"}],
                        "participant": [{"actor": {"reference": f"Patient/{patients[n % len(patients)]}"},
                                         "status": "needs-action"},
                                        {"actor": {"reference": f"Practitioner/{doctor}"}, "status": "needs-action"}]}
                status, _ = client.request("POST", "/Appointment/$book", orjson.dumps(
                    {"resourceType": "Parameters", "parameter": [{"name": "appointment-resource", "resource": appt}]}))
                with lock:
                    outcomes[status] += 1
                return status in (200, 201, 409)

            floor_outcomes: Counter[str] = Counter()

            def floor_book(n: int) -> bool:
                try:
                    db.floor_claims.insert_one({"_id": f"Slot/{slot_ids[n // args.racers]}", "owner": n})
                    floor_outcomes["claimed"] += 1
                except DuplicateKeyError:
                    floor_outcomes["taken"] += 1
                return True

            threads = max(args.threads, args.racers)
            booking = run_concurrently("book, contended: server", book, total, threads, args.max_seconds * 2)
            floor = run_concurrently("book, contended: floor (claim insert)", floor_book, total, threads,
                                     args.max_seconds)
            results += [booking, floor]
            booked_per_slot = Counter(
                s for d in db.Appointment.find({"del": False}, {"text": 1})
                if (a := orjson.loads(d["text"]))["status"] == "booked" for s in [a["slot"][0]["reference"]])
            double = sum(1 for c in booked_per_slot.values() if c > 1)
            busy = sum(1 for d in db.Slot.find({"_id": {"$in": slot_ids}}, {"text": 1})
                       if orjson.loads(d["text"])["status"] == "busy")
        finally:
            if server is not None:
                server.terminate()
                server.wait(15)
            database.stop()

    created = outcomes.get(200, 0) + outcomes.get(201, 0)
    conflicts = outcomes.get(409, 0)
    booking_rates = {"bookings_per_s": round(created / booking.seconds, 1),
                     "conflicts_per_s": round(conflicts / booking.seconds, 1),
                     "statuses": {str(k): v for k, v in sorted(outcomes.items())},
                     "slots_booked_twice": double, "busy_slots": busy, "slots_raced": args.slots_booked}
    floor_rates = {"claims_per_s": round(floor_outcomes["claimed"] / floor.seconds, 1),
                   "duplicates_per_s": round(floor_outcomes["taken"] / floor.seconds, 1)}
    report = {"benchmark": "scheduling", "backend": args.backend, "threads": args.threads, "workers": args.workers,
              "practitioners": args.practitioners, "weeks": args.weeks, "slots": slot_count,
              "load_seconds": round(load_seconds, 1), "gin_indexes": gin, "racers_per_slot": args.racers,
              "machine": machine(),
              "results": [as_dict(r) for r in results], "booking": booking_rates, "booking_floor": floor_rates,
              "find_entries_per_page": dict(sorted(found_counts.items())),
              "load_average_1_5_15": os.getloadavg(),
              "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    table = [f"# Scheduling benchmark ({args.backend}; {slot_count} slots: {args.practitioners} practitioners x "
             f"{args.weeks} weeks; {args.threads} client threads, {args.workers} workers, {machine()['cores']} cores)",
             "", "| workload | requests | errors | req/s | p50 ms | p95 ms | p99 ms |", "|---|---|---|---|---|---|---|"]
    table += [f"| {r.name} | {r.requests} | {r.errors} | {r.per_second} | {r.p50_ms} | {r.p95_ms} | {r.p99_ms} |"
              for r in results]
    table += ["", f"Booking with contention ({args.racers} clients per slot, {args.slots_booked} slots, "
              f"{threads} client threads): {booking_rates['bookings_per_s']} bookings/s and "
              f"{booking_rates['conflicts_per_s']} conflicts (409)/s; statuses {booking_rates['statuses']}; "
              f"slots booked twice: {double}; busy slots: {busy} of {args.slots_booked}.",
              f"Floor (unique claim insert, same racing pattern): {floor_rates['claims_per_s']} claims/s, "
              f"{floor_rates['duplicates_per_s']} duplicates/s.",
              f"Slots written in bulk in the server's stored shape in {load_seconds:.0f} s (not measured as requests)"
              f"; GIN indexes mirrored beside FerretDB's: {gin}.",
              f"Machine load average at the end (1, 5, 15 min): {os.getloadavg()}."]
    print("\n".join(table))
    report["markdown"] = table
    previous = RESULTS / "scheduling.json"
    runs = orjson.loads(previous.read_bytes()).get("runs", {}) if previous.exists() else {}
    runs[args.backend] = report  # one run per backend in the file, the other backend's kept
    write_report("scheduling", {"benchmark": "scheduling", "runs": runs},
                 [line for r in runs.values() for line in [*r["markdown"], ""]][:-1])


if __name__ == "__main__":
    main()

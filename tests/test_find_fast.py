"""Appointment/$find asked day by day (an equality on SLOT_DAY per day, and on the schedule per schedule):
multi-day periods, paging across days and empty days, same-day searches, slots whose local date differs from their
UTC day, the optional total, `_count=0`, the one-query fallback giving the same answer, and `reindex` adding the day
to Slots stored without it.

A real server process on a database of its own; the in-process checks use the same FerretDB.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pymongo import MongoClient

from fhirserver.interactions.reindex import reindex
from fhirserver.operations import find
from fhirserver.resources.scheduling import SLOT_DAY, with_slot_day
from fhirserver.search.extract import extract_index
from fhirserver.store.database import Store
from tests.servers import serve
from tests.test_scheduling import World, iso, ref

DB = "fhirfindfast"


@pytest.fixture(scope="module")
def w(ferretdb, tmp_path_factory):
    proc = serve(ferretdb.uri, tmp_path_factory.mktemp("findfast") / "server.log", FHIR_DB_NAME=DB,
                 FHIR_JOBS="off")
    world = World(proc.base)
    world.db = MongoClient(ferretdb.uri)[DB]
    world.store = Store(ferretdb.uri, DB)
    yield world
    world.store.close()
    proc.stop()


def pages(w: World, params: list[dict]) -> tuple[list[dict], list[dict]]:
    """Every page of a $find, following next links: (the pages, all proposed Appointments in order)."""
    r = w.op("Appointment/$find", params)
    assert r.status_code == 200, r.text
    out = [r.json()]
    while nxt := [link["url"] for link in out[-1]["link"] if link["relation"] == "next"]:
        r = w.http.get(nxt[0])
        assert r.status_code == 200, r.text
        out.append(r.json())
    return out, [e["resource"] for p in out for e in p.get("entry", [])]


def period(first: datetime, last: datetime, *extra: dict, count: int | None = None) -> list[dict]:
    params = [{"name": "start", "valueDate": first.strftime("%Y-%m-%d")},
              {"name": "end", "valueDate": last.strftime("%Y-%m-%d")}, *extra]
    return params + ([{"name": "_count", "valueInteger": count}] if count else [])


def slot_refs(appts: list[dict]) -> list[str]:
    return [a["slot"][0]["reference"] for a in appts]


def test_slot_day_is_the_utc_day_of_start():
    slot = {"resourceType": "Slot", "id": "x", "schedule": {"reference": "Schedule/s"}, "status": "free",
            "start": "2030-03-01T22:30:00-05:00", "end": "2030-03-01T23:00:00-05:00"}
    idx = with_slot_day("Slot", extract_index(slot))
    assert idx[SLOT_DAY] == ["2030-03-02"]
    assert SLOT_DAY not in with_slot_day("Schedule", {"start": {"lo": datetime(2030, 1, 1, tzinfo=UTC)}})


def test_multi_day_paging_across_days(w):
    day0 = (datetime.now(UTC) + timedelta(days=5)).replace(hour=0, minute=0, second=0, microsecond=0)
    mine, other = w.schedule(), w.schedule()
    prac = w.read(f"Schedule/{mine}")["actor"][0]["reference"]
    made: list[tuple[datetime, str]] = []
    # day 0: three slots; day 1: none; day 2: two slots and one of another schedule at the same time;
    # day 3: a slot at 23:30 UTC; the last one is on day 4 in UTC but given in -05:00 (still day 3 locally)
    for start in (day0 + timedelta(hours=10), day0 + timedelta(hours=9), day0 + timedelta(hours=9, minutes=30),
                  day0 + timedelta(days=2, hours=8), day0 + timedelta(days=2, hours=8, minutes=30),
                  day0 + timedelta(days=3, hours=23, minutes=30)):
        made.append((start, f"Slot/{w.slot(mine, start)['id']}"))
    late = day0 + timedelta(days=4, hours=1)
    body = w.slot(mine, late)  # re-written with an offset: same instant, another local date
    body["start"] = (late - timedelta(hours=5)).strftime("%Y-%m-%dT%H:%M:%S-05:00")
    body["end"] = (late + timedelta(minutes=25)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert w.http.put(f"{w.base}/Slot/{body['id']}", json=body).status_code == 200
    made.append((late, f"Slot/{body['id']}"))
    rival = w.slot(other, day0 + timedelta(days=2, hours=8))
    expected = [r for _, r in sorted(made)]

    # one page holding everything: in start order, with the total
    everything, appts = pages(w, period(day0, day0 + timedelta(days=4), ref("practitioner", prac)))
    assert len(everything) == 1 and slot_refs(appts) == expected and everything[0]["total"] == len(expected)
    # two per page across the empty day and the day boundaries: the same slots, same order, no total once paged
    for size in (1, 2, 3):
        paged, appts = pages(w, period(day0, day0 + timedelta(days=4), ref("practitioner", prac), count=size))
        assert slot_refs(appts) == expected, size
        assert all("total" not in p for p in paged) and len(paged) == -(-len(expected) // size)
    # everyone: the rival's slot at the same start comes in id order beside ours
    _, everyone = pages(w, period(day0 + timedelta(days=2), day0 + timedelta(days=2), count=1))
    same_time = sorted([made[3][1], f"Slot/{rival['id']}"], key=lambda r: r.split("/")[1])
    assert slot_refs(everyone) == [*same_time, made[4][1]]
    # everyone over the whole period (asked day by day), two per page: every slot once, in order
    _, everyone = pages(w, period(day0, day0 + timedelta(days=4), count=2))
    assert slot_refs(everyone) == expected[:3] + same_time + expected[4:]
    # a period ending on day 3 leaves out the slot on UTC day 4 although its local date is day 3
    _, upto3 = pages(w, period(day0, day0 + timedelta(days=3), ref("practitioner", prac)))
    assert slot_refs(upto3) == expected[:-1]
    # _count=0 asks for the total alone: counted day by day
    counted, none = pages(w, [*period(day0, day0 + timedelta(days=4), ref("practitioner", prac)),
                              {"name": "_count", "valueInteger": 0}])
    assert none == [] and counted[0]["total"] == len(expected)
    # a period of only the empty day
    empty, none = pages(w, period(day0 + timedelta(days=1), day0 + timedelta(days=1), ref("practitioner", prac)))
    assert none == [] and empty[0]["total"] == 0

    # the one-query fallback (too many schedules or days to ask one by one) gives the same pages
    store, params = w.store, find.parameters({"resourceType": "Parameters", "parameter": period(
        day0, day0 + timedelta(days=4), ref("practitioner", prac), count=2)})
    direct = find.find(store, w.base, params, 50, 500).body
    try:
        find.MAX_GROUPS, find.MAX_QUERIES = 0, 0
        fallback = find.find(store, w.base, params, 50, 500).body
    finally:
        find.MAX_GROUPS, find.MAX_QUERIES = 20, 1000
    assert slot_refs([e["resource"] for e in direct["entry"]]) == slot_refs(
        [e["resource"] for e in fallback["entry"]]) == expected[:2]
    assert [lk["url"] for lk in direct["link"]] == [lk["url"] for lk in fallback["link"]]


def test_same_day_offers_only_later_slots(w):
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    if now.hour >= 23 or now.hour < 1:
        pytest.skip("too close to midnight UTC to place slots before and after now on the same day")
    sched = w.schedule()
    prac = w.read(f"Schedule/{sched}")["actor"][0]["reference"]
    past = w.slot(sched, now - timedelta(minutes=40))
    later = [w.slot(sched, now + timedelta(minutes=m)) for m in (50, 20)]
    _, appts = pages(w, period(now, now, ref("practitioner", prac)))
    assert slot_refs(appts) == [f"Slot/{later[1]['id']}", f"Slot/{later[0]['id']}"]
    assert f"Slot/{past['id']}" not in slot_refs(appts)
    r = w.http.get(f"{w.base}/Appointment/$find", params={"start": now.strftime("%Y-%m-%d"),
                                                          "end": now.strftime("%Y-%m-%d"), "practitioner": prac})
    assert r.status_code == 200 and slot_refs([e["resource"] for e in r.json()["entry"]]) == slot_refs(appts)


def test_reindex_adds_the_day_to_old_slots(w):
    day = (datetime.now(UTC) + timedelta(days=20)).replace(hour=12, minute=0, second=0, microsecond=0)
    sched = w.schedule()
    prac = w.read(f"Schedule/{sched}")["actor"][0]["reference"]
    slot = w.slot(sched, day)
    stored = w.db.Slot.find_one({"_id": slot["id"]})
    assert stored["idx"][SLOT_DAY] == [day.strftime("%Y-%m-%d")]
    w.db.Slot.update_one({"_id": slot["id"]}, {"$unset": {f"idx.{SLOT_DAY}": ""}})  # as stored before the day key
    assert pages(w, period(day, day, ref("practitioner", prac)))[1] == [] == pages(w, period(day, day))[1]
    assert reindex(w.store, ["Slot"])["Slot"] >= 1  # what `fhirserver db reindex --type Slot` runs
    assert w.db.Slot.find_one({"_id": slot["id"]})["idx"][SLOT_DAY] == [day.strftime("%Y-%m-%d")]
    _, after = pages(w, period(day, day, ref("practitioner", prac)))
    assert slot_refs(after) == [f"Slot/{slot['id']}"] and after[0]["start"] == iso(day)
    assert slot_refs(pages(w, period(day, day))[1]) == [f"Slot/{slot['id']}"]

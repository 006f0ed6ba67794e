"""Tests of ``_sort`` and keyset paging (fhirserver.search.sort): units, and paging against real FerretDB servers.

The integration test stores a few hundred documents shaped like current resource documents (``idx`` from
``extract_index``, ``srt`` from ``sort_values``), with missing values and many ties, and pages through them seven at a
time with ``keyset_filter`` + ``mongo_sort``. The pages must concatenate to the order computed here in Python
(missing first ascending, last descending, ties by ``_id``), which must also be FerretDB's own ``.sort()`` order.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.database import Database

from fhirserver.dbserver import FerretDB, PostgreSQL
from fhirserver.errors import BadRequest
from fhirserver.search.extract import extract_index
from fhirserver.search.sort import SortKey, cursor_after, keyset_filter, mongo_sort, parse_sort, sort_values
from tests.servers import ferretdb_binary, free_port, start_ferretdb

T0 = datetime(2024, 1, 1, tzinfo=UTC)


# ---------------------------------------------------------------------------
# parse_sort


def test_parse_sort_directions_fields_and_tie_break() -> None:
    keys = parse_sort("Observation", ["-date,status"])
    assert keys == [SortKey("date", "srt.date:d", -1), SortKey("status", "srt.status", 1), SortKey("_id", "_id", 1)]
    assert mongo_sort(keys) == [("srt.date:d", -1), ("srt.status", 1), ("_id", 1)]


def test_parse_sort_special_parameters() -> None:
    assert parse_sort("Patient", ["-_lastUpdated"]) == [SortKey("_lastUpdated", "ts", -1), SortKey("_id", "_id", 1)]
    assert parse_sort("Patient", ["_lastUpdated"])[0].field == "ts"
    assert parse_sort("Patient", ["-_id"]) == [SortKey("_id", "_id", -1)]  # _id is unique: no tie-break
    assert parse_sort("Patient", ["name,_id,birthdate"]) == [SortKey("name", "srt.name", 1), SortKey("_id", "_id", 1)]


def test_parse_sort_repeated_parameters_join_in_order() -> None:
    keys = parse_sort("Patient", ["family", "-birthdate, gender"])
    assert [(k.code, k.direction) for k in keys] == [("family", 1), ("birthdate", -1), ("gender", 1), ("_id", 1)]


def test_parse_sort_empty_and_duplicates() -> None:
    assert parse_sort("Patient", []) == [SortKey("_id", "_id", 1)]
    assert parse_sort("Patient", ["", " , "]) == [SortKey("_id", "_id", 1)]
    assert parse_sort("Patient", ["name,-name"]) == [SortKey("name", "srt.name", 1), SortKey("_id", "_id", 1)]


@pytest.mark.parametrize("raw", ["nonsense", "-nonsense", "code-value-quantity", "-", "name:exact", "_text"])
def test_parse_sort_rejects_unknown_or_unsortable(raw: str) -> None:
    rtype = "Observation" if raw == "code-value-quantity" else "Patient"
    with pytest.raises(BadRequest) as err:
        parse_sort(rtype, [raw])
    assert err.value.status == 400
    assert err.value.issues[0].expression == ["_sort"]


def test_parse_sort_unknown_type() -> None:
    with pytest.raises(BadRequest):
        parse_sort("NoSuchType", ["date"])
    assert parse_sort("NoSuchType", ["_id"]) == [SortKey("_id", "_id", 1)]


# ---------------------------------------------------------------------------
# sort_values


def test_sort_values_dates_tokens_quantities_references() -> None:
    obs = {
        "resourceType": "Observation", "id": "o1", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}, {"system": "urn:x", "code": "a-1"}]},
        "subject": {"reference": "Patient/p9"},
        "effectivePeriod": {"start": "2024-03", "end": "2024-05-02"},
        "component": [
            {"code": {"text": "x"}, "valueQuantity": {"value": Decimal("7.5"), "unit": "mg"}},
            {"code": {"text": "y"}, "valueQuantity": {"value": -2}},
        ],
        "meta": {"lastUpdated": "2024-01-01T00:00:00Z", "profile": ["http://b.example/p", "http://a.example/p"]},
    }
    srt = sort_values("Observation", extract_index(obs))
    assert srt["date"] == datetime(2024, 3, 1, tzinfo=UTC)
    assert srt["date:d"] == datetime(2024, 5, 2, 23, 59, 59, 999999, tzinfo=UTC)
    assert (srt["code"], srt["code:d"]) == ("2345-7", "a-1")  # plain codes only, never "system|code"
    assert (srt["status"], srt["status:d"]) == ("final", "final")
    assert (srt["subject"], srt["patient"]) == ("Patient/p9", "Patient/p9")
    assert (srt["component-value-quantity"], srt["component-value-quantity:d"]) == (-2.0, 7.5)
    assert isinstance(srt["component-value-quantity"], float)
    assert (srt["_profile"], srt["_profile:d"]) == ("http://a.example/p", "http://b.example/p")  # uri
    assert "_lastUpdated" not in srt and "_id" not in srt  # sorted on ts and _id
    assert "value-quantity" not in srt  # no value
    assert not any(k.startswith("code-value") or k.startswith("combo-code-value") for k in srt)  # composites
    assert all("." not in k and not k.startswith("$") for k in srt)


def test_sort_values_strings_are_normalized_and_numbers_are_floats() -> None:
    patient = {"resourceType": "Patient", "id": "p", "name": [{"family": "Zoë", "given": ["Ann", "Émile"]}]}
    srt = sort_values("Patient", extract_index(patient))
    assert (srt["name"], srt["name:d"]) == ("ann", "zoe")
    assert (srt["given"], srt["given:d"]) == ("ann", "emile")
    assert "birthdate" not in srt
    risk = {"resourceType": "RiskAssessment", "id": "r", "status": "final", "subject": {"reference": "Patient/p"},
            "prediction": [{"probabilityDecimal": Decimal("0.25")}, {"probabilityDecimal": 1}]}
    srt = sort_values("RiskAssessment", extract_index(risk))
    assert (srt["probability"], srt["probability:d"]) == (0.25, 1.0)
    assert isinstance(srt["probability:d"], float)


def test_sort_values_hand_written_index() -> None:
    idx = {"birthdate": [{"lo": T0, "hi": T0 + timedelta(days=1)}, {"lo": T0 - timedelta(days=5), "hi": T0}],
           "gender": ["http://hl7.org/fhir/administrative-gender|male", "male", "|male"],
           "email": ["urn:x|"]}
    srt = sort_values("Patient", idx)
    assert srt == {"birthdate": T0 - timedelta(days=5), "birthdate:d": T0 + timedelta(days=1),
                   "gender": "male", "gender:d": "male"}  # a token with only "system|" forms has no code to sort
    assert sort_values("Patient", {}) == {}
    assert sort_values("NoSuchType", idx) == {}


# ---------------------------------------------------------------------------
# Cursors


KEYS = parse_sort("Patient", ["-birthdate,name"])


def test_cursor_round_trips_types_and_is_url_safe() -> None:
    naive = datetime(1, 1, 1, 0, 0)  # pymongo hands back naive UTC datetimes
    doc = {"_id": "p/1?", "ts": T0, "srt": {"birthdate:d": naive}}
    cursor = cursor_after(KEYS, doc)
    assert quote(cursor, safe="") == cursor and "=" not in cursor
    assert keyset_filter(KEYS, cursor) == {"$or": [
        {"$or": [{"srt.birthdate:d": {"$lt": naive.replace(tzinfo=UTC)}}, {"srt.birthdate:d": None}]},
        {"srt.birthdate:d": naive.replace(tzinfo=UTC), "srt.name": {"$ne": None}},
        {"srt.birthdate:d": naive.replace(tzinfo=UTC), "srt.name": None, "_id": {"$gt": "p/1?"}},
    ]}
    keys = parse_sort("RiskAssessment", ["probability", "-_lastUpdated"])
    late = datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)
    doc = {"_id": "r1", "ts": late, "srt": {"probability": 3.0, "probability:d": 4.0}}
    flt = keyset_filter(keys, cursor_after(keys, doc))
    assert flt["$or"][0] == {"srt.probability": {"$gt": 3.0}}
    assert isinstance(flt["$or"][0]["srt.probability"]["$gt"], float)
    assert flt["$or"][1] == {"srt.probability": 3.0, "$or": [{"ts": {"$lt": late}}, {"ts": None}]}
    assert flt["$or"][2] == {"srt.probability": 3.0, "ts": late, "_id": {"$gt": "r1"}}


def test_keyset_filter_missing_value_descending_is_last() -> None:
    keys = parse_sort("Patient", ["-birthdate"])
    flt = keyset_filter(keys, cursor_after(keys, {"_id": "x", "ts": T0}))
    assert flt == {"srt.birthdate:d": None, "_id": {"$gt": "x"}}  # nothing sorts after null in descending order


@pytest.mark.parametrize("cursor", ["", "!!!", "abc", "e30", "W10", "bm90IGpzb24", "WzEsW1siX2lkIiwxLFsieCIsMV1dXV0"])
def test_bad_cursor_is_bad_request(cursor: str) -> None:
    with pytest.raises(BadRequest) as err:
        keyset_filter(parse_sort("Patient", ["_id"]), cursor)
    assert err.value.issues[0].expression == ["_cursor"]


def test_cursor_for_another_order_is_bad_request() -> None:
    cursor = cursor_after(KEYS, {"_id": "a", "ts": T0, "srt": {}})
    with pytest.raises(BadRequest) as err:
        keyset_filter(parse_sort("Patient", ["birthdate,name"]), cursor)
    assert "another _sort" in err.value.issues[0].diagnostics
    with pytest.raises(BadRequest):
        keyset_filter(parse_sort("Patient", ["-birthdate"]), cursor)


# ---------------------------------------------------------------------------
# Paging against a real FerretDB


def _patient(rng: random.Random, i: int) -> dict:
    resource: dict[str, Any] = {"resourceType": "Patient", "id": f"pat-{i}"}
    if rng.random() < 0.8:
        resource["name"] = [{"family": rng.choice(["Smith", "smith", "Álvarez", "Alvarez", "Ng", "O'Brien"]),
                             "given": rng.sample(["Ann", "Bob", "Zoë", "Émile"], rng.randint(0, 2))}
                            for _ in range(rng.randint(1, 2))]
    if rng.random() < 0.75:
        resource["birthDate"] = rng.choice(["1970", "1970-05", "1970-05-03", "1985-12-31", "2001-02-03", "1999"])
    if rng.random() < 0.85:
        resource["gender"] = rng.choice(["male", "female", "other", "unknown"])
    if rng.random() < 0.5:
        resource["generalPractitioner"] = [{"reference": f"Practitioner/dr{rng.randint(1, 4)}"}]
    return resource


def _observation(rng: random.Random, i: int) -> dict:
    coding = [{"system": "http://loinc.org", "code": c} for c in rng.sample(["1-8", "2-6", "3-4", "4-2"], 2)]
    code = {"coding": coding[: rng.randint(1, 2)]} if rng.random() < 0.9 else {"text": "no coding"}
    resource: dict[str, Any] = {"resourceType": "Observation", "id": f"obs-{i}", "status": "final", "code": code}
    shape = rng.random()
    if shape < 0.45:
        resource["effectiveDateTime"] = rng.choice(["2024", "2024-03", "2024-03-05", "2024-03-05T10:00:00Z",
                                                    "2024-03-05T10:00:00+02:00", "2023-12-31T23:59:59.999Z"])
    elif shape < 0.8:  # periods with open ends sort at 0001-01-01 / 9999-12-31
        resource["effectivePeriod"] = rng.choice([{"start": "2024-03-01"}, {"end": "2024-03-02"},
                                                  {"start": "2024-01", "end": "2024-06"}])
    if rng.random() < 0.7:
        resource["valueQuantity"] = {"value": rng.choice([Decimal("1.5"), Decimal("1.50"), 2, -3, 0, 100.25]),
                                     "unit": "mg"}
    if rng.random() < 0.5:
        resource["component"] = [{"code": {"text": "c"}, "valueQuantity": {"value": rng.choice([-1, 5, 50])}}
                                 for _ in range(rng.randint(1, 3))]
    return resource


def _risk(rng: random.Random, i: int) -> dict:
    resource: dict[str, Any] = {"resourceType": "RiskAssessment", "id": f"risk-{i}", "status": "final",
                                "subject": {"reference": "Patient/p"}}
    if rng.random() < 0.8:
        resource["occurrenceDateTime"] = rng.choice(["2020", "2021-06", "2021-06-01"])
    resource["prediction"] = [{"probabilityDecimal": rng.choice([Decimal("0.1"), Decimal("0.25"), Decimal("0.9"), 1])}
                              for _ in range(rng.randint(0, 3))]
    return resource


MAKERS = {"Patient": _patient, "Observation": _observation, "RiskAssessment": _risk}

SORTS = {
    "Patient": [["birthdate"], ["-birthdate"], ["name,-birthdate"], ["-name"], ["gender", "-general-practitioner"],
                ["-_lastUpdated"], ["_lastUpdated,-family"], ["_id"], ["-_id"], ["-gender,birthdate,-_id"]],
    "Observation": [["date"], ["-date"], ["value-quantity"], ["-component-value-quantity,date"],
                    ["code,-_lastUpdated"], ["-code,-value-quantity"]],
    "RiskAssessment": [["probability"], ["-probability"], ["probability,-date"]],
}


def _documents(rtype: str, count: int, rng: random.Random) -> list[dict]:
    """Current documents (``_id, v, ts, text, del, idx, comp, srt``) with shuffled ids and few distinct ts."""
    stamps = [T0 + timedelta(minutes=rng.randint(0, 40), milliseconds=rng.choice([0, 1, 999])) for _ in range(25)]
    docs = []
    for i in rng.sample(range(10 * count), count):
        resource = MAKERS[rtype](rng, i)
        idx = extract_index(resource)
        srt = sort_values(rtype, idx)
        # idx keeps only the sorted parameters: FerretDB decodes whole documents for every page, so the full index
        # (dozens of fields per Observation) would make each query ~4x slower without changing what is tested
        idx = {code: values for code, values in idx.items() if code in srt}
        docs.append({"_id": resource["id"], "v": 1, "ts": rng.choice(stamps), "text": "{}",
                     "del": rng.random() < 0.05, "idx": idx, "comp": [], "srt": srt})
    return docs


def _value(doc: dict, field: str) -> Any:
    if field in ("_id", "ts"):
        return doc[field]
    return doc.get("srt", {}).get(field.removeprefix("srt."))


def _expected(docs: list[dict], keys: list[SortKey]) -> list[str]:
    """MongoDB's order: missing first ascending, last descending; stable sorts from the last key to the first."""
    ordered = list(docs)
    for key in reversed(keys):
        ordered.sort(key=lambda d, f=key.field: (_value(d, f) is not None, _value(d, f)), reverse=key.direction < 0)
    return [d["_id"] for d in ordered]


def _paged(coll: Collection, keys: list[SortKey], limit: int = 7) -> list[str]:
    out: list[str] = []
    cursor: str | None = None
    for _ in range(1000):
        flt: dict = {"del": False}
        if cursor is not None:
            flt = {"$and": [flt, keyset_filter(keys, cursor)]}
        page = list(coll.find(flt, {"text": 0, "idx": 0}).sort(mongo_sort(keys)).limit(limit))
        out.extend(d["_id"] for d in page)
        if len(page) < limit:
            return out
        cursor = cursor_after(keys, page[-1])
        assert quote(cursor, safe="") == cursor
    raise AssertionError("paging did not end")


# The PostgreSQL backend pushes parts of filters down into SQL; it runs the sorts the brief names, SQLite runs all.
POSTGRESQL_SORTS = [("Observation", ["date"]), ("Observation", ["-date"]), ("Patient", ["name,-birthdate"]),
                    ("RiskAssessment", ["probability"]), ("Patient", ["-_lastUpdated"]), ("Patient", ["_id"])]


def _load(uri: str) -> Iterator[Database]:
    """The three collections, 300 documents each, in the FerretDB at ``uri``."""
    client: MongoClient = MongoClient(uri)
    try:
        db = client["sorttest"]
        rng = random.Random(20240517)
        for rtype in SORTS:
            db[rtype].insert_many(_documents(rtype, 300, rng))
        yield db
    finally:
        client.close()


@pytest.fixture(scope="module")
def sqlite_db(tmp_path_factory) -> Iterator[Database]:
    """A real FerretDB on SQLite (the default backend) with the test documents."""
    server = start_ferretdb(tmp_path_factory.mktemp("sort-db"))
    try:
        yield from _load(server.uri)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def postgresql_db() -> Iterator[Database]:
    """A real FerretDB on its PostgreSQL backend with the test documents (skipped where PostgreSQL is missing)."""
    if not Path("/usr/lib/postgresql").exists():
        pytest.skip("PostgreSQL is not installed")
    shared = Path(tempfile.mkdtemp(prefix="fhirserver-sort-pg-"))  # PostgreSQL runs as its own user
    shared.chmod(0o755)
    pg = PostgreSQL(state=shared / "postgresql", port=free_port())
    server = FerretDB(binary=ferretdb_binary(), state=shared / "ferretdb", port=free_port(),
                      handler="postgresql", postgresql_url=pg.url("ferretdb"))
    try:
        pg.start()
        pg.create_database("ferretdb")
        server.start()
        yield from _load(server.uri)
    finally:
        server.stop()
        pg.stop()
        shutil.rmtree(shared, ignore_errors=True)


def _check_paging(db: Database, rtype: str, raw: list[str]) -> None:
    """Pages of 7 == FerretDB's full sort == the order computed here; no duplicates, nothing missed."""
    coll = db[rtype]
    keys = parse_sort(rtype, raw)
    stored = list(coll.find({"del": False}, {"text": 0, "idx": 0}))
    assert 250 < len(stored) < 300  # some deleted documents are left out
    expected = _expected(stored, keys)

    first = keys[0]
    values = [_value(d, first.field) for d in stored]
    if first.field != "_id":  # the data exercises missing values and ties on the leading key
        assert any(v is None for v in values) or first.field == "ts"
        assert len({v for v in values if v is not None}) < len([v for v in values if v is not None])

    served = [d["_id"] for d in coll.find({"del": False}, {"_id": 1}).sort(mongo_sort(keys))]
    assert served == expected, "FerretDB's own sort differs from MongoDB's order"

    paged = _paged(coll, keys)
    assert len(paged) == len(set(paged)), "a document was served twice"
    assert set(paged) == set(expected), "a document was missed"
    assert paged == expected


def _ids(value: Any) -> str:
    return value if isinstance(value, str) else "&".join(value)


@pytest.mark.parametrize(("rtype", "raw"), [(t, raw) for t, sorts in SORTS.items() for raw in sorts], ids=_ids)
def test_keyset_paging_sqlite(sqlite_db: Database, rtype: str, raw: list[str]) -> None:
    _check_paging(sqlite_db, rtype, raw)


@pytest.mark.parametrize(("rtype", "raw"), POSTGRESQL_SORTS, ids=_ids)
def test_keyset_paging_postgresql(postgresql_db: Database, rtype: str, raw: list[str]) -> None:
    _check_paging(postgresql_db, rtype, raw)

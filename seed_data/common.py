"""Shared pieces of the seed generators: scales, the date anchor, business identifiers and deterministic ids.

Every generated resource carries a business identifier `urn:fhirserver:seed:<type>|<key>` and the logical id
`<key>` (the same key), so the data set is the same for a given seed and anchor date, every reference is a plain
`Type/id` that can be checked without a server, and the loader can tell what is already loaded by id.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

SEED_SYSTEM = "urn:fhirserver:seed"
EXT_BASE = "http://fhirserver.local/fhir/StructureDefinition"
Resource = dict[str, Any]


@dataclass(frozen=True)
class Scale:
    """How big a generated health system is."""

    name: str
    members: int  # Patients (households of 1-4 people)
    sites: int  # medical centers and clinics (each with one Location)
    practitioners: int
    visits: int  # past encounters per member (each with a summary, a claim and an EOB; most with labs)
    slot_practitioners: int  # practitioners with a schedule for the coming 8 weeks


SCALES: dict[str, Scale] = {
    "small": Scale("small", members=20, sites=3, practitioners=8, visits=2, slot_practitioners=3),
    "medium": Scale("medium", members=1000, sites=8, practitioners=60, visits=6, slot_practitioners=40),
    "large": Scale("large", members=10000, sites=20, practitioners=200, visits=7, slot_practitioners=150),
}


def rng(seed: int, *parts: object) -> random.Random:
    """A generator of its own for one part of the data (seeded from text: stable across runs and Python hashes),
    so each member can be generated alone, in any order, and streaming."""
    return random.Random(":".join(str(p) for p in (seed, *parts)))


def ident(rtype: str, key: str) -> dict[str, str]:
    return {"system": f"{SEED_SYSTEM}:{rtype.lower()}", "value": key}


def resource(rtype: str, key: str, **body: Any) -> Resource:
    """A resource with id `key` and the seed business identifier first among its identifiers."""
    out: Resource = {"resourceType": rtype, "id": key}
    if rtype in SINGLE_IDENTIFIER:
        out["identifier"] = ident(rtype, key)
    else:
        out["identifier"] = [ident(rtype, key), *body.pop("identifier", [])]
    out.update(body)
    return out


# Types whose `identifier` is 0..1 (one Identifier, not a list).
SINGLE_IDENTIFIER = frozenset({"QuestionnaireResponse"})


def ref(rtype: str, key: str, display: str | None = None) -> dict[str, str]:
    out = {"reference": f"{rtype}/{key}"}
    if display:
        out["display"] = display
    return out


def code(system: str, value: str, display: str | None = None, text: str | None = None) -> dict[str, Any]:
    coding: dict[str, str] = {"system": system, "code": value}
    if display:
        coding["display"] = display
    out: dict[str, Any] = {"coding": [coding]}
    if text or display:
        out["text"] = text or display
    return out


def day(anchor: date, offset_days: int) -> str:
    return (anchor + timedelta(days=offset_days)).isoformat()


def instant(anchor: date, offset_days: int, hour: int = 9, minute: int = 0) -> str:
    """An instant at local clinic time written in UTC (the seed uses UTC throughout)."""
    moment = datetime.combine(anchor + timedelta(days=offset_days), time(hour, minute), tzinfo=UTC)
    return moment.isoformat().replace("+00:00", "Z")


def money(value: float) -> dict[str, Any]:
    return {"value": round(value, 2), "currency": "USD"}

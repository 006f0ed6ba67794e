"""Waitlist rules: what a waitlist entry is and which free slots it wants.

A patient joins a waitlist by creating an Appointment with status `waitlist` (a plain `POST [base]/Appointment`,
under the patient's own Appointment write scope; no operation is needed). The entry says what is wanted:
- `requestedPeriod` (1..*, each with start and end): the dates the patient can come;
- `serviceType` and/or `specialty` codes (any of them matches); a visit-mode coding in serviceType
  (system VISIT_MODE_SYSTEM: in-person, video, phone) is matched on its own: any of the modes named;
- practitioner (Practitioner / PractitionerRole participants) and location (Location participants): a slot matches
  when its Schedule's actors include one of each kind named (different kinds AND, same kind OR, as in Argonaut $find).
Its first Patient participant is the patient. It names at least one of service, specialty, practitioner or location.

Entries are served first come, first served by the time the server first stored them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from fhirserver.errors import Issue
from fhirserver.resources.scheduling import VISIT_MODE_SYSTEM

WAITLIST = "waitlist"
PRACTITIONER_TYPES = ("Practitioner", "PractitionerRole")


def instant_of(text: str | None) -> datetime | None:
    """A FHIR dateTime/instant as an aware UTC datetime (a date alone is its midnight UTC); None if absent/bad."""
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).astimezone(UTC)


def _codes(concepts: list[dict] | None, modes: bool = False) -> frozenset[str]:
    """Token keys `system|code` and `code` of CodeableConcepts: the visit-mode codings (`modes`) or the others."""
    out: set[str] = set()
    for concept in concepts or []:
        for coding in concept.get("coding") or []:
            if coding.get("code") and (coding.get("system") == VISIT_MODE_SYSTEM) == modes:
                out.add(coding["code"])
                out.add(f"{coding.get('system') or ''}|{coding['code']}")
    return frozenset(out)


def _actors(resource: dict) -> list[str]:
    return [((p.get("actor") or {}).get("reference") or "") for p in resource.get("participant") or []]


@dataclass(frozen=True)
class Criteria:
    """What a waitlist entry asks for."""

    entry: str  # Appointment id of the entry
    patient: str  # Patient id
    periods: tuple[tuple[datetime, datetime], ...]
    services: frozenset[str]
    modes: frozenset[str]  # visit modes (in-person, video, phone): a serviceType coding of VISIT_MODE_SYSTEM
    specialties: frozenset[str]
    practitioners: frozenset[str]  # "Practitioner/1", "PractitionerRole/2"
    locations: frozenset[str]  # "Location/3"

    @classmethod
    def of(cls, entry: dict) -> Criteria:
        """The criteria of a valid entry (see `check_entry`)."""
        actors = _actors(entry)
        patient = next(a.split("/", 1)[1] for a in actors if a.startswith("Patient/"))
        periods = tuple((instant_of(p.get("start")), instant_of(p.get("end")))
                        for p in entry.get("requestedPeriod") or [])
        return cls(entry.get("id", ""), patient, tuple(p for p in periods if p[0] and p[1]),  # type: ignore[misc]
                   _codes(entry.get("serviceType")), _codes(entry.get("serviceType"), modes=True),
                   _codes(entry.get("specialty")),
                   frozenset(a for a in actors if a.split("/")[0] in PRACTITIONER_TYPES),
                   frozenset(a for a in actors if a.startswith("Location/")))

    def wants_time(self, start: datetime | None, end: datetime | None) -> bool:
        """The slot lies inside one of the requested periods."""
        return start is not None and end is not None and any(lo <= start and end <= hi for lo, hi in self.periods)

    def wants_schedule(self, schedule: dict | None) -> bool:
        """The schedule's actors include a wanted practitioner (if any) and a wanted location (if any)."""
        if not self.practitioners and not self.locations:
            return True
        actors = {a.get("reference") for a in (schedule or {}).get("actor") or []}
        return (not self.practitioners or bool(actors & self.practitioners)) and \
            (not self.locations or bool(actors & self.locations))

    def matches(self, slot: dict, schedule: dict | None) -> bool:
        """Whether a free `slot` (of `schedule`) is what this entry waits for."""
        if slot.get("status") != "free":
            return False
        if not self.wants_time(instant_of(slot.get("start")), instant_of(slot.get("end"))):
            return False
        # As $find does: service type and visit mode are the slot's own; specialty the slot's or its schedule's.
        if self.services and not self.services & _codes(slot.get("serviceType")):
            return False
        if self.modes and not self.modes & _codes(slot.get("serviceType"), modes=True):
            return False
        slot_specialties = _codes(slot.get("specialty")) | _codes((schedule or {}).get("specialty"))
        if self.specialties and not self.specialties & slot_specialties:
            return False
        return self.wants_schedule(schedule)

    def slot_search(self, schedules: list[str] | None) -> list[tuple[str, str]]:
        """Search parameters on Slot for free slots starting inside the requested periods (one search per period
        is not needed: the overall span is searched and `matches` keeps the slots inside a period)."""
        lo = min(p[0] for p in self.periods)
        hi = max(p[1] for p in self.periods)
        pairs = [("status", "free"), ("start", f"ge{_text(lo)}"), ("start", f"lt{_text(hi)}")]
        keyed = sorted(c for c in self.services if "|" in c)
        if keyed and not any(c.startswith("|") for c in keyed):  # a code without system: `matches` decides
            pairs.append(("service-type", ",".join(keyed)))
        if schedules is not None:
            pairs.append(("schedule", ",".join(schedules)))
        return pairs

    def schedule_search(self) -> list[tuple[str, str]] | None:
        """Search parameters on Schedule for the wanted actors; None when no actor is wanted."""
        wanted = sorted(self.practitioners) or sorted(self.locations)
        return [("actor", ",".join(wanted))] if wanted else None


def _text(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_entry(entry: dict) -> list[Issue]:
    """The problems of a waitlist entry (an Appointment with status waitlist); empty when it is usable."""
    issues: list[Issue] = []
    if entry.get("status") != WAITLIST:
        return [Issue("invariant", "a waitlist entry is an Appointment with status 'waitlist'",
                      expression=["Appointment.status"])]
    periods = entry.get("requestedPeriod") or []
    if not periods:
        issues.append(Issue("required", "a waitlist entry needs requestedPeriod: the dates the patient can come",
                            expression=["Appointment.requestedPeriod"]))
    for n, period in enumerate(periods):
        lo, hi = instant_of(period.get("start")), instant_of(period.get("end"))
        if lo is None or hi is None:
            issues.append(Issue("required", "each requestedPeriod of a waitlist entry needs a start and an end",
                                expression=[f"Appointment.requestedPeriod[{n}]"]))
        elif hi <= lo:
            issues.append(Issue("invariant", "requestedPeriod ends before it starts",
                                expression=[f"Appointment.requestedPeriod[{n}]"]))
    actors = _actors(entry)
    if not any(a.startswith("Patient/") for a in actors):
        issues.append(Issue("required", "a waitlist entry needs the patient as a participant",
                            expression=["Appointment.participant"]))
    wants_actor = any(a.split("/")[0] in (*PRACTITIONER_TYPES, "Location") for a in actors)
    if not (entry.get("serviceType") or entry.get("specialty") or wants_actor):
        issues.append(Issue("required", "a waitlist entry names a service type, specialty, practitioner or location",
                            expression=["Appointment.serviceType"]))
    if entry.get("slot"):
        issues.append(Issue("invariant", "a waitlist entry has no slot yet; the offer brings one",
                            expression=["Appointment.slot"]))
    return issues


def order_key(entry: dict, first_written: datetime) -> tuple[datetime, str]:
    """First come, first served: when the entry was first written (the server's time, not `created`, which the
    patient writes and could backdate), then the id."""
    return (first_written.replace(tzinfo=first_written.tzinfo or UTC), entry.get("id", ""))

"""Schedules and Slots for the coming 8 weeks from the anchor day (the load day by default).

Each scheduled clinician works four weekdays. A working day has a same-day block at 08:30 (appointmentType
v2-0276 WALKIN: bookable on the day), five 30-minute in-person slots 09:00-11:30, two video slots 13:00 and 13:30
and a phone slot at 14:00. The visit mode is a second `Slot.serviceType` coding in the system `VISIT_MODE`
(`in-person`, `video`, `phone`), so it is searchable as `Slot?service-type=<VISIT_MODE>|video`; the first
serviceType coding is the clinician's specialty. About one slot in eight is `busy-unavailable` (blocked time);
seeded slots are never `busy`, because a busy slot must belong to a booked Appointment (the scheduling rules).

Slot ids carry the date (`slot-<practitioner>-<yyyymmdd>-<hhmm>`), so a later anchor adds the new days' slots
and leaves the earlier ones as they are.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta

from seed_data.common import Resource, code, instant, ref, resource, rng
from seed_data.practitioners import NUCC, Clinician

VISIT_MODE = "http://fhirserver.local/fhir/CodeSystem/visit-mode"
APPOINTMENT_TYPE = "http://terminology.hl7.org/CodeSystem/v2-0276"
WEEKS = 8
# (hour, minute, visit mode, appointment type)
DAY_PLAN = [(8, 30, "in-person", "WALKIN"), (9, 0, "in-person", "ROUTINE"), (9, 30, "in-person", "ROUTINE"),
            (10, 0, "in-person", "ROUTINE"), (10, 30, "in-person", "ROUTINE"), (11, 0, "in-person", "ROUTINE"),
            (13, 0, "video", "ROUTINE"), (13, 30, "video", "ROUTINE"), (14, 0, "phone", "ROUTINE")]
MODE_DISPLAY = {"in-person": "In person", "video": "Video visit", "phone": "Phone visit"}
SLOT_MINUTES = 30


def schedule(c: Clinician) -> Resource:
    """The clinician's Schedule (no planning horizon: it does not depend on the anchor)."""
    return resource(
        "Schedule", f"sched-{c.key}", active=True,
        serviceType=[code(NUCC, c.specialty[0], c.specialty[1])], specialty=[code(NUCC, c.specialty[0],
                                                                                  c.specialty[1])],
        actor=[ref("PractitionerRole", c.role), ref("Practitioner", c.key, c.name),
               ref("Location", c.site.location, c.site.name)],
        comment=f"Clinic and virtual visits with {c.name} ({c.specialty[1]})",
    )


def week_slots(seed: int, c: Clinician, index: int, anchor: date, week: int) -> list[Resource]:
    """The Slots of one clinician in week `week` (days anchor+7*week .. +6)."""
    out = []
    day_off = index % 5
    for offset in range(week * 7, week * 7 + 7):
        when = anchor + timedelta(days=offset)
        if when.weekday() >= 5 or when.weekday() == day_off:
            continue
        r = rng(seed, "slots", c.key, when.isoformat())
        for hour, minute, mode, kind in DAY_PLAN:
            key = f"slot-{c.key}-{when:%Y%m%d}-{hour:02d}{minute:02d}"
            end_minute = minute + SLOT_MINUTES
            blocked = r.random() < 0.125
            modes = [code(NUCC, c.specialty[0], c.specialty[1]), code(VISIT_MODE, mode, MODE_DISPLAY[mode])]
            slot = resource(
                "Slot", key, serviceType=modes, specialty=[code(NUCC, c.specialty[0], c.specialty[1])],
                appointmentType=code(APPOINTMENT_TYPE, kind, "A previously unscheduled walk-in visit" if
                                     kind == "WALKIN" else "Routine appointment - default if not valued"),
                schedule=ref("Schedule", f"sched-{c.key}"), status="busy-unavailable" if blocked else "free",
                start=instant(anchor, offset, hour, minute),
                end=instant(anchor, offset, hour + end_minute // 60, end_minute % 60),
            )
            if kind == "WALKIN":
                slot["comment"] = "Same-day appointment: bookable on the day"
            out.append(slot)
    return out


def slot_groups(seed: int, scheduled: list[Clinician], anchor: date) -> Iterator[list[Resource]]:
    """One group per clinician and week (the Schedule first, in its own group)."""
    for c in scheduled:
        yield [schedule(c)]
    for index, c in enumerate(scheduled):
        for week in range(WEEKS):
            group = week_slots(seed, c, index, anchor, week)
            if group:
                yield group

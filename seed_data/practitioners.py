"""Clinicians: Practitioners with their PractitionerRoles (organization, location, specialty, hours, telehealth)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from seed_data import names
from seed_data.common import Resource, code, ref, resource
from seed_data.organizations import WEEKDAYS, Site

NUCC = "http://nucc.org/provider-taxonomy"
ROLE = "http://terminology.hl7.org/CodeSystem/practitioner-role"
NPI = "http://hl7.org/fhir/sid/us-npi"

# (NUCC taxonomy code, display, kind) in the order they are handed out: the first ones exist at every scale.
SPECIALTIES = [
    ("207Q00000X", "Family Medicine", "primary"),
    ("208000000X", "Pediatrics", "pediatrics"),
    ("207R00000X", "Internal Medicine", "primary"),
    ("207N00000X", "Dermatology", "specialist"),
    ("207RC0000X", "Cardiovascular Disease", "specialist"),
    ("207V00000X", "Obstetrics & Gynecology", "specialist"),
    ("2084P0800X", "Psychiatry", "specialist"),
    ("207RE0101X", "Endocrinology, Diabetes & Metabolism", "specialist"),
    ("207X00000X", "Orthopaedic Surgery", "specialist"),
    ("363LF0000X", "Nurse Practitioner, Family", "primary"),
]


@dataclass(frozen=True)
class Clinician:
    """What other generators need to know of a practitioner."""

    key: str
    role: str
    name: str
    specialty: tuple[str, str, str]
    site: Site


def clinicians(seed: int, count: int, sites: list[Site]) -> list[Clinician]:
    r = random.Random(f"{seed}:practitioners")
    out = []
    for n in range(1, count + 1):
        spec = SPECIALTIES[(n - 1) % len(SPECIALTIES)]
        gender = r.choice(["female", "male"])
        name = names.person_name(r, gender)
        out.append(Clinician(f"prac-{n:04d}", f"role-{n:04d}", f"{name['text']}", spec, sites[(n - 1) % len(sites)]))
    return out


def practitioner_resources(seed: int, people: list[Clinician]) -> list[Resource]:
    r = random.Random(f"{seed}:practitioner-details")
    out: list[Resource] = []
    for n, c in enumerate(people, start=1):
        given, family = c.name.split(" ", 1)
        gender = "female" if given in names.FEMALE else "male"
        nurse = c.specialty[0].startswith("363L")
        name = {"use": "official", "family": family, "given": [given], "text": c.name}
        if not nurse:
            name.update(prefix=["Dr."], text=f"Dr. {c.name}")
        out.append(resource(
            "Practitioner", c.key, identifier=[{"system": NPI, "value": f"99{n:08d}"}], active=True, name=[name],
            telecom=[names.phone(r, "work")], gender=gender,
            qualification=[{"code": code("http://terminology.hl7.org/CodeSystem/v2-0360", "NP" if nurse else "MD",
                                         "Nurse Practitioner" if nurse else "Doctor of Medicine")}],
        ))
        days = [d for i, d in enumerate(WEEKDAYS) if i != n % len(WEEKDAYS)]
        out.append(resource(
            "PractitionerRole", c.role, active=True, practitioner=ref("Practitioner", c.key, c.name),
            organization=ref("Organization", c.site.org, c.site.name),
            code=[code(ROLE, "nurse" if nurse else "doctor", "Nurse" if nurse else "Doctor")],
            specialty=[code(NUCC, c.specialty[0], c.specialty[1])],
            location=[ref("Location", c.site.location, c.site.name)],
            telecom=[names.phone(r, "work")],
            availableTime=[{"daysOfWeek": days, "availableStartTime": "08:30:00", "availableEndTime": "16:00:00"}],
        ))
    return out

"""The health system's organizations and places: medical centers and clinics, retail pharmacies and a mail-order
pharmacy, a lab, the insurer, and a Location with address and opening hours for each site."""

from __future__ import annotations

import random
from dataclasses import dataclass

from seed_data import names
from seed_data.common import Resource, code, ref, resource

ORG_TYPE = "http://terminology.hl7.org/CodeSystem/organization-type"
ROLE_CODE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
WEEKDAYS = ["mon", "tue", "wed", "thu", "fri"]
INSURER = "org-insurer"
MAIL_PHARMACY = "org-pharm-mail"
RETAIL_PHARMACIES = 3

SITE_NAMES = ["Riverton Medical Center", "Lakeside Family Clinic", "Fairview Pediatrics and Family Care",
              "Brookfield Heart and Vascular Clinic", "Cedar Falls Dermatology Clinic", "Millbrook Primary Care",
              "Westport Medical Center", "Ashford Community Clinic"]


@dataclass(frozen=True)
class Site:
    """A medical center or clinic: its Organization and Location keys and its display name."""

    org: str
    location: str
    name: str
    telehealth: bool


def site_keys(count: int) -> list[Site]:
    out = []
    for n in range(1, count + 1):
        base = SITE_NAMES[(n - 1) % len(SITE_NAMES)]
        name = base if n <= len(SITE_NAMES) else f"{base} {n // len(SITE_NAMES) + 1}"
        out.append(Site(f"org-site-{n:02d}", f"loc-site-{n:02d}", name, telehealth=n % 2 == 1))
    return out


def pharmacy_keys() -> list[str]:
    return [f"org-pharm-{n:02d}" for n in range(1, RETAIL_PHARMACIES + 1)] + [MAIL_PHARMACY]


def _hours(days: list[str], opening: str, closing: str) -> dict:
    return {"daysOfWeek": days, "openingTime": opening, "closingTime": closing}


def _location(key: str, name: str, org: str, r: random.Random, kind: str, kind_display: str,
              hours: list[dict]) -> Resource:
    addr = names.address(r, "work")
    return resource(
        "Location", key, status="active", name=name, mode="instance",
        type=[code(ROLE_CODE, kind, kind_display)], telecom=[names.phone(r, "work")], address=addr,
        managingOrganization=ref("Organization", org, name), hoursOfOperation=hours,
    )


def organizations(seed: int, site_count: int) -> list[Resource]:
    """Insurer, sites (each with its Location), pharmacies (with Locations) and the reference lab."""
    r = random.Random(f"{seed}:organizations")
    out: list[Resource] = [resource(
        "Organization", INSURER, active=True, type=[code(ORG_TYPE, "ins", "Insurance Company")],
        name="Evergreen Health Plan", telecom=[{"system": "phone", "value": "+1-800-555-0100", "use": "work"},
                                               {"system": "url", "value": "https://plan.example.org"}],
        address=[names.address(r, "work")],
    )]
    for site in site_keys(site_count):
        out.append(resource(
            "Organization", site.org, active=True, type=[code(ORG_TYPE, "prov", "Healthcare Provider")],
            name=site.name, telecom=[names.phone(r, "work")], address=[names.address(r, "work")],
        ))
        hours = [_hours(WEEKDAYS, "08:00:00", "17:00:00")]
        if "Medical Center" in site.name:
            hours.append(_hours(["sat"], "09:00:00", "13:00:00"))
        out.append(_location(site.location, site.name, site.org, r, "HOSP" if "Medical Center" in site.name
                             else "PC", "Hospital" if "Medical Center" in site.name else "primary care clinic",
                             hours))
    for n, key in enumerate(pharmacy_keys(), start=1):
        mail = key == MAIL_PHARMACY
        name = "Evergreen Mail-Order Pharmacy" if mail else f"{names.CITIES[n % len(names.CITIES)][0]} Pharmacy"
        org = resource(
            "Organization", key, active=True, type=[code(ORG_TYPE, "prov", "Healthcare Provider", text="Pharmacy")],
            name=name, telecom=[names.phone(r, "work")], address=[names.address(r, "work")],
        )
        if mail:
            org["alias"] = ["Mail-order pharmacy (90-day supplies delivered)"]
        out.append(org)
        hours = [_hours(WEEKDAYS, "08:00:00", "20:00:00"), _hours(["sat", "sun"], "10:00:00", "16:00:00")]
        out.append(_location(f"loc-pharm-{n:02d}", name, key, r, "OUTPHARM" if not mail else "PHARM",
                             "outpatient pharmacy" if not mail else "Pharmacy", hours))
    out.append(resource(
        "Organization", "org-lab", active=True, type=[code(ORG_TYPE, "prov", "Healthcare Provider", text="Lab")],
        name="Evergreen Reference Laboratory", telecom=[names.phone(r, "work")], address=[names.address(r, "work")],
        partOf=ref("Organization", "org-site-01"),
    ))
    return out

"""Members and their families: households of Patients with identifiers, contacts and emergency contacts, family
proxies as RelatedPerson (parents of minors, an adult child caring for a parent) and each member's Coverage.

A proxy RelatedPerson carries the identifier `urn:fhirserver:user|<username>` of the proxy's own account
(see fhirserver/resources/proxies.py), and every member has a would-be username (`given.familyN`), whether or not
an account is created for them (see seed_data/accounts.py).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta

from fhirserver.resources.proxies import USER_SYSTEM
from seed_data import names
from seed_data.common import Resource, code, day, money, ref, resource, rng
from seed_data.organizations import INSURER
from seed_data.practitioners import Clinician

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
V2_0131 = "http://terminology.hl7.org/CodeSystem/v2-0131"
ROLE_CODE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
MRN_SYSTEM = "http://fhirserver.local/fhir/sid/mrn"
MEMBER_SYSTEM = "http://plan.example.org/fhir/sid/member-id"
COPAY = "http://terminology.hl7.org/CodeSystem/coverage-copay-type"
COVERAGE_CLASS = "http://terminology.hl7.org/CodeSystem/coverage-class"
SUBSCRIBER_REL = "http://terminology.hl7.org/CodeSystem/subscriber-relationship"

# name, plan code, copays (primary, specialist, emergency, telehealth, urgent care), deductible, out-of-pocket max
PLANS = [
    ("Evergreen Gold HMO", "EVG-GOLD-HMO", (15, 35, 150, 0, 40), 500, 3000),
    ("Evergreen Silver PPO", "EVG-SILVER-PPO", (30, 60, 250, 10, 60), 1500, 6000),
    ("Evergreen Bronze HDHP", "EVG-BRONZE-HDHP", (45, 90, 350, 25, 90), 3500, 8000),
]


@dataclass
class Member:
    """One Patient of the seed, with what the other generators need."""

    number: int
    gender: str
    birth: date
    name: dict
    household: int
    plan: int
    address: dict
    phone: dict
    subscriber: Member | None = None  # the coverage subscriber when not the member
    relation_to_subscriber: str = "self"
    spouse: Member | None = None
    proxies: list[tuple[Member, str, str]] = field(default_factory=list)  # (proxy, RoleCode, display)
    emergency: Member | None = None

    @property
    def key(self) -> str:
        return f"pat-{self.number:06d}"

    @property
    def username(self) -> str:
        return f"{self.name['given'][0]}.{self.name['family']}{self.number}".lower()

    def age(self, anchor: date) -> int:
        return anchor.year - self.birth.year - ((anchor.month, anchor.day) < (self.birth.month, self.birth.day))


def _birth(r: random.Random, anchor: date, low: int, high: int) -> date:
    return anchor - timedelta(days=r.randint(low * 365 + 1, high * 365 + 300))


def households(seed: int, anchor: date, count: int) -> Iterator[list[Member]]:
    """Households in order, members numbered from 1, until at least `count` members (households are never cut,
    so that nobody's proxy, spouse or subscriber is missing)."""
    number = 0
    h = 0
    while number < count:
        h += 1
        r = rng(seed, "household", h)
        family = r.choice(names.FAMILY)
        addr = names.address(r)
        home = names.phone(r)
        plan = r.randrange(len(PLANS))
        kind = r.choices(["single", "couple", "family", "caregiver"], weights=[30, 20, 35, 15])[0]

        def person(gender: str, low: int, high: int, surname: str = family, r: random.Random = r, h: int = h,
                   plan: int = plan, addr: dict = addr, home: dict = home) -> Member:
            nonlocal number
            number += 1
            return Member(number, gender, _birth(r, anchor, low, high), names.person_name(r, gender, surname), h,
                          plan, addr, names.phone(r, "mobile") if high >= 16 else home)

        people: list[Member] = []
        if kind == "single":
            people.append(person(r.choice(["female", "male"]), 19, 84, r.choice(names.FAMILY)))
        elif kind == "couple":
            a, b = person("female", 25, 80), person("male", 25, 80)
            a.spouse, b.spouse = b, a
            a.emergency, b.emergency = b, a
            b.subscriber, b.relation_to_subscriber = a, "spouse"
            people += [a, b]
        elif kind == "family":
            parents = [person("female", 27, 50)]
            if r.random() < 0.7:
                parents.append(person("male", 27, 52))
                parents[0].spouse, parents[1].spouse = parents[1], parents[0]
                parents[0].emergency, parents[1].emergency = parents[1], parents[0]
                parents[1].subscriber, parents[1].relation_to_subscriber = parents[0], "spouse"
            people += parents
            for _ in range(r.randint(1, 3)):
                child = person(r.choice(["female", "male"]), 0, 16)
                child.subscriber, child.relation_to_subscriber = parents[0], "child"
                child.emergency = parents[0]
                for p in parents:
                    child.proxies.append((p, "MTH", "mother") if p.gender == "female" else (p, "FTH", "father"))
                people.append(child)
        else:
            elder = person(r.choice(["female", "male"]), 76, 92)
            carer = person(r.choice(["female", "male"]), 45, 60)
            elder.emergency = carer
            elder.proxies.append((carer, "DAU", "daughter") if carer.gender == "female" else (carer, "SON", "son"))
            people += [elder, carer]
        yield people


def patient(seed: int, m: Member, anchor: date, pcp: Clinician) -> Resource:
    contacts = []
    if m.emergency is not None:
        e = m.emergency
        rel = [code(V2_0131, "C", "Emergency Contact")]
        if m.age(anchor) < 18:
            rel.append(code(V2_0131, "N", "Next-of-Kin"))
        contacts.append({"relationship": rel, "name": {"family": e.name["family"], "given": e.name["given"],
                                                        "text": e.name["text"]},
                         "telecom": [e.phone], "gender": e.gender})
    else:
        r = rng(seed, "contact", m.number)
        friend = names.person_name(r, r.choice(["female", "male"]))
        contacts.append({"relationship": [code(V2_0131, "C", "Emergency Contact")], "name": friend,
                         "telecom": [names.phone(r, "mobile")]})
    telecom = [m.phone]
    if m.age(anchor) >= 16:
        telecom.append(names.email(m.name, m.number))
    return resource(
        "Patient", m.key,
        identifier=[{"use": "usual", "type": code(V2_0203, "MR", "Medical record number"), "system": MRN_SYSTEM,
                     "value": f"MRN{m.number:08d}"},
                    {"type": code(V2_0203, "MB", "Member Number"), "system": MEMBER_SYSTEM,
                     "value": member_id(m)}],
        active=True, name=[m.name], telecom=telecom, gender=m.gender, birthDate=m.birth.isoformat(),
        address=[m.address], maritalStatus=code("http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
                                                "M" if m.spouse else ("U" if m.age(anchor) < 18 else "S"),
                                                "Married" if m.spouse else "unmarried" if m.age(anchor) < 18
                                                else "Never Married"),
        contact=contacts,
        communication=[{"language": code("urn:ietf:bcp:47", "en-US", "English (United States)"),
                        "preferred": True}],
        generalPractitioner=[ref("Practitioner", pcp.key, pcp.name)],
        managingOrganization=ref("Organization", pcp.site.org, pcp.site.name),
    )


def member_id(m: Member) -> str:
    sub = m.subscriber or m
    suffix = "00" if m.subscriber is None else f"{m.number % 100:02d}"
    return f"EVG{sub.number:07d}{suffix}"


def related_people(m: Member, anchor: date) -> list[Resource]:
    """The member's proxies: who may act for them in the portal."""
    out = []
    for n, (proxy, role, display) in enumerate(m.proxies, start=1):
        out.append(resource(
            "RelatedPerson", f"rp-{m.number:06d}-{n}",
            identifier=[{"system": USER_SYSTEM, "value": proxy.username}],
            active=True, patient=ref("Patient", m.key, m.name["text"]),
            relationship=[code(ROLE_CODE, role, display)], name=[proxy.name], telecom=[proxy.phone],
            gender=proxy.gender, address=[proxy.address],
            period={"start": day(anchor, -365 * min(m.age(anchor), 5) - 30)},
        ))
    return out


def coverage(m: Member, anchor: date) -> Resource:
    name, plan_code, copays, deductible, oop = PLANS[m.plan]
    sub = m.subscriber or m
    costs = [(kind, display, value) for (kind, display), value in zip(
        [("gpvisit", "GP Office Visit"), ("spvisit", "Specialist Office Visit"), ("emergency", "Emergency"),
         ("televisit", "Tele-visit"), ("urgentcare", "Urgent Care")], copays, strict=True)]
    cost_items = [{"type": code(COPAY, kind, display), "valueMoney": money(value)} for kind, display, value in costs]
    cost_items += [{"type": code(COPAY, "deductible", "Deductible"), "valueMoney": money(deductible)},
                   {"type": code(COPAY, "maxoutofpocket", "Maximum out of pocket"), "valueMoney": money(oop)}]
    return resource(
        "Coverage", f"cov-{m.number:06d}",
        identifier=[{"type": code(V2_0203, "MB", "Member Number"), "system": MEMBER_SYSTEM, "value": member_id(m)}],
        status="active",
        type=code("http://terminology.hl7.org/CodeSystem/v3-ActCode", "HIP", "health insurance plan policy"),
        subscriber=ref("Patient", sub.key, sub.name["text"]), subscriberId=member_id(sub),
        beneficiary=ref("Patient", m.key, m.name["text"]), dependent=f"{m.number % 100:02d}",
        relationship=code(SUBSCRIBER_REL, m.relation_to_subscriber, m.relation_to_subscriber.capitalize()),
        period={"start": f"{anchor.year}-01-01", "end": f"{anchor.year}-12-31"},
        payor=[ref("Organization", INSURER, "Evergreen Health Plan")],
        **{"class": [{"type": code(COVERAGE_CLASS, "plan", "Plan"), "value": plan_code, "name": name},
                     {"type": code(COVERAGE_CLASS, "group", "Group"), "value": f"GRP{1000 + m.household % 50}",
                      "name": "Evergreen Employer Group"}]},
        costToBeneficiary=cost_items, network="Evergreen Network",
    )

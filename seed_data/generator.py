"""The whole seed data set as a stream of groups: the shared health system (organizations, locations, clinicians,
questionnaires), schedules and slots, then one group per household with everything about its members.

A group is the unit the loader writes in one transaction, so a group is either fully loaded or not at all, and
its first resource tells whether it is there. Nothing is kept between groups: memory stays flat at any scale.
Same seed and same anchor date give the same groups, resource for resource.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date

from seed_data import clinical, financial, members, organizations, practitioners, scheduling
from seed_data.common import SCALES, Resource, Scale, rng

CHUNK = 50  # shared resources per group


@dataclass(frozen=True)
class World:
    """The shared part every member refers to."""

    seed: int
    anchor: date
    scale: Scale
    sites: list[organizations.Site]
    clinicians: list[practitioners.Clinician]

    @property
    def scheduled(self) -> list[practitioners.Clinician]:
        return self.clinicians[: self.scale.slot_practitioners]

    def of_kind(self, kind: str) -> list[practitioners.Clinician]:
        return [c for c in self.clinicians if c.specialty[2] == kind]


def world(seed: int, scale: str | Scale, anchor: date) -> World:
    size = SCALES[scale] if isinstance(scale, str) else scale
    sites = organizations.site_keys(size.sites)
    return World(seed, anchor, size, sites, practitioners.clinicians(seed, size.practitioners, sites))


def shared_groups(w: World) -> Iterator[list[Resource]]:
    items = organizations.organizations(w.seed, w.scale.sites) + clinical.questionnaires() + \
        practitioners.practitioner_resources(w.seed, w.clinicians)
    for start in range(0, len(items), CHUNK):
        yield items[start:start + CHUNK]


def member_resources(w: World, m: members.Member) -> list[Resource]:
    """Everything about one member, Patient first."""
    r = rng(w.seed, "member", m.number)
    minor = m.age(w.anchor) < 18
    pcps = w.of_kind("pediatrics" if minor else "primary") or w.clinicians
    pcp = r.choice(pcps)
    specialists = w.of_kind("specialist")
    record = clinical.ClinicalRecord(r, m, w.anchor, pcp, specialists, organizations.pharmacy_keys()[:-1],
                                     organizations.MAIL_PHARMACY, w.scale.visits)
    out = [members.patient(w.seed, m, w.anchor, pcp), members.coverage(m, w.anchor),
           *members.related_people(m, w.anchor), *record.problems(), *record.allergies(), *record.medications(),
           *record.immunizations()]
    for v in record.visits:
        out += [record.encounter(v), record.summary(v), *record.vitals(v), *record.labs(v),
                *financial.claim_and_eob(r, m, w.anchor, v)]
    out += record.messages() + record.previsit_answers()
    return out


def member_groups(w: World) -> Iterator[list[Resource]]:
    for household in members.households(w.seed, w.anchor, w.scale.members):
        group: list[Resource] = []
        for m in household:
            group += member_resources(w, m)
        yield group


def groups(seed: int, scale: str | Scale, anchor: date) -> Iterator[list[Resource]]:
    """Every group of the data set, in load order."""
    w = world(seed, scale, anchor)
    yield from shared_groups(w)
    yield from scheduling.slot_groups(seed, w.scheduled, anchor)
    yield from member_groups(w)


def resources(seed: int, scale: str | Scale, anchor: date) -> Iterator[Resource]:
    for group in groups(seed, scale, anchor):
        yield from group


def demo_members(seed: int, scale: str | Scale, anchor: date, limit: int) -> list[members.Member]:
    """The first `limit` members (whole households), for demo accounts."""
    w = world(seed, scale, anchor)
    out: list[members.Member] = []
    for household in members.households(seed, anchor, w.scale.members):
        if len(out) >= limit:
            break
        out += household
    return out


def estimate(scale: str | Scale) -> int:
    """About how many resources a scale has (for the progress bar; the exact count comes from the load)."""
    size = SCALES[scale] if isinstance(scale, str) else scale
    per_member = 15 + 14 * size.visits
    slots = size.slot_practitioners * (scheduling.WEEKS * 4 * len(scheduling.DAY_PLAN) + 1)
    return size.members * per_member + slots + 4 * size.sites + 2 * size.practitioners + 12

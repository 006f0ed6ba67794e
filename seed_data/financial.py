"""Claims and ExplanationOfBenefits for each visit: billed amounts per CPT line, the plan's adjudication (eligible
amount, copay, deductible, what the plan paid) and the member's share, shaped after CARIN Blue Button."""

from __future__ import annotations

import random
from datetime import date

from seed_data.clinical import Visit
from seed_data.common import Resource, code, day, money, ref, resource
from seed_data.members import PLANS, Member
from seed_data.organizations import INSURER

CPT = "http://www.ama-assn.org/go/cpt"
CLAIM_TYPE = "http://terminology.hl7.org/CodeSystem/claim-type"
ADJUDICATION = "http://terminology.hl7.org/CodeSystem/adjudication"
PROCESS_PRIORITY = "http://terminology.hl7.org/CodeSystem/processpriority"
LAB_CPT = {"cbc": ("85025", "Complete blood count with differential"), "bmp": ("80048", "Basic metabolic panel"),
           "lipid": ("80061", "Lipid panel"), "a1c": ("83036", "Hemoglobin A1c")}


def _lines(r: random.Random, v: Visit) -> list[tuple[str, str, float]]:
    if v.virtual:
        visit = ("99213", "Office or other outpatient visit, established patient, low complexity (telehealth)")
        fee = r.choice([120.0, 135.0, 150.0])
    else:
        visit = r.choice([("99213", "Office or other outpatient visit, established patient, low complexity"),
                          ("99214", "Office or other outpatient visit, established patient, moderate complexity")])
        fee = 165.0 if visit[0] == "99213" else 240.0
    out = [(visit[0], visit[1], fee)]
    out += [(LAB_CPT[p][0], LAB_CPT[p][1], float(r.choice([28, 36, 45, 62]))) for p in v.panels]
    return out


def claim_and_eob(r: random.Random, m: Member, anchor: date, v: Visit) -> list[Resource]:
    c = v.clinician
    lines = _lines(r, v)
    created = day(anchor, min(v.offset + 2, 0))
    claim_key = v.key(m, "claim")
    patient = ref("Patient", m.key, m.name["text"])
    coverage = ref("Coverage", f"cov-{m.number:06d}")
    provider = ref("Organization", c.site.org, c.site.name)
    serviced = day(anchor, v.offset)
    claim = resource(
        "Claim", claim_key, status="active", type=code(CLAIM_TYPE, "professional", "Professional"), use="claim",
        patient=patient, billablePeriod={"start": serviced, "end": serviced}, created=created,
        insurer=ref("Organization", INSURER, "Evergreen Health Plan"), provider=provider,
        priority=code(PROCESS_PRIORITY, "normal", "Normal"),
        careTeam=[{"sequence": 1, "provider": ref("Practitioner", c.key, c.name)}],
        insurance=[{"sequence": 1, "focal": True, "coverage": coverage}],
        item=[{"sequence": n, "careTeamSequence": [1], "productOrService": code(CPT, cpt, display),
               "servicedDate": serviced, "unitPrice": money(fee), "net": money(fee)}
              for n, (cpt, display, fee) in enumerate(lines, start=1)],
        total=money(sum(fee for _, _, fee in lines)),
    )
    claim["item"][0]["encounter"] = [ref("Encounter", v.key(m, "enc"))]
    _, _, copays, _, _ = PLANS[m.plan]
    copay = copays[3] if v.virtual else copays[0] if c.specialty[2] in ("primary", "pediatrics") else copays[1]
    items, paid, member_share = [], 0.0, 0.0
    for n, (cpt, display, fee) in enumerate(lines, start=1):
        eligible = round(fee * 0.8, 2)
        item_copay = float(min(copay, eligible)) if n == 1 else 0.0
        deductible = round(eligible * r.choice([0, 0, 0.5, 1.0]), 2) if n > 1 else 0.0
        benefit = round(eligible - item_copay - deductible, 2)
        paid += benefit
        member_share += item_copay + deductible
        items.append({"sequence": n, "productOrService": code(CPT, cpt, display), "servicedDate": serviced,
                      "net": money(fee), "adjudication": [
                          {"category": code(ADJUDICATION, "submitted", "Submitted Amount"), "amount": money(fee)},
                          {"category": code(ADJUDICATION, "eligible", "Eligible Amount"), "amount": money(eligible)},
                          {"category": code(ADJUDICATION, "copay", "CoPay"), "amount": money(item_copay)},
                          {"category": code(ADJUDICATION, "deductible", "Deductible"), "amount": money(deductible)},
                          {"category": code(ADJUDICATION, "benefit", "Benefit Amount"), "amount": money(benefit)}]})
    eob = resource(
        "ExplanationOfBenefit", v.key(m, "eob"), status="active",
        type=code(CLAIM_TYPE, "professional", "Professional"), use="claim", patient=patient,
        billablePeriod={"start": serviced, "end": serviced}, created=day(anchor, min(v.offset + 9, 0)),
        insurer=ref("Organization", INSURER, "Evergreen Health Plan"), provider=provider,
        claim=ref("Claim", claim_key), outcome="complete",
        disposition="Claim settled as per contract.",
        careTeam=[{"sequence": 1, "provider": ref("Practitioner", c.key, c.name)}],
        insurance=[{"focal": True, "coverage": coverage}], item=items,
        total=[{"category": code(ADJUDICATION, "submitted", "Submitted Amount"),
                "amount": money(sum(fee for _, _, fee in lines))},
               {"category": code(ADJUDICATION, "benefit", "Benefit Amount"), "amount": money(paid)},
               {"category": code("http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBAdjudication", "memberliability",
                                 "Member liability"), "amount": money(member_share)}],
        payment={"type": code("http://terminology.hl7.org/CodeSystem/ex-paymenttype", "complete", "Complete"),
                 "date": day(anchor, min(v.offset + 9, 0)), "amount": money(paid)},
    )
    return [claim, eob]

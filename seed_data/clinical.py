"""A member's clinical record: Conditions, AllergyIntolerances, MedicationRequests (refills left, preferred
pharmacy, some needing prior authorization), Immunizations, Encounters with visit summaries (DocumentReference),
vital signs and lab Observations with DiagnosticReports (the newest sometimes still preliminary), care-team
Communications, and pre-visit Questionnaires with the member's answers."""

from __future__ import annotations

import base64
import random
from dataclasses import dataclass
from datetime import date

from seed_data.common import EXT_BASE, Resource, code, day, instant, ref, resource
from seed_data.members import Member
from seed_data.practitioners import Clinician

SNOMED = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CVX = "http://hl7.org/fhir/sid/cvx"
UCUM = "http://unitsofmeasure.org"
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
REFILLS_REMAINING = f"{EXT_BASE}/refills-remaining"
PRIOR_AUTH = f"{EXT_BASE}/prior-authorization-required"
QUESTIONNAIRE_BASE = "http://fhirserver.local/fhir/Questionnaire"

# SNOMED, display, ICD-10-CM, minimum age, weight, medication key
CONDITIONS = [
    ("38341003", "Hypertensive disorder, systemic arterial", "I10", 30, 30, "lisinopril"),
    ("44054006", "Diabetes mellitus type 2", "E11.9", 35, 15, "metformin"),
    ("55822004", "Hyperlipidemia", "E78.5", 35, 25, "atorvastatin"),
    ("195967001", "Asthma", "J45.909", 0, 12, "albuterol"),
    ("24079001", "Atopic dermatitis", "L20.9", 0, 8, "dupilumab"),
    ("235595009", "Gastroesophageal reflux disease", "K21.9", 18, 15, "omeprazole"),
    ("197480006", "Anxiety disorder", "F41.9", 12, 12, "sertraline"),
    ("239873007", "Osteoarthritis of knee", "M17.9", 50, 12, "meloxicam"),
    ("367498001", "Seasonal allergic rhinitis", "J30.2", 2, 20, "cetirizine"),
]
# RxNorm, display, sig, quantity per fill, maintenance (mail-order eligible), prior authorization
MEDICATIONS = {
    "lisinopril": ("314076", "lisinopril 10 MG Oral Tablet", "Take 1 tablet by mouth once daily", 30, True, False),
    "metformin": ("860975", "metformin hydrochloride 500 MG Oral Tablet", "Take 1 tablet by mouth twice daily "
                  "with meals", 60, True, False),
    "atorvastatin": ("617310", "atorvastatin 20 MG Oral Tablet", "Take 1 tablet by mouth at bedtime", 30, True,
                     False),
    "albuterol": ("745679", "albuterol 0.09 MG/ACTUAT Metered Dose Inhaler", "Inhale 2 puffs every 4-6 hours "
                  "as needed for wheezing", 1, False, False),
    "dupilumab": ("1876376", "dupilumab 300 MG in 2 ML Prefilled Syringe", "Inject 300 mg under the skin every "
                  "2 weeks", 2, False, True),
    "omeprazole": ("198053", "omeprazole 20 MG Delayed Release Oral Capsule", "Take 1 capsule by mouth daily "
                   "before breakfast", 30, True, False),
    "sertraline": ("312940", "sertraline 50 MG Oral Tablet", "Take 1 tablet by mouth once daily", 30, True, False),
    "meloxicam": ("311486", "meloxicam 15 MG Oral Tablet", "Take 1 tablet by mouth once daily with food", 30,
                  False, False),
    "cetirizine": ("1014676", "cetirizine hydrochloride 10 MG Oral Tablet", "Take 1 tablet by mouth daily in "
                   "allergy season", 30, False, False),
    "semaglutide": ("1991306", "semaglutide 1 MG/DOSE Pen Injector", "Inject 1 mg under the skin once weekly", 1,
                    False, True),
}
# SNOMED, display, category, reaction (SNOMED, display)
ALLERGIES = [
    ("91936005", "Allergy to penicillin", "medication", ("247472004", "Hives")),
    ("91935009", "Allergy to peanuts", "food", ("39579001", "Anaphylaxis")),
    ("300913006", "Shellfish allergy", "food", ("271807003", "Eruption of skin")),
    ("418689008", "Allergy to grass pollen", "environment", ("49727002", "Cough")),
    ("300916003", "Latex allergy", "environment", ("247472004", "Hives")),
]
# (LOINC, display, unit, low, high, decimals)
Analyte = tuple[str, str, str, float, float, int]
PANELS: dict[str, tuple[str, str, list[Analyte]]] = {
    "cbc": ("58410-2", "CBC panel - Blood by Automated count", [
        ("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL", 4.5, 11.0, 1),
        ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 12.0, 17.5, 1),
        ("4544-3", "Hematocrit [Volume Fraction] of Blood by Automated count", "%", 36.0, 50.0, 1),
        ("777-3", "Platelets [#/volume] in Blood by Automated count", "10*3/uL", 150.0, 400.0, 0)]),
    "bmp": ("51990-0", "Basic metabolic panel - Blood", [
        ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 70.0, 99.0, 0),
        ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.6, 1.3, 2),
        ("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 135.0, 145.0, 0),
        ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 3.5, 5.1, 1)]),
    "lipid": ("57698-3", "Lipid panel with direct LDL - Serum or Plasma", [
        ("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", 125.0, 200.0, 0),
        ("2571-8", "Triglyceride [Mass/volume] in Serum or Plasma", "mg/dL", 40.0, 150.0, 0),
        ("2085-9", "Cholesterol in HDL [Mass/volume] in Serum or Plasma", "mg/dL", 40.0, 80.0, 0),
        ("18262-6", "Cholesterol in LDL [Mass/volume] in Serum or Plasma by Direct assay", "mg/dL", 50.0, 130.0,
         0)]),
    "a1c": ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", [
        ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 4.0, 5.6, 1)]),
}
# CVX, display, minimum age, maximum age
VACCINES = [
    ("08", "Hep B, adolescent or pediatric", 0, 200), ("20", "DTaP", 0, 6), ("03", "MMR", 1, 200),
    ("115", "Tdap", 11, 200), ("208", "COVID-19, mRNA, LNP-S, PF, 30 mcg/0.3 mL dose", 12, 200),
    ("187", "zoster vaccine recombinant", 50, 200), ("33", "pneumococcal polysaccharide PPV23", 65, 200),
]
FLU = ("140", "Influenza, seasonal, injectable, preservative free")


@dataclass(frozen=True)
class Visit:
    """A past encounter: when, with whom, how, and which labs were drawn."""

    number: int
    offset: int  # days from the anchor (negative: in the past)
    clinician: Clinician
    virtual: bool
    panels: tuple[str, ...]
    preliminary: bool

    def key(self, m: Member, prefix: str) -> str:
        return f"{prefix}-{m.number:06d}-{self.number:02d}"


def _round(value: float, decimals: int) -> float | int:
    return int(round(value)) if decimals == 0 else round(value, decimals)


def questionnaires() -> list[Resource]:
    """The pre-visit questionnaires every member is asked to fill in before a visit."""
    general = resource(
        "Questionnaire", "q-previsit", url=f"{QUESTIONNAIRE_BASE}/previsit", version="1.0", name="PreVisit",
        title="Pre-visit questionnaire", status="active", subjectType=["Patient"], date="2025-01-01",
        publisher="Evergreen Health", description="Questions answered online before an appointment.",
        item=[{"linkId": "reason", "text": "What is the main reason for your visit?", "type": "string",
               "required": True},
              {"linkId": "new-meds", "text": "Have you started any new medicines since your last visit?",
               "type": "boolean"},
              {"linkId": "pain", "text": "Rate any pain you have today (0 = none, 10 = worst)", "type": "integer"},
              {"linkId": "pharmacy", "text": "Preferred pharmacy", "type": "string"}],
    )
    phq2 = resource(
        "Questionnaire", "q-phq2", url=f"{QUESTIONNAIRE_BASE}/phq-2", version="1.0", name="PHQ2",
        title="Patient Health Questionnaire-2", status="active", subjectType=["Patient"], date="2025-01-01",
        code=[{"system": LOINC, "code": "55757-9", "display": "Patient Health Questionnaire 2 item (PHQ-2)"}],
        item=[{"linkId": q, "text": text, "type": "choice", "required": True, "answerOption": [
            {"valueCoding": {"system": LOINC, "code": c, "display": d}} for c, d in
            (("LA6568-5", "Not at all"), ("LA6569-3", "Several days"), ("LA6570-1", "More than half the days"),
             ("LA6571-9", "Nearly every day"))]} for q, text in
            (("44250-9", "Little interest or pleasure in doing things"),
             ("44255-8", "Feeling down, depressed, or hopeless"))],
    )
    return [general, phq2]


class ClinicalRecord:
    """Generates one member's clinical resources from their own random generator."""

    def __init__(self, r: random.Random, m: Member, anchor: date, pcp: Clinician, specialists: list[Clinician],
                 pharmacies: list[str], mail_pharmacy: str, visits: int) -> None:
        self.r, self.m, self.anchor, self.pcp = r, m, anchor, pcp
        self.age = m.age(anchor)
        self.pharmacy = mail_pharmacy if r.random() < 0.3 else r.choice(pharmacies)
        self.patient = ref("Patient", m.key, m.name["text"])
        self.conditions = [c for c in CONDITIONS if self.age >= c[3] and r.random() < c[4] / 100 * (
            2.5 if self.age >= 45 else 1)][:4]
        self.visits = self._visits(visits, specialists)

    def _visits(self, count: int, specialists: list[Clinician]) -> list[Visit]:
        r = self.r
        offsets = sorted({-r.randint(8, 720) for _ in range(count)})
        if r.random() < 0.25:  # a recent visit whose labs are not final yet
            offsets[-1] = -r.randint(1, 5)
        out = []
        for n, offset in enumerate(offsets, start=1):
            clinician = self.pcp if r.random() < 0.75 or not specialists else r.choice(specialists)
            panels: tuple[str, ...] = ()
            if r.random() < 0.7:
                panels = ("cbc", "bmp") if self.age >= 18 else ("cbc",)
                if self.age >= 35 and r.random() < 0.6:
                    panels += ("lipid",)
                if any(c[0] == "44054006" for c in self.conditions):
                    panels += ("a1c",)
            out.append(Visit(n, offset, clinician, r.random() < 0.25, panels, offset > -6))
        return out

    # -- problem list, allergies, medicines, immunizations ----------------------------------------------------

    def problems(self) -> list[Resource]:
        out = []
        for n, (sct, display, icd, _, _, _) in enumerate(self.conditions, start=1):
            onset = -self.r.randint(200, max(201, min(self.age, 15) * 365))
            out.append(resource(
                "Condition", f"cond-{self.m.number:06d}-{n:02d}",
                clinicalStatus=code("http://terminology.hl7.org/CodeSystem/condition-clinical", "active", "Active"),
                verificationStatus=code("http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed",
                                        "Confirmed"),
                category=[code("http://terminology.hl7.org/CodeSystem/condition-category", "problem-list-item",
                               "Problem List Item")],
                code={"coding": [{"system": SNOMED, "code": sct, "display": display},
                                 {"system": ICD10, "code": icd}], "text": display},
                subject=self.patient, onsetDateTime=day(self.anchor, onset), recordedDate=day(self.anchor, onset + 3),
                recorder=ref("Practitioner", self.pcp.key, self.pcp.name),
            ))
        return out

    def allergies(self) -> list[Resource]:
        out = []
        chosen = [a for a in ALLERGIES if self.r.random() < 0.15]
        for n, (sct, display, category, (rsct, rdisplay)) in enumerate(chosen, start=1):
            out.append(resource(
                "AllergyIntolerance", f"allergy-{self.m.number:06d}-{n:02d}",
                clinicalStatus=code("http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "active",
                                    "Active"),
                verificationStatus=code("http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
                                        "confirmed", "Confirmed"),
                type="allergy", category=[category], criticality="high" if rsct == "39579001" else "low",
                code=code(SNOMED, sct, display), patient=self.patient,
                recordedDate=day(self.anchor, -self.r.randint(100, 3000)),
                reaction=[{"manifestation": [code(SNOMED, rsct, rdisplay)],
                           "severity": "severe" if rsct == "39579001" else "mild"}],
            ))
        return out

    def medications(self) -> list[Resource]:
        out = []
        meds = [(n, c[5], c) for n, c in enumerate(self.conditions, start=1)]
        if any(c[0] == "44054006" for c in self.conditions) and self.r.random() < 0.3:
            meds.append((next(n for n, c in enumerate(self.conditions, 1) if c[0] == "44054006"), "semaglutide",
                         next(c for c in self.conditions if c[0] == "44054006")))
        for n, (cond_n, med, _) in enumerate(meds, start=1):
            rx, display, sig, qty, maintenance, prior_auth = MEDICATIONS[med]
            mail = maintenance and self.pharmacy.endswith("mail")
            allowed = 3 if mail else (self.r.choice([0, 1, 2, 3, 5, 11]) if not prior_auth else 5)
            remaining = self.r.randint(0, allowed)
            authored = -self.r.randint(10, 300)
            extension = [{"url": REFILLS_REMAINING, "valueUnsignedInt": remaining}]
            if prior_auth:
                extension.append({"url": PRIOR_AUTH, "valueBoolean": True})
            request = resource(
                "MedicationRequest", f"medrx-{self.m.number:06d}-{n:02d}", extension=extension,
                status="active", intent="order",
                category=[code("http://terminology.hl7.org/CodeSystem/medicationrequest-category", "community",
                               "Community")],
                medicationCodeableConcept=code(RXNORM, rx, display), subject=self.patient,
                authoredOn=day(self.anchor, authored), requester=ref("Practitioner", self.pcp.key, self.pcp.name),
                reasonReference=[ref("Condition", f"cond-{self.m.number:06d}-{cond_n:02d}")],
                insurance=[ref("Coverage", f"cov-{self.m.number:06d}")],
                dosageInstruction=[{"text": sig}],
                dispenseRequest={
                    "validityPeriod": {"start": day(self.anchor, authored), "end": day(self.anchor, authored + 365)},
                    "numberOfRepeatsAllowed": allowed,
                    "quantity": {"value": qty * (3 if mail else 1), "unit": "each", "system": UCUM, "code": "1"},
                    "expectedSupplyDuration": {"value": 90 if mail else 30, "unit": "days", "system": UCUM,
                                               "code": "d"},
                    "performer": ref("Organization", self.pharmacy),
                },
            )
            if prior_auth:
                request["note"] = [{"text": "Prior authorization required by the health plan before dispensing."}]
            out.append(request)
        return out

    def immunizations(self) -> list[Resource]:
        out = []
        doses = [(cvx, display, -self.r.randint(30, max(31, (self.age - low) * 365 + 30)) if self.age > low
                  else -self.r.randint(1, 60)) for cvx, display, low, high in VACCINES if low <= self.age <= high]
        if self.age >= 1:
            doses += [(FLU[0], FLU[1], -(365 * y + self.r.randint(20, 80))) for y in range(min(3, self.age))]
        for n, (cvx, display, offset) in enumerate(doses, start=1):
            out.append(resource(
                "Immunization", f"imm-{self.m.number:06d}-{n:02d}", status="completed",
                vaccineCode=code(CVX, cvx, display), patient=self.patient,
                occurrenceDateTime=day(self.anchor, offset), primarySource=True,
                location=ref("Location", self.pcp.site.location, self.pcp.site.name),
                lotNumber=f"LOT{self.r.randint(10000, 99999)}",
                performer=[{"actor": ref("Practitioner", self.pcp.key, self.pcp.name)}],
            ))
        return out

    # -- visits --------------------------------------------------------------------------------------------------

    def encounter(self, v: Visit) -> Resource:
        c = v.clinician
        start = instant(self.anchor, v.offset, 9 + v.number % 7, 0)
        end = instant(self.anchor, v.offset, 9 + v.number % 7, 30)
        reason = self.conditions[v.number % len(self.conditions)] if self.conditions else None
        enc = resource(
            "Encounter", v.key(self.m, "enc"), status="finished",
            **{"class": {"system": ACT, "code": "VR", "display": "virtual"} if v.virtual else
               {"system": ACT, "code": "AMB", "display": "ambulatory"}},
            type=[code(SNOMED, "390906007", "Follow-up encounter") if reason else
                  code(SNOMED, "185349003", "Encounter for check up")],
            subject=self.patient,
            participant=[{"type": [code("http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "PPRF",
                                        "primary performer")],
                          "individual": ref("Practitioner", c.key, c.name)}],
            period={"start": start, "end": end},
            serviceProvider=ref("Organization", c.site.org, c.site.name),
        )
        if reason:
            enc["reasonCode"] = [code(SNOMED, reason[0], reason[1])]
        if not v.virtual:
            enc["location"] = [{"location": ref("Location", c.site.location, c.site.name)}]
        return enc

    def summary(self, v: Visit) -> Resource:
        c = v.clinician
        lines = [f"Visit summary for {self.m.name['text']}", f"Date: {day(self.anchor, v.offset)}",
                 f"Clinician: {c.name} ({c.specialty[1]})", "Mode: " + ("video visit" if v.virtual else "in person")]
        if self.conditions:
            lines.append("Problems reviewed: " + "; ".join(x[1] for x in self.conditions))
        if v.panels:
            lines.append("Labs ordered: " + ", ".join(PANELS[p][1] for p in v.panels))
        lines.append("Follow up in " + self.r.choice(["3 months", "6 months", "1 year", "2 weeks"]) + ".")
        text = "\n".join(lines) + "\n"
        return resource(
            "DocumentReference", v.key(self.m, "doc"), status="current", docStatus="final",
            type=code(LOINC, "34133-9", "Summary of episode note"),
            category=[code("http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category",
                           "clinical-note", "Clinical Note")],
            subject=self.patient, date=instant(self.anchor, v.offset, 17, 0),
            author=[ref("Practitioner", c.key, c.name)], custodian=ref("Organization", c.site.org, c.site.name),
            description="After-visit summary",
            content=[{"attachment": {"contentType": "text/plain", "language": "en-US",
                                     "data": base64.b64encode(text.encode()).decode(), "title": "Visit summary",
                                     "creation": instant(self.anchor, v.offset, 17, 0)}}],
            context={"encounter": [ref("Encounter", v.key(self.m, "enc"))],
                     "period": {"start": instant(self.anchor, v.offset, 9 + v.number % 7, 0)}},
        )

    def vitals(self, v: Visit) -> list[Resource]:
        if v.virtual:
            return []
        r, base = self.r, self._obs_base(v, "vital-signs", "Vital Signs", "final")
        adult = self.age >= 18
        systolic, diastolic = r.randint(104, 150 if adult else 120), r.randint(62, 95 if adult else 80)
        weight = round(r.uniform(50, 110) if adult else 3.5 + self.age * r.uniform(2.5, 3.5), 1)
        out = [
            {**base("bp"), "code": code(LOINC, "85354-9", "Blood pressure panel with all children optional"),
             "component": [
                 {"code": code(LOINC, "8480-6", "Systolic blood pressure"),
                  "valueQuantity": {"value": systolic, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}},
                 {"code": code(LOINC, "8462-4", "Diastolic blood pressure"),
                  "valueQuantity": {"value": diastolic, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}}]},
            {**base("hr"), "code": code(LOINC, "8867-4", "Heart rate"),
             "valueQuantity": {"value": r.randint(56, 100 if adult else 120), "unit": "beats/minute",
                               "system": UCUM, "code": "/min"}},
            {**base("wt"), "code": code(LOINC, "29463-7", "Body weight"),
             "valueQuantity": {"value": weight, "unit": "kg", "system": UCUM, "code": "kg"}},
        ]
        return out

    def _obs_base(self, v: Visit, category: str, display: str, status: str):
        def make(suffix: str) -> Resource:
            return resource(
                "Observation", f"obs-{self.m.number:06d}-{v.number:02d}-{suffix}", status=status,
                category=[code(OBS_CATEGORY, category, display)], subject=self.patient,
                encounter=ref("Encounter", v.key(self.m, "enc")),
                effectiveDateTime=instant(self.anchor, v.offset, 9 + v.number % 7, 10),
                performer=[ref("Practitioner", v.clinician.key, v.clinician.name)],
            )
        return make

    def labs(self, v: Visit) -> list[Resource]:
        out = []
        status = "preliminary" if v.preliminary else "final"
        base = self._obs_base(v, "laboratory", "Laboratory", status)
        for panel in v.panels:
            loinc, display, analytes = PANELS[panel]
            results = []
            for n, (a_loinc, a_display, unit, low, high, decimals) in enumerate(analytes, start=1):
                span = high - low
                value = _round(self.r.uniform(low - span * 0.15, high + span * 0.15), decimals)
                flag = "H" if value > high else "L" if value < low else "N"
                obs = {**base(f"{panel}{n}"), "code": code(LOINC, a_loinc, a_display),
                       "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
                       "interpretation": [code(INTERPRETATION, flag, {"H": "High", "L": "Low", "N": "Normal"}[flag])],
                       "referenceRange": [{"low": {"value": low, "unit": unit, "system": UCUM, "code": unit},
                                           "high": {"value": high, "unit": unit, "system": UCUM, "code": unit}}]}
                obs["performer"] = [ref("Organization", "org-lab", "Evergreen Reference Laboratory")]
                results.append(obs)
            out += results
            report = resource(
                "DiagnosticReport", f"dr-{self.m.number:06d}-{v.number:02d}-{panel}", status=status,
                category=[code("http://terminology.hl7.org/CodeSystem/v2-0074", "LAB", "Laboratory")],
                code=code(LOINC, loinc, display), subject=self.patient,
                encounter=ref("Encounter", v.key(self.m, "enc")),
                effectiveDateTime=instant(self.anchor, v.offset, 9 + v.number % 7, 10),
                issued=instant(self.anchor, min(v.offset + 1, 0), 8, 0),
                performer=[ref("Organization", "org-lab", "Evergreen Reference Laboratory")],
                resultsInterpreter=[ref("Practitioner", v.clinician.key, v.clinician.name)],
                result=[ref("Observation", o["id"]) for o in results],
            )
            if v.preliminary:
                report["conclusion"] = "Preliminary results; final report to follow."
            out.append(report)
        return out

    # -- messages and questionnaires -----------------------------------------------------------------------------

    def messages(self) -> list[Resource]:
        if not self.visits:
            return []
        last = self.visits[-1]
        c = last.clinician
        clinician, category = ref("Practitioner", c.key, c.name), "http://terminology.hl7.org/CodeSystem/" \
                                                                  "communication-category"
        question_key = f"msg-{self.m.number:06d}-01"
        asked = min(last.offset + 2, 0)
        about = "my lab results" if last.panels else "my visit"
        question = resource(
            "Communication", question_key, status="completed",
            category=[code(category, "notification", "Notification")], subject=self.patient,
            encounter=ref("Encounter", last.key(self.m, "enc")), sender=self.patient, recipient=[clinician],
            sent=instant(self.anchor, asked, 19, 5), received=instant(self.anchor, asked, 19, 5),
            topic={"text": f"Question about {about}"},
            payload=[{"contentString": f"Hello, I have a question about {about}. Is there anything I should do "
                                       "before my next appointment?"}],
        )
        reply = resource(
            "Communication", f"msg-{self.m.number:06d}-02", status="completed",
            category=[code(category, "instruction", "Instruction")], subject=self.patient,
            inResponseTo=[ref("Communication", question_key)], sender=clinician, recipient=[self.patient],
            sent=instant(self.anchor, min(asked + 1, 0), 12, 30), topic={"text": f"Question about {about}"},
            payload=[{"contentString": self.r.choice([
                "Your results look stable. Keep taking your medicines as prescribed and we will recheck at your "
                "next visit.", "Thanks for your message. Please schedule a follow-up visit in the next few weeks.",
                "Nothing to change for now. Let us know if your symptoms get worse."])}],
        )
        return [question, reply]

    def previsit_answers(self) -> list[Resource]:
        if not self.visits:
            return []
        last = self.visits[-1]
        answers = resource(
            "QuestionnaireResponse", f"qr-{self.m.number:06d}-01", questionnaire=f"{QUESTIONNAIRE_BASE}/previsit",
            status="completed", subject=self.patient, encounter=ref("Encounter", last.key(self.m, "enc")),
            authored=instant(self.anchor, last.offset - 1, 20, 0), source=self.patient,
            item=[{"linkId": "reason", "text": "What is the main reason for your visit?",
                   "answer": [{"valueString": self.r.choice(["Follow-up", "Annual check-up", "Medication review",
                                                             "New symptoms"])}]},
                  {"linkId": "new-meds", "text": "Have you started any new medicines since your last visit?",
                   "answer": [{"valueBoolean": self.r.random() < 0.2}]},
                  {"linkId": "pain", "text": "Rate any pain you have today (0 = none, 10 = worst)",
                   "answer": [{"valueInteger": self.r.randint(0, 6)}]}],
        )
        return [answers]

"""Deterministic synthetic FHIR R4 data for the search benchmark: one seeded generator, the same resources every run.

A clinic of `patients` members (`Patient/bench-p0000` ...) and `practitioners` clinicians, one payer Organization,
and per patient: one Coverage, about 5 Encounters (participant -> a Practitioner), Observations (laboratory with
20 LOINC codes and vital signs, all with `valueQuantity`, spread over 2019-2025, subject and encounter references;
`observations` in total), about 3 Claims (created 2019-2025) and about 4 Immunizations. Every resource carries a
fixed logical id (`bench-...`); `transaction()` turns a group of them into a transaction Bundle of POSTs with
`urn:uuid` fullUrls (derived from the logical ids), rewriting references inside the group to those urns and
references to earlier groups to the ids the server assigned.

    from bench.datagen import Dataset, transaction
    ds = Dataset(patients=1000, practitioners=100, observations=200_000)
    assigned: dict[str, str] = {}  # "Patient/bench-p0000" -> "Patient/<server id>", from the responses
    for group in ds.groups(500):
        bundle = transaction(group, assigned, ds.seed)
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta

from seed_data.importer import rewrite_references

VERSION = 2  # bump when the generated resources change: the cached databases are then rebuilt

START = datetime(2019, 1, 1, tzinfo=UTC)
END = datetime(2025, 12, 31, 23, 59, tzinfo=UTC)
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"

# (LOINC code, display, UCUM unit, low, high): the values are drawn uniformly from [low, high].
LABS: tuple[tuple[str, str, str, float, float], ...] = (
    ("2339-0", "Glucose [Mass/volume] in Blood", "mg/dL", 65, 180),
    ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 65, 180),
    ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 4.5, 9.5),
    ("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", 120, 280),
    ("2085-9", "Cholesterol in HDL [Mass/volume] in Serum or Plasma", "mg/dL", 30, 90),
    ("18262-6", "Cholesterol in LDL [Mass/volume] in Serum or Plasma by Direct assay", "mg/dL", 50, 200),
    ("2571-8", "Triglyceride [Mass/volume] in Serum or Plasma", "mg/dL", 50, 400),
    ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.5, 1.6),
    ("3094-0", "Urea nitrogen [Mass/volume] in Serum or Plasma", "mg/dL", 6, 25),
    ("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 133, 147),
    ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 3.3, 5.3),
    ("2075-0", "Chloride [Moles/volume] in Serum or Plasma", "mmol/L", 96, 110),
    ("2028-9", "Carbon dioxide, total [Moles/volume] in Serum or Plasma", "mmol/L", 21, 32),
    ("17861-6", "Calcium [Mass/volume] in Serum or Plasma", "mg/dL", 8.4, 10.4),
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 11, 17.5),
    ("4544-3", "Hematocrit [Volume Fraction] of Blood by Automated count", "%", 34, 52),
    ("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL", 3.5, 11),
    ("777-3", "Platelets [#/volume] in Blood by Automated count", "10*3/uL", 140, 420),
    ("1742-6", "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma", "U/L", 7, 60),
    ("3016-3", "Thyrotropin [Units/volume] in Serum or Plasma", "m[IU]/L", 0.3, 5),
)
VITALS: tuple[tuple[str, str, str, float, float], ...] = (
    ("8867-4", "Heart rate", "/min", 50, 110),
    ("9279-1", "Respiratory rate", "/min", 11, 22),
    ("8310-5", "Body temperature", "Cel", 36.1, 38.2),
    ("29463-7", "Body weight", "kg", 45, 130),
    ("8302-2", "Body height", "cm", 150, 200),
    ("39156-5", "Body mass index (BMI) [Ratio]", "kg/m2", 18, 40),
    ("2708-6", "Oxygen saturation in Arterial blood", "%", 90, 100),
)
LAB_SHARE = 0.75  # share of laboratory Observations; the rest are vital signs
VACCINES = (("08", "Hep B, adolescent or pediatric"), ("140", "Influenza, seasonal, injectable, preservative free"),
            ("133", "Pneumococcal conjugate PCV 13"), ("115", "Tdap"), ("62", "HPV, quadrivalent"),
            ("208", "COVID-19, mRNA, LNP-S, PF, 30 mcg/0.3 mL dose"), ("21", "varicella"), ("03", "MMR"))
SERVICES = (("99213", "Office or other outpatient visit, established patient, 15 minutes", 95.0),
            ("99214", "Office or other outpatient visit, established patient, 25 minutes", 140.0),
            ("80053", "Comprehensive metabolic panel", 38.5), ("85025", "Complete blood count", 21.0),
            ("93000", "Electrocardiogram, routine", 55.0), ("90686", "Influenza vaccine administration", 32.0))
GIVEN = ("Ada", "Ben", "Cleo", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lea", "Milo", "Nia", "Oto",
         "Pia", "Rui", "Sol", "Tea", "Uma", "Vik", "Wen", "Yara", "Zed")
FAMILY = ("Abbott", "Baker", "Castro", "Dunn", "Ellis", "Frost", "Garcia", "Hale", "Ito", "Jensen", "Khan", "Lopez",
          "Moreau", "Novak", "Okafor", "Park", "Quinn", "Rossi", "Silva", "Tanaka", "Umar", "Varga", "Weber", "Young")
ENCOUNTER_TYPES = (("185349003", "Encounter for check up"), ("185345009", "Encounter for symptom"),
                   ("390906007", "Follow-up encounter"), ("50849002", "Emergency room admission"))
SNOMED = "http://snomed.info/sct"


def patient_id(n: int) -> str:
    return f"bench-p{n:04d}"


def practitioner_id(n: int) -> str:
    return f"bench-pr{n:03d}"


def _instant(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _ref(rtype: str, rid: str) -> dict:
    return {"reference": f"{rtype}/{rid}"}


def _concept(system: str, code: str, display: str) -> dict:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


@dataclass(frozen=True)
class Dataset:
    """The parameters that fix the data; `asdict(ds)` is what the benchmark's cache marker records."""

    patients: int = 1000
    practitioners: int = 100
    observations: int = 200_000
    encounters_per_patient: int = 5
    claims_per_patient: int = 3
    immunizations_per_patient: int = 4
    seed: int = 20240501
    version: int = VERSION

    def marker(self) -> dict:
        """The dataset parameters as a JSON-able dict."""
        return asdict(self)

    # -- counts ----------------------------------------------------------------------------------------------
    def observations_of(self, p: int) -> int:
        """Observations of patient `p`: an even share, the remainder spread over the first patients."""
        share, extra = divmod(self.observations, self.patients)
        return share + (1 if p < extra else 0)

    # -- resources -------------------------------------------------------------------------------------------
    def organization(self) -> dict:
        return {"resourceType": "Organization", "id": "bench-payer", "active": True, "name": "Bench Health Plan",
                "type": [_concept("http://terminology.hl7.org/CodeSystem/organization-type", "pay", "Payer")]}

    def practitioner(self, n: int) -> dict:
        rng = random.Random(f"{self.seed}/practitioner/{n}")
        return {"resourceType": "Practitioner", "id": practitioner_id(n), "active": True,
                "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": f"{1000000000 + n * 7919}"}],
                "name": [{"family": rng.choice(FAMILY), "given": [rng.choice(GIVEN)], "prefix": ["Dr."]}],
                "gender": rng.choice(("female", "male"))}

    def patient_resources(self, p: int) -> list[dict]:
        """Patient `p` and everything about them, from one generator seeded by the dataset seed and `p`."""
        rng = random.Random(f"{self.seed}/patient/{p}")
        pid = patient_id(p)
        subject = _ref("Patient", pid)
        birth = date(1935, 1, 1) + timedelta(days=rng.randrange(0, 365 * 70))
        out: list[dict] = [{
            "resourceType": "Patient", "id": pid, "active": True,
            "identifier": [{"system": "urn:oid:2.16.840.1.113883.19.5", "value": f"MRN{p:07d}"}],
            "name": [{"use": "official", "family": rng.choice(FAMILY), "given": [rng.choice(GIVEN)]}],
            "gender": rng.choice(("female", "male")), "birthDate": birth.isoformat(),
            "generalPractitioner": [_ref("Practitioner", practitioner_id(rng.randrange(self.practitioners)))],
        }]
        coverage = f"bench-cov{p:04d}"
        out.append({"resourceType": "Coverage", "id": coverage, "status": "active", "beneficiary": subject,
                    "subscriberId": f"SUB{p:07d}", "payor": [_ref("Organization", "bench-payer")],
                    "relationship": _concept("http://terminology.hl7.org/CodeSystem/subscriber-relationship",
                                             "self", "Self")})
        span = (END - START).total_seconds()

        def moment() -> datetime:
            return START + timedelta(seconds=rng.randrange(int(span) // 60) * 60)

        encounters = []
        n_enc = max(1, self.encounters_per_patient + rng.randint(-2, 2))
        for k in range(n_enc):
            eid = f"bench-e{p:04d}-{k}"
            start = moment()
            kind = rng.choice(ENCOUNTER_TYPES)
            doctors = rng.sample(range(self.practitioners), k=min(self.practitioners, rng.choice((1, 1, 2))))
            encounters.append(eid)
            out.append({
                "resourceType": "Encounter", "id": eid, "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB",
                          "display": "ambulatory"},
                "type": [_concept(SNOMED, kind[0], kind[1])], "subject": subject,
                "participant": [{"individual": _ref("Practitioner", practitioner_id(d))} for d in doctors],
                "period": {"start": _instant(start), "end": _instant(start + timedelta(minutes=rng.choice((15, 30))))},
            })
        for k in range(self.observations_of(p)):
            lab = rng.random() < LAB_SHARE
            code, display, unit, low, high = rng.choice(LABS if lab else VITALS)
            category = ("laboratory", "Laboratory") if lab else ("vital-signs", "Vital Signs")
            out.append({
                "resourceType": "Observation", "id": f"bench-o{p:04d}-{k:04d}", "status": "final",
                "category": [{"coding": [{"system": CATEGORY, "code": category[0], "display": category[1]}]}],
                "code": _concept(LOINC, code, display), "subject": subject,
                "encounter": _ref("Encounter", rng.choice(encounters)), "effectiveDateTime": _instant(moment()),
                "valueQuantity": {"value": round(rng.uniform(low, high), 1), "unit": unit, "system": UCUM,
                                  "code": unit},
            })
        for k in range(max(0, self.claims_per_patient + rng.randint(-1, 1))):
            created = moment()
            service = rng.choice(SERVICES)
            out.append({
                "resourceType": "Claim", "id": f"bench-c{p:04d}-{k}", "status": "active",
                "type": _concept("http://terminology.hl7.org/CodeSystem/claim-type", "professional", "Professional"),
                "use": "claim", "patient": subject, "created": _instant(created),
                "provider": _ref("Practitioner", practitioner_id(rng.randrange(self.practitioners))),
                "priority": _concept("http://terminology.hl7.org/CodeSystem/processpriority", "normal", "Normal"),
                "insurance": [{"sequence": 1, "focal": True, "coverage": _ref("Coverage", coverage)}],
                "item": [{"sequence": 1, "productOrService": _concept("http://www.ama-assn.org/go/cpt", service[0],
                                                                      service[1]),
                          "servicedDate": created.date().isoformat(),
                          "net": {"value": service[2], "currency": "USD"}}],
                "total": {"value": service[2], "currency": "USD"},
            })
        for k in range(max(0, self.immunizations_per_patient + rng.randint(-1, 1))):
            vaccine = rng.choice(VACCINES)
            out.append({
                "resourceType": "Immunization", "id": f"bench-i{p:04d}-{k}", "status": "completed",
                "vaccineCode": _concept("http://hl7.org/fhir/sid/cvx", vaccine[0], vaccine[1]), "patient": subject,
                "occurrenceDateTime": _instant(moment()), "primarySource": True,
            })
        return out

    def sample_observations(self) -> list[str]:
        """Logical ids of one Observation per patient (its first), for reads by id."""
        return [f"bench-o{p:04d}-0000" for p in range(self.patients) if self.observations_of(p)]

    def shared(self) -> list[dict]:
        """The resources every patient's data points at: the payer and the practitioners."""
        return [self.organization(), *(self.practitioner(n) for n in range(self.practitioners))]

    def resources(self) -> Iterator[dict]:
        """Every resource: the shared ones first, then patient after patient."""
        yield from self.shared()
        for p in range(self.patients):
            yield from self.patient_resources(p)

    def groups(self, size: int = 500) -> Iterator[list[dict]]:
        """The shared resources, then whole patients packed into groups of at most about `size` resources.

        A patient's resources stay in one group, so that their references to each other resolve inside one
        transaction; a patient with more than `size` resources gets a group of their own.
        """
        yield self.shared()
        group: list[dict] = []
        for p in range(self.patients):
            mine = self.patient_resources(p)
            if group and len(group) + len(mine) > size:
                yield group
                group = []
            group.extend(mine)
        if group:
            yield group

    def counts(self) -> dict[str, int]:
        """Resources per type (generates them all; a few seconds at 200,000 Observations)."""
        found: dict[str, int] = {}
        for r in self.resources():
            found[r["resourceType"]] = found.get(r["resourceType"], 0) + 1
        return found


def logical(resource: dict) -> str:
    """`Type/id` of a generated resource."""
    return f"{resource['resourceType']}/{resource['id']}"


def urn(key: str, seed: int) -> str:
    """The `urn:uuid` fullUrl of the resource with logical `Type/id` `key` (stable for a seed)."""
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'bench/{seed}/{key}')}"


def transaction(group: list[dict], assigned: dict[str, str], seed: int) -> dict:
    """A transaction Bundle creating `group` (POST, `urn:uuid` fullUrls, logical ids dropped).

    References to resources of the group point at their urns; references to resources created before point at
    the server's ids in `assigned` (`Type/logical id` -> `Type/server id`).
    """
    local = {logical(r): urn(logical(r), seed) for r in group}
    mapping = {**assigned, **local}
    entries = []
    for r in group:
        body = {k: v for k, v in r.items() if k != "id"}
        entries.append({"fullUrl": local[logical(r)], "resource": rewrite_references(body, mapping),
                        "request": {"method": "POST", "url": r["resourceType"]}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}

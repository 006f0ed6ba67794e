"""Made-up people and places: given and family names, streets and cities (no real person or address)."""

from __future__ import annotations

import random
from typing import Any

FEMALE = ["Maria", "Emma", "Olivia", "Ava", "Sofia", "Isabella", "Mia", "Amelia", "Harper", "Chloe", "Grace", "Lily",
          "Nora", "Zoe", "Hannah", "Aaliyah", "Priya", "Mei", "Fatima", "Ana", "Leah", "Ruth", "Elena", "Naomi"]
MALE = ["James", "Liam", "Noah", "Lucas", "Mateo", "Ethan", "Daniel", "Samuel", "David", "Omar", "Wei", "Arjun",
        "Carlos", "Jamal", "Henry", "Owen", "Leo", "Isaac", "Miguel", "Thomas", "Adam", "Kofi", "Jonah", "Ravi"]
FAMILY = ["Garcia", "Smith", "Johnson", "Nguyen", "Patel", "Kim", "Brown", "Martinez", "Lee", "Wilson", "Clark",
          "Lopez", "Walker", "Young", "Hall", "Okafor", "Cohen", "Rossi", "Silva", "Novak", "Haddad", "Larsen",
          "Tanaka", "Murphy", "Rivera", "Chen", "Singh", "Baker", "Adams", "Moreno", "Schmidt", "Dubois"]
STREETS = ["Maple", "Oak", "Cedar", "Elm", "Pine", "Birch", "Willow", "Harbor", "Lake", "River", "Hill", "Park",
           "Meadow", "Sunset", "Mill", "Church", "Spring", "Forest", "Valley", "Union"]
STREET_KINDS = ["Street", "Avenue", "Road", "Lane", "Drive", "Court", "Way"]
# Fictional towns of a fictional state-sized area; ZIP codes in the 99xxx range.
CITIES = [("Riverton", "99101"), ("Lakeside", "99102"), ("Fairview", "99103"), ("Brookfield", "99104"),
          ("Cedar Falls", "99105"), ("Millbrook", "99106"), ("Westport", "99107"), ("Ashford", "99108")]
STATE = "WA"


def person_name(r: random.Random, gender: str, family: str | None = None) -> dict[str, Any]:
    given = r.choice(FEMALE if gender == "female" else MALE)
    family = family or r.choice(FAMILY)
    return {"use": "official", "family": family, "given": [given], "text": f"{given} {family}"}


def address(r: random.Random, use: str = "home") -> dict[str, Any]:
    city, postal = r.choice(CITIES)
    line = f"{r.randint(1, 9899)} {r.choice(STREETS)} {r.choice(STREET_KINDS)}"
    return {"use": use, "type": "both", "line": [line], "city": city, "state": STATE, "postalCode": postal,
            "country": "US"}


def phone(r: random.Random, use: str = "home") -> dict[str, str]:
    # 555-01xx numbers are reserved for fiction.
    return {"system": "phone", "value": f"+1-{r.randint(201, 989)}-555-01{r.randint(0, 99):02d}", "use": use}


def email(name: dict[str, Any], n: int) -> dict[str, str]:
    local = f"{name['given'][0]}.{name['family']}{n}".lower()
    return {"system": "email", "value": f"{local}@example.org", "use": "home"}

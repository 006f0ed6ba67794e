"""A small health system behind a server with FHIR_AUTH=on, for the SMART client, Inferno and authorization-matrix
tests: a mother who is a current proxy of two children, an expired proxy, another patient with data of every kind,
a clinician, a public and a confidential app and a Backend Services client. Built over HTTP with a system token and
through the stores on the same database (users, clients)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from pymongo import MongoClient
from pymongo.database import Database

from fhirserver.resources.proxies import USER_SYSTEM
from tests.servers import ServerProcess, serve
from tests.smart_helpers import App, Backend, bearer, create, new_app, new_backend, new_user

OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
COND_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
# what the two apps may be granted: reads and writes, so that write attempts meet the compartment rules
APP_SCOPE = ("openid fhirUser profile launch launch/patient launch/encounter offline_access online_access "
             "patient/*.cruds user/*.cruds")


@dataclass
class Health:
    """Who and what exists; ids by name in `ids`."""

    server: ServerProcess
    db: Database
    system: Backend
    system_token: str
    app: App  # public
    confidential: App
    ids: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, name: str) -> str:
        return self.ids[name]

    def get(self, path: str, token: str | None, **headers: str) -> requests.Response:
        h = bearer(token) if token else {"Accept": "application/fhir+json"}
        return requests.get(f"{self.server.base}/{path}", headers={**h, **headers}, timeout=30)

    def post(self, path: str, token: str | None, body: Any, content_type: str = "application/fhir+json"
             ) -> requests.Response:
        h = bearer(token) if token else {"Accept": "application/fhir+json"}
        data = body if isinstance(body, (str, bytes)) else json.dumps(body)
        return requests.post(f"{self.server.base}/{path}", data=data,
                             headers={**h, "Content-Type": content_type}, timeout=30)


def _observation(pid: str, category: str, code: str) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final", "subject": {"reference": f"Patient/{pid}"},
            "category": [{"coding": [{"system": OBS_CATEGORY, "code": category}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": code}], "text": category},
            "effectiveDateTime": "2024-01-01"}


def populate(world: Health) -> None:
    """Patients mum, kid1, kid2 (mum is their current proxy), other (oscar) and their data."""
    token, server, ids = world.system_token, world.server, world.ids

    def make(name: str, body: dict[str, Any]) -> str:
        ids[name] = create(server, token, body)
        return ids[name]

    for name, given, family in (("mum", "Mary", "Mum"), ("kid1", "Kim", "One"), ("kid2", "Kai", "Two"),
                                ("other", "Oscar", "Other")):
        make(name, {"resourceType": "Patient", "name": [{"given": [given], "family": family}]})
    make("dr", {"resourceType": "Practitioner", "name": [{"family": "Smith"}]})
    for kid in ("kid1", "kid2"):
        make(f"rp_{kid}", {"resourceType": "RelatedPerson", "active": True,
                           "patient": {"reference": f"Patient/{ids[kid]}"},
                           "identifier": [{"system": USER_SYSTEM, "value": "mum"}]})
    # a proxy that ended: "exproxy" once acted for `other`
    make("rp_expired", {"resourceType": "RelatedPerson", "patient": {"reference": f"Patient/{ids['other']}"},
                        "period": {"start": "2015-01-01", "end": "2020-01-01"},
                        "identifier": [{"system": USER_SYSTEM, "value": "exproxy"}]})
    for who in ("kid1", "other"):
        pid = ids[who]
        make(f"{who}_lab", _observation(pid, "laboratory", "2339-0"))
        make(f"{who}_vital", _observation(pid, "vital-signs", "8867-4"))
        make(f"{who}_social", _observation(pid, "social-history", "72166-2"))
        make(f"{who}_enc", {"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
                            "subject": {"reference": f"Patient/{pid}"},
                            "participant": [{"individual": {"reference": f"Practitioner/{ids['dr']}"}}]})
        for category in ("problem-list-item", "encounter-diagnosis"):
            make(f"{who}_{category}", {
                "resourceType": "Condition", "subject": {"reference": f"Patient/{pid}"},
                "category": [{"coding": [{"system": COND_CATEGORY, "code": category}]}],
                "code": {"text": f"{who} {category}"}})
        make(f"{who}_allergy", {"resourceType": "AllergyIntolerance", "patient": {"reference": f"Patient/{pid}"},
                                "code": {"text": "peanut"}, "clinicalStatus": {"coding": [{
                                    "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                                    "code": "active"}]}})
    new_user(world.db, "mum", f"Patient/{ids['mum']}", display="Mary Mum")
    new_user(world.db, "oscar", f"Patient/{ids['other']}", display="Oscar Other")
    new_user(world.db, "kim", f"Patient/{ids['kid1']}", display="Kim One")
    new_user(world.db, "exproxy", f"RelatedPerson/{ids['rp_expired']}", display="Ex Proxy")
    new_user(world.db, "drsmith", f"Practitioner/{ids['dr']}", display="Dr Smith")


@contextmanager
def health_system(ferretdb: Any, log_dir: Path, db_name: str, **env: str) -> Iterator[Health]:
    """A fresh database `db_name`, a server on it with FHIR_AUTH=on, and the population above."""
    client: MongoClient = MongoClient(ferretdb.uri)
    client.drop_database(db_name)
    db = client[db_name]
    server = serve(ferretdb.uri, log_dir / "server.log", FHIR_AUTH="on", FHIR_DB_NAME=db_name,
                   FHIR_SECRET_KEY=f"{db_name}-secret-key-0123456789abcdef", **env)
    try:
        system = new_backend(server, db, "system/*.cruds", client_id=f"{db_name}-system")
        token = system.fetch("system/*.cruds")["access_token"]
        world = Health(server, db, system, token, new_app(server, db, name="Public App", scope=APP_SCOPE),
                       new_app(server, db, confidential=True, name="Portal", scope=APP_SCOPE))
        populate(world)
        yield world
    finally:
        server.stop()
        client.drop_database(db_name)
        client.close()

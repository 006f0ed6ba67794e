"""EHR launch contexts (SMART App Launch 2.2 "EHR Launch"): the opaque `launch` value an EHR hands to an app together
with `iss`, which the app returns on the authorization request so that the server can bind the EHR's context
(patient, encounter) to the authorization.

[project] rules, where the spec leaves them open ("launch: opaque identifier for this specific launch and any EHR
context associated with it"):
- a launch id is 32 random bytes (base64url), stored only as its SHA-256 in `auth_launches`;
- it lives 5 minutes (`LAUNCH_TTL`) and works once: the authorization request that presents it consumes it by a
  unique insert of "launch:<hash>" into `auth_consumed` (smart_auth.tokens), so of two concurrent uses one wins;
- it may be bound to one client (only that client's authorization request may use it) and to the user who created
  it (only that user may complete the authorization).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pymongo.database import Database

from smart_auth.tokens import TokenStore, new_secret, token_hash

LAUNCHES = "auth_launches"
LAUNCH_TTL = 300.0
# FHIR id: [A-Za-z0-9\-\.]{1,64}
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")

Clock = Callable[[], float]


class LaunchError(ValueError):
    """A launch request names something that cannot be a launch context; `field` names the input at fault."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class LaunchContext:
    """What an EHR bound to one launch."""

    patient: str
    encounter: str | None = None
    need_patient_banner: bool = True
    client_id: str | None = None  # only this client may use the launch (None: any client)
    user_id: str | None = None  # only this user may complete the authorization (None: any user allowed the patient)
    created_by: str = ""  # "user:<username>" or "client:<client_id>", for the record
    exp: float = 0.0

    def to_doc(self) -> dict[str, Any]:
        return {
            "patient": self.patient, "encounter": self.encounter, "need_patient_banner": self.need_patient_banner,
            "client_id": self.client_id, "user_id": self.user_id, "created_by": self.created_by, "exp": self.exp,
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> LaunchContext:
        return cls(
            patient=doc["patient"], encounter=doc.get("encounter"),
            need_patient_banner=bool(doc.get("need_patient_banner", True)), client_id=doc.get("client_id"),
            user_id=doc.get("user_id"), created_by=doc.get("created_by") or "", exp=float(doc.get("exp") or 0.0),
        )


def _fhir_id(value: Any, name: str, prefix: str) -> str:
    """Accept `123` or `Patient/123`; return the id."""
    if not isinstance(value, str):
        raise LaunchError(f"{name} must be a string", name)
    text = value.removeprefix(f"{prefix}/")
    if not FHIR_ID.fullmatch(text):
        raise LaunchError(f"{name} must be a FHIR id or {prefix}/<id>", name)
    return text


class LaunchStore:
    """Launch contexts over one database."""

    def __init__(self, db: Database, tokens: TokenStore, clock: Clock = time.time, ttl: float = LAUNCH_TTL) -> None:
        self.coll = db[LAUNCHES]
        self.tokens = tokens
        self.clock = clock
        self.ttl = ttl

    def create(self, patient: str, encounter: str | None = None, *, need_patient_banner: bool = True,
               client_id: str | None = None, user_id: str | None = None, created_by: str = "") -> tuple[str, float]:
        """A new launch id (in clear) and its expiry time."""
        patient_id = _fhir_id(patient, "patient", "Patient")
        encounter_id = _fhir_id(encounter, "encounter", "Encounter") if encounter is not None else None
        launch = new_secret()
        exp = self.clock() + self.ttl
        context = LaunchContext(patient_id, encounter_id, need_patient_banner, client_id, user_id, created_by, exp)
        self.coll.insert_one({"_id": token_hash(launch), **context.to_doc(), "created": self.clock()})
        return launch, exp

    def consume(self, launch: str, client_id: str) -> LaunchContext | None:
        """The context of an unexpired, unused launch meant for this client, consumed by this call; None otherwise
        (unknown, expired, for another client, or already used)."""
        if not isinstance(launch, str) or not launch or len(launch) > 512:
            return None
        digest = token_hash(launch)
        doc = self.coll.find_one({"_id": digest})
        if doc is None:
            return None
        context = LaunchContext.from_doc(doc)
        if self.clock() >= context.exp or (context.client_id is not None and context.client_id != client_id):
            return None
        if not self.tokens.consume(f"launch:{digest}", context.exp):
            return None
        return context

    def purge(self) -> int:
        """Delete expired launches (no TTL indexes on FerretDB); safe to run concurrently."""
        return self.coll.delete_many({"exp": {"$lt": self.clock()}}).deleted_count


__all__ = ["LAUNCHES", "LAUNCH_TTL", "LaunchContext", "LaunchError", "LaunchStore"]

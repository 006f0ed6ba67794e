"""The audit trail: an AuditEvent for every access to patient data, written in the background.

Requests hand an `AccessRecord` to `AuditTrail.record`, which only queues it; a writer thread commits the queued
events in batches through the store's commit path, so reads do not wait for audit writes. Each AuditEvent names the
patient(s) concerned as `entity.what`, which puts it in their compartment: a patient reads the events about their
own record with an ordinary `patient/AuditEvent.rs` scope. Events queued when a process dies are lost; a full queue
drops events and logs how many.
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from fhirserver.interactions.versions import ensure_indexes, instant, make_version
from fhirserver.store.commit import now
from fhirserver.store.database import Store

log = logging.getLogger("fhirserver.audit")

ACTIONS = {"create": "C", "read": "R", "vread": "R", "search": "E", "history": "R", "update": "U", "patch": "U",
           "delete": "D", "transaction": "E", "batch": "E", "operation": "E"}


@dataclass(frozen=True)
class AccessRecord:
    """One request as the audit trail needs it."""

    interaction: str
    description: str  # method and path, e.g. "GET /fhir/Observation?code=…"
    status: int
    client_id: str
    user_id: str | None
    fhir_user: str | None
    patients: tuple[str, ...]  # "Patient/<id>" concerned
    when: datetime = field(default_factory=now)


def audit_event(record: AccessRecord) -> dict:
    """The AuditEvent resource of one access."""
    outcome = "0" if record.status < 400 else ("4" if record.status < 500 else "8")
    agents = [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                    "code": "IRCP"}]},
               "who": {"display": f"client {record.client_id}"}, "requestor": False}]
    person: dict = {"requestor": True}
    if record.fhir_user:
        person["who"] = {"reference": record.fhir_user}
    if record.user_id:
        person["altId"] = record.user_id
    if len(person) > 1:
        agents.insert(0, person)
    else:
        agents[0]["requestor"] = True
    entities = [{"what": {"reference": p}, "description": "patient whose data was accessed"} for p in record.patients]
    entities.append({"description": record.description[:1000]})
    return {
        "resourceType": "AuditEvent",
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest",
                 "display": "RESTful Operation"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": record.interaction}],
        "action": ACTIONS.get(record.interaction, "E"),
        "recorded": instant(record.when),
        "outcome": outcome,
        "agent": agents,
        "source": {"observer": {"display": "fhirserver"}},
        "entity": entities,
    }


class AuditTrail:
    """A bounded queue of access records and the thread that writes them as AuditEvents."""

    def __init__(self, store: Store, capacity: int = 10000, batch: int = 200, interval: float = 0.5) -> None:
        self.store = store
        self.queue: queue.Queue[AccessRecord] = queue.Queue(capacity)
        self.batch = batch
        self.interval = interval
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def record(self, record: AccessRecord) -> None:
        """Queue one record without waiting."""
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1
            if self.dropped % 100 == 1:
                log.warning("audit queue full; events dropped", extra={"dropped": self.dropped})

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything queued so far is written (tests, shutdown)."""
        self.queue.join()

    def _run(self) -> None:
        while True:
            first = self.queue.get()
            records = [first]
            while len(records) < self.batch:
                try:
                    records.append(self.queue.get(timeout=self.interval if len(records) == 1 else 0.01))
                except queue.Empty:
                    break
            try:
                self._write(records)
            except Exception:
                log.exception("audit events could not be written", extra={"count": len(records)})
            finally:
                for _ in records:
                    self.queue.task_done()

    def _write(self, records: list[AccessRecord]) -> None:
        ensure_indexes(self.store, "AuditEvent")
        versions = [make_version("AuditEvent", str(uuid.uuid4()), 1, now(), audit_event(r), "POST") for r in records]
        self.store.committer.commit(versions)

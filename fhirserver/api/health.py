"""Liveness and readiness probes for load balancers and orchestrators."""

from __future__ import annotations

from fhirserver.api import context, ops
from fhirserver.api.responses import fhir_response


@ops.get("/healthz")
def healthz():
    """The process is alive and serving HTTP; says nothing about the database."""
    return fhir_response({"status": "ok"})


@ops.get("/readyz")
def readyz():
    """The database answers; 503 OperationOutcome (through the error handler) when it does not."""
    context.store().ready()
    return fhir_response({"status": "ready"})

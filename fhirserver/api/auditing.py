"""Recording each FHIR request made with an access token in the audit trail (after the response is built)."""

from __future__ import annotations

import re

from flask import Flask, Response, g, request

from fhirserver.audit import AccessRecord, AuditTrail

_ID = r"[A-Za-z0-9\-.]{1,64}"
_PATIENT_PATH = re.compile(rf"/fhir/Patient/({_ID})(?:/|$)")


def interaction_of(method: str, path: str) -> str:
    """The REST interaction of a request, from its method and path under /fhir."""
    parts = [p for p in path.split("/")[2:] if p]
    if any(p.startswith("$") for p in parts):
        return "operation"
    if "_history" in parts:
        return "vread" if parts[-1] != "_history" else "history"
    if method == "GET":
        return "read" if len(parts) == 2 else "search"
    if method == "POST":
        return "search" if parts[-1:] == ["_search"] else ("transaction" if not parts else "create")
    return {"PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method, "operation")


def patients_concerned(access, path: str, args) -> tuple[str, ...]:
    """The patients whose data the request touched, as far as the token and the request tell."""
    if access.patient:
        return (f"Patient/{access.patient}",)
    allowed = list(access.proxied_patients)
    if access.fhir_user and access.fhir_user.startswith("Patient/") and access.fhir_user not in allowed:
        allowed.insert(0, access.fhir_user)
    named = {f"Patient/{m.group(1)}" for m in [_PATIENT_PATH.match(path)] if m}
    for key in ("patient", "subject"):
        for value in args.getlist(key):
            named.add(value if value.startswith("Patient/") else f"Patient/{value}")
    chosen = [p for p in allowed if p in named]
    return tuple(chosen or allowed)


def install(app: Flask, trail: AuditTrail) -> None:
    """Queue an audit record for every FHIR request that ran with an access token (not with authorization off)."""

    @app.after_request
    def audit(response: Response) -> Response:
        guard = g.get("fhir_guard")
        if request.blueprint != "fhir" or guard is None or guard.open:
            return response
        access = guard.access
        query = f"?{request.query_string.decode('utf-8', 'replace')}" if request.query_string else ""
        trail.record(AccessRecord(
            interaction=interaction_of(request.method, request.path),
            description=f"{request.method} {request.path}{query}",
            status=response.status_code, client_id=access.client_id, user_id=access.user_id,
            fhir_user=access.fhir_user, patients=patients_concerned(access, request.path, request.args)))
        return response

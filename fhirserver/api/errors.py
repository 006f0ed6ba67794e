"""One place that turns every failure into an OperationOutcome with the right status, never a stack trace."""

from __future__ import annotations

import logging

from flask import Flask
from pymongo.errors import ConnectionFailure
from werkzeug.exceptions import HTTPException

from fhirserver.api.responses import fhir_response, operation_outcome
from fhirserver.errors import FHIRError, Issue

log = logging.getLogger("fhirserver.errors")

HTTP_ISSUE_CODES = {
    400: "invalid", 401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported",
    406: "not-supported", 409: "conflict", 410: "deleted", 412: "conflict", 413: "too-costly",
    415: "not-supported", 422: "processing", 429: "throttled", 503: "transient",
}


def _outcome(status: int, issues: list[Issue], headers: dict[str, str] | None = None):
    return fhir_response(operation_outcome([i.to_json() for i in issues]), status, headers)


def register(app: Flask) -> None:
    """Install the error handlers on `app`."""

    @app.errorhandler(FHIRError)
    def fhir_error(exc: FHIRError):
        if exc.status >= 500:
            log.warning("%s: %s", type(exc).__name__, exc)
        headers = dict(exc.headers)
        if exc.status == 503:
            headers.setdefault("Retry-After", "5")
        return _outcome(exc.status, exc.issues, headers)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        status = exc.code or 500
        code = HTTP_ISSUE_CODES.get(status, "exception" if status >= 500 else "invalid")
        headers = {k: v for k, v in exc.get_headers() if k.lower() == "allow"}
        return _outcome(status, [Issue(code, exc.description or exc.name)], headers)

    @app.errorhandler(ConnectionFailure)
    def database_down(exc: ConnectionFailure):
        log.warning("database unreachable: %s", type(exc).__name__)
        return _outcome(503, [Issue("transient", "the database is unreachable; try again shortly")],
                        {"Retry-After": "5"})

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("unhandled error")
        return _outcome(500, [Issue("exception", "internal server error; the incident was logged")])

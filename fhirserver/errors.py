"""Failures every layer may raise; the API turns each into an OperationOutcome with its HTTP status."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Issue:
    """One OperationOutcome.issue: severity, IssueType code, text and the FHIRPath of the element at fault."""

    code: str
    diagnostics: str
    severity: str = "error"
    expression: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        out: dict = {"severity": self.severity, "code": self.code, "diagnostics": self.diagnostics}
        if self.expression:
            out["expression"] = self.expression
        return out


class FHIRError(Exception):
    """An error with an HTTP status and one or more OperationOutcome issues."""

    status = 400
    code = "invalid"

    def __init__(self, diagnostics: str, *, expression: list[str] | None = None,
                 issues: list[Issue] | None = None, status: int | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(diagnostics)
        if status is not None:
            self.status = status
        self.headers = headers or {}
        self.issues = issues or [Issue(self.code, diagnostics, expression=expression or [])]


class BadRequest(FHIRError):
    status, code = 400, "invalid"


class Unauthorized(FHIRError):
    status, code = 401, "login"


class Forbidden(FHIRError):
    status, code = 403, "forbidden"


class NotFound(FHIRError):
    status, code = 404, "not-found"


class MethodNotAllowed(FHIRError):
    status, code = 405, "not-supported"


class NotAcceptable(FHIRError):
    status, code = 406, "not-supported"


class Conflict(FHIRError):
    status, code = 409, "conflict"


class Gone(FHIRError):
    status, code = 410, "deleted"


class PreconditionFailed(FHIRError):
    status, code = 412, "conflict"


class PayloadTooLarge(FHIRError):
    status, code = 413, "too-costly"


class UnsupportedMediaType(FHIRError):
    status, code = 415, "not-supported"


class Unprocessable(FHIRError):
    status, code = 422, "processing"


class TooManyRequests(FHIRError):
    status, code = 429, "throttled"


class StoreUnavailable(FHIRError):
    """The database cannot be reached; the server answers 503 until it returns."""

    status, code = 503, "transient"

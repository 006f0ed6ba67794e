"""What an interaction hands back to the HTTP layer: status, the stored version or a body, and headers."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from fhirserver.store.resources import Stored


def instant(ts: datetime) -> str:
    """FHIR instant text of a UTC time, millisecond precision (meta.lastUpdated, Bundle response.lastModified)."""
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def http_date(ts: datetime) -> str:
    """RFC 7231 date for Last-Modified."""
    return ts.strftime("%a, %d %b %Y %H:%M:%S GMT")


@dataclass
class Result:
    """An interaction's outcome. `stored` is served as its stored text; `body` (a dict) otherwise."""

    status: int
    stored: Stored | None = None
    body: dict | None = None
    location: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def version_headers(self) -> dict[str, str]:
        """ETag and Last-Modified of the stored version, plus any others."""
        out = dict(self.headers)
        if self.stored is not None:
            out["ETag"] = f'W/"{self.stored.version}"'
            out["Last-Modified"] = http_date(self.stored.ts)
        if self.location:
            out["Location"] = self.location
        return out

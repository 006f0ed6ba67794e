"""CORS for browser apps (SMART apps run in the browser and call the FHIR API from their own origin).

Access is by bearer token, never by cookie, so any origin may call: `Access-Control-Allow-Origin: *` without
credentials. Preflight requests (OPTIONS with `Access-Control-Request-Method`) are answered by Flask's automatic
OPTIONS handling, before any token check; this adds the methods and headers a FHIR client sends.
"""

from __future__ import annotations

from flask import Response, request

ALLOW_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
ALLOW_HEADERS = ("Authorization, Accept, Content-Type, Prefer, If-Match, If-None-Match, If-None-Exist, "
                 "If-Modified-Since, X-Request-Id")
EXPOSE_HEADERS = "Location, Content-Location, ETag, Last-Modified, Expires, WWW-Authenticate, X-Request-Id"


def add_cors_headers(response: Response) -> Response:
    """Headers for a cross-origin caller (requests without `Origin` are left alone)."""
    if not request.headers.get("Origin"):
        return response
    response.headers["Access-Control-Allow-Origin"] = "*"
    response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
    if request.method == "OPTIONS":
        response.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
        response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
        response.headers["Access-Control-Max-Age"] = "600"
    return response

"""Authentication of FHIR requests: the bearer token becomes the request's Guard.

With FHIR_AUTH=off (local development) every request runs with the open guard. Otherwise the token is checked
by the authorization server's verifier (`smart_auth`); without a valid token the answer is 401 with
`WWW-Authenticate: Bearer`.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import request

from fhirserver.errors import Unauthorized
from fhirserver.interactions.guard import OPEN, Guard
from smart_auth.access import Access

# token -> Access, or None when the token is unknown, expired, revoked or for another audience
TokenVerifier = Callable[[str], Access | None]


def open_access() -> Guard:
    return OPEN


def bearer(verify: TokenVerifier | None) -> Callable[[], Guard]:
    """The authentication hook: a Guard from `Authorization: Bearer <token>`, 401 otherwise."""

    def authenticate() -> Guard:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("this request needs an access token (Authorization: Bearer …)",
                               headers={"WWW-Authenticate": 'Bearer realm="fhir"'})
        access = verify(token.strip()) if verify else None
        if access is None:
            raise Unauthorized("the access token is not valid (unknown, expired or revoked)",
                               headers={"WWW-Authenticate": 'Bearer realm="fhir", error="invalid_token"'})
        return Guard(access)

    return authenticate

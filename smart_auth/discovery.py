"""SMART discovery: the `[base]/.well-known/smart-configuration` document (SMART App Launch 2.2 `conformance.md`)
and the `rest.security` part of the CapabilityStatement (with the legacy `oauth-uris` extension, which is where
SMART 1.0 clients such as the Python `fhirclient` look for endpoints).

`endpoints` maps short names to URLs: `authorize`, `token`, `register`, `manage`, `introspect`, `revoke`, `jwks`.
Values are absolute URLs, or absolute paths (`/auth/token`) resolved against the origin of `fhir_base`: SMART
requires every endpoint URL in the document to be absolute.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urljoin, urlsplit

# SMART App Launch 2.2 capabilities this server advertises: the union of what ONC (g)(10) demands of a standalone
# patient app and of an EHR practitioner app (checklist §1.1), plus context-ehr-encounter (US Core >= 5) and
# permission-online. `context-banner` / `context-style` are the 2.x names; the SMART 1.0 names
# `context-passthrough-banner` / `context-passthrough-style` are listed too for 1.0 clients (same meaning).
# Not advertised: `context-standalone-encounter` (no encounter picker in standalone launch) and `smart-app-state`
# (deprecated, not implemented); pass `extra_capabilities` once they exist.
CAPABILITIES: tuple[str, ...] = (
    "launch-ehr",
    "launch-standalone",
    "authorize-post",
    "client-public",
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "sso-openid-connect",
    "context-banner",
    "context-style",
    "context-passthrough-banner",
    "context-passthrough-style",
    "context-ehr-patient",
    "context-ehr-encounter",
    "context-standalone-patient",
    "permission-offline",
    "permission-online",
    "permission-patient",
    "permission-user",
    "permission-v1",
    "permission-v2",
)

# Conformance: "the server SHALL support all scopes listed". Resource-level wildcards stand for every type.
SCOPES_SUPPORTED: tuple[str, ...] = (
    "openid", "fhirUser", "profile", "launch", "launch/patient", "launch/encounter", "offline_access",
    "online_access",
    "patient/*.cruds", "patient/*.rs", "user/*.cruds", "user/*.rs", "system/*.cruds", "system/*.rs",
    "patient/*.read", "patient/*.write", "patient/*.*", "user/*.read", "user/*.write", "user/*.*",
    "system/*.read", "system/*.write", "system/*.*",
)

GRANT_TYPES_SUPPORTED: tuple[str, ...] = ("authorization_code", "refresh_token", "client_credentials")
TOKEN_ENDPOINT_AUTH_METHODS: tuple[str, ...] = (
    "private_key_jwt", "client_secret_basic", "client_secret_post", "none",
)
# SMART client-confidential-asymmetric: servers validate RS384 and/or ES384; we advertise exactly what
# smart_auth.assertions accepts by default.
SIGNING_ALGS: tuple[str, ...] = ("RS384", "ES384")

OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
# The sub-extensions the R4 definition of oauth-uris allows (hl7.fhir.r4.core 4.0.1 extension-definitions; HAPI's
# validator refuses any other, e.g. introspect or revoke).
OAUTH_URIS_NAMES = ("authorize", "token", "register", "manage")
SECURITY_SERVICE_SYSTEM = "http://terminology.hl7.org/CodeSystem/restful-security-service"
ENDPOINT_NAMES = ("authorize", "token", "register", "manage", "introspect", "revoke", "jwks")


def _is_absolute(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def resolve_endpoints(fhir_base: str, endpoints: Mapping[str, str]) -> dict[str, str]:
    """Absolute endpoint URLs (SMART: "All endpoint URLs SHALL be absolute"); unknown names are refused."""
    if not _is_absolute(fhir_base):
        raise ValueError(f"fhir_base must be an absolute URL, got {fhir_base!r}")
    unknown = set(endpoints) - set(ENDPOINT_NAMES)
    if unknown:
        raise ValueError(f"unknown endpoint names {sorted(unknown)}; known: {', '.join(ENDPOINT_NAMES)}")
    out: dict[str, str] = {}
    for name, url in endpoints.items():
        if not url:
            continue
        resolved = url if _is_absolute(url) else urljoin(fhir_base, url) if url.startswith("/") else None
        if resolved is None:
            raise ValueError(f"endpoint {name!r} must be an absolute URL or an absolute path, got {url!r}")
        out[name] = resolved
    return out


def smart_configuration(
    issuer: str,
    fhir_base: str,
    endpoints: Mapping[str, str],
    *,
    scopes_supported: Iterable[str] = SCOPES_SUPPORTED,
    extra_capabilities: Iterable[str] = (),
) -> dict[str, Any]:
    """The `.well-known/smart-configuration` JSON (SMART App Launch 2.2 conformance "Metadata"): REQUIRED
    `token_endpoint`, `grant_types_supported`, `capabilities`, `code_challenge_methods_supported` (S256 only:
    "SHALL include S256, SHALL NOT include plain"); `issuer` and `jwks_uri` because we advertise
    `sso-openid-connect`; `authorization_endpoint` because we advertise launch-ehr / launch-standalone; the
    RECOMMENDED and OPTIONAL endpoints we have."""
    if not _is_absolute(issuer):
        raise ValueError(f"issuer must be an absolute URL, got {issuer!r}")
    urls = resolve_endpoints(fhir_base, endpoints)
    for required in ("authorize", "token", "jwks"):
        if required not in urls:
            raise ValueError(f"the {required!r} endpoint is required")
    capabilities = list(dict.fromkeys([*CAPABILITIES, *extra_capabilities]))
    doc: dict[str, Any] = {
        "issuer": issuer,
        "jwks_uri": urls["jwks"],
        "authorization_endpoint": urls["authorize"],
        "token_endpoint": urls["token"],
        "grant_types_supported": list(GRANT_TYPES_SUPPORTED),
        "token_endpoint_auth_methods_supported": list(TOKEN_ENDPOINT_AUTH_METHODS),
        "token_endpoint_auth_signing_alg_values_supported": list(SIGNING_ALGS),
        "scopes_supported": list(scopes_supported),
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "capabilities": capabilities,
    }
    for name, key in (
        ("register", "registration_endpoint"), ("manage", "management_endpoint"),
        ("introspect", "introspection_endpoint"), ("revoke", "revocation_endpoint"),
    ):
        if name in urls:
            doc[key] = urls[name]
    return doc


def capability_security_extension(endpoints: Mapping[str, str], fhir_base: str | None = None) -> dict[str, Any]:
    """`CapabilityStatement.rest.security` for a SMART-protected server: `cors`, the `SMART-on-FHIR` service coding
    (restful-security-service) and the `oauth-uris` extension with one `valueUri` sub-extension per endpoint it
    defines (`OAUTH_URIS_NAMES`; introspection and revocation are in the SMART configuration only). `fhir_base`
    resolves relative paths."""
    if fhir_base is not None:
        urls = resolve_endpoints(fhir_base, endpoints)
    else:
        urls = {k: v for k, v in endpoints.items() if v}
        for name, url in urls.items():
            if not _is_absolute(url):
                raise ValueError(f"endpoint {name!r} must be absolute without fhir_base, got {url!r}")
    sub = [
        {"url": name, "valueUri": urls[name]}
        for name in OAUTH_URIS_NAMES if name in urls
    ]
    security: dict[str, Any] = {
        "cors": True,
        "service": [{
            "coding": [{"system": SECURITY_SERVICE_SYSTEM, "code": "SMART-on-FHIR", "display": "SMART-on-FHIR"}],
            "text": "OAuth2 using SMART-on-FHIR profile (see http://docs.smarthealthit.org)",
        }],
        "description": "SMART App Launch 2.2 and SMART Backend Services; see .well-known/smart-configuration",
    }
    if sub:
        security["extension"] = [{"url": OAUTH_URIS, "extension": sub}]
    return security

"""The SMART authorization server: discovery, authorize + sign-in + patient picker + consent pages, token, refresh,
introspection, revocation, clients, users, launch contexts and Backend Services. It hands the FHIR API an access
decision object (`smart_auth.access.Access`) through `SmartAuth.verify` and knows nothing of FHIR routes.

The FHIR side uses three names: `init_app(app, db, settings, patients_for)` (returns the `SmartAuth` whose `verify`
is the bearer-token verifier), `discovery_document(fhir_base)` for `[base]/.well-known/smart-configuration`, and
`security_endpoints(fhir_base)` for `CapabilityStatement.rest.security`.
"""

from smart_auth.web import SmartAuth, discovery_document, init_app, security_endpoints

__all__ = ["SmartAuth", "discovery_document", "init_app", "security_endpoints"]

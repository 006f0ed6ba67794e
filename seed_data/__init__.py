"""Seed data: a deterministic, realistic health system (generator modules), the demo accounts and SMART clients,
the streaming loader that writes through the server's transaction interaction, and the importer of FHIR Bundles
and NDJSON files. Entry points: `fhirserver seed`, `fhirserver import`, and `fhirserver run` on an empty database.
"""

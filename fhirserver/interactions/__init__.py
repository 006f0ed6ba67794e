"""FHIR interactions: read, vread, create, update, patch, delete, history, search, batch/transaction."""

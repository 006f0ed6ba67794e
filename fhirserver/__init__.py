"""A FHIR R4 health data server: Flask, MongoDB (or FerretDB), SMART on FHIR."""

__version__ = "0.1.0"

"""Small helpers for tests that talk FHIR JSON to the server over HTTP."""

from __future__ import annotations

import requests

FHIR_JSON = "application/fhir+json"


def post(base: str, path: str, body: dict | str | bytes, **headers: str) -> requests.Response:
    data = body if isinstance(body, str | bytes) else None
    kwargs = {"data": data} if data is not None else {"json": body}
    return requests.post(f"{base}/{path}".rstrip("/"), headers={"Content-Type": FHIR_JSON, **headers}, **kwargs)


def put(base: str, path: str, body: dict | str, **headers: str) -> requests.Response:
    kwargs = {"data": body} if isinstance(body, str) else {"json": body}
    return requests.put(f"{base}/{path}", headers={"Content-Type": FHIR_JSON, **headers}, **kwargs)


def patient(family: str = "Smith", **extra) -> dict:
    return {"resourceType": "Patient", "name": [{"family": family, "given": ["Ann"]}], "gender": "female",
            "birthDate": "1980-02-03", **extra}


def observation(subject: str, value: str = "6.30") -> str:
    """An Observation as JSON text, so that the decimal's digits are exactly as written."""
    return ('{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"http://loinc.org",'
            '"code":"2339-0","display":"Glucose"}]},"subject":{"reference":"' + subject + '"},'
            '"effectiveDateTime":"2024-03-05T10:00:00Z","valueQuantity":{"value":' + value +
            ',"unit":"mmol/L","system":"http://unitsofmeasure.org","code":"mmol/L"}}')

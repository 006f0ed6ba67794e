"""Official FHIR R4 definitions used at run time, the CapabilityStatement builder and conformance checks."""

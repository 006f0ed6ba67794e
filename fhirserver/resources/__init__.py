"""Rules of individual resource types: invariants, required bindings, patient-facing visibility, side effects."""

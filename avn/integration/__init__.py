"""Into the hospital's own systems: coded concepts, DICOM SR and annotated copies, FHIR (docs/integration.md)."""

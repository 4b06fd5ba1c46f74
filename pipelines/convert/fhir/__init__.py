"""FHIR R4 inputs: NDJSON (bulk export), Bundles and single-resource JSON files."""

"""FHIR Bulk Data export client: SMART Backend Services auth, kick-off, polling, resumable downloads."""

"""Back-load: plan, send and reconcile FHIR R4 writes into Millennium or a generic server (see runner.py)."""

"""Data quality: Great Expectations suites over the views, structural FHIR checks, gates, reconciliation."""

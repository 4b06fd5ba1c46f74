"""CDS Hooks 2.0 service: migrated-data review cards at chart open and order entry (`ehrlift cds-hooks`)."""

"""Segment mappers: each turns one HL7 v2 segment (with its context) into FHIR R4 resources."""

"""Back-load over HL7 v2: warehouse resources built into ORU/VXU/MDM/ADT messages and sent over MLLP."""

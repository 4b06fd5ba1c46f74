"""HL7 v2: reading files into units, tokenizing messages, validating and acknowledging them."""

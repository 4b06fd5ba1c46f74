"""C-CDA R1.1 and R2.1 documents: secure parsing, header and section mappers, entry accounting."""

"""Guards every reader keeps against hostile or broken input: documented bounds and bounded parsers."""

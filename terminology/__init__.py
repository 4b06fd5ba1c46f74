"""Code-system registry and normalization."""

"""Property and mutation tests of every reader, run in a memory- and CPU-limited subprocess."""

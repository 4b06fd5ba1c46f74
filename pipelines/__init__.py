"""ehrlift stage functions: land, convert, load and the CLI that runs them."""

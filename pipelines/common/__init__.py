"""Shared stage framework: run config, coded errors, warehouse access, ledger and the unit-of-work base."""

"""The command line's two consoles and its warehouse argument, shared by every subcommand's module."""

from __future__ import annotations

import os
from pathlib import Path

from rich.console import Console

from pipelines.common.config import DEFAULT_DATA_DIR

# Markup off: paths, server diagnostics and file names may hold "[...]", which must print as written.
out = Console(highlight=False, markup=False)
err = Console(stderr=True, highlight=False, markup=False)


def warehouse_arg(path: Path | None) -> Path:
    """The --warehouse given, else $EHRLIFT_WAREHOUSE, else the default: absolute."""
    if path is None:
        path = Path(os.environ.get("EHRLIFT_WAREHOUSE") or DEFAULT_DATA_DIR / "warehouse.duckdb")
    return path.absolute()  # resolved once, at the edge (see RunConfig)

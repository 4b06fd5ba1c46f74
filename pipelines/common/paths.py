"""Where ehrlift's shipped data (schemas, expectations) lives, in a checkout and in an installed wheel."""

from __future__ import annotations

from functools import cache
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]


@cache
def shipped(name: str) -> Path:
    """The folder `name` (schemas, expectations): from the wheel's copy, else from the source checkout."""
    for candidate in (_PACKAGE / "_shipped" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"ehrlift's {name}/ folder is missing from this installation")

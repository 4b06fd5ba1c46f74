"""The compliance report: a self-contained HTML page of aggregates and record pointers (no PHI)."""

from __future__ import annotations

from typing import Any

__all__ = ["ReportFiles", "canonical_json", "write_report"]


def __getattr__(name: str) -> Any:
    # Lazy: the CLI registers `report sign` on every start, and need not import Jinja for it.
    if name in __all__:
        from pipelines.report import render

        return getattr(render, name)
    raise AttributeError(name)

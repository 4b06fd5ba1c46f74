"""Coverage: the share of codings that are standard after normalization, per system and per data source.

Computed on every resource of the warehouse, before any filter (reference-only stand-ins and resources
of earlier runs included): an INNER JOIN to a vocabulary or a view's WHERE clause would hide exactly the
codings that are not standard.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from pipelines.normalize import build_normalizer
from terminology.scan import scan


@dataclass
class Share:
    total: int = 0
    standard: int = 0
    by_method: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    @property
    def ratio(self) -> float:
        return self.standard / self.total if self.total else 0.0


@dataclass
class Coverage:
    resources: int
    codings: Share
    units: Share
    by_system: dict[str, Share]
    by_source: dict[str, Share]
    unmapped_reasons: dict[str, int]


def coverage(con: duckdb.DuckDBPyConnection, warehouse: Path | None = None) -> Coverage:
    normalizer, _ = build_normalizer(con, warehouse, sync=False)
    resources = scan(con, normalizer)
    codings, units = Share(), Share()
    by_system: dict[str, Share] = defaultdict(Share)
    by_source: dict[str, Share] = defaultdict(Share)
    reasons: dict[str, int] = defaultdict(int)
    for (did, source), n in normalizer.counts.items():
        d = normalizer.decisions[did]
        shares = (
            [units]
            if d.kind == "unit"
            else [
                codings,
                by_system[_system_label(normalizer, d.source_system)],
                by_source[source],
            ]
        )
        for share in shares:
            share.total += n
            share.standard += n if d.standard else 0
            share.by_method[d.method] += n
        if not d.standard and d.kind == "coding":
            reasons[(d.reason or "").split(":")[0]] += n
    return Coverage(
        resources,
        codings,
        units,
        dict(sorted(by_system.items())),
        dict(sorted(by_source.items())),
        dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
    )


def _system_label(normalizer, raw: str | None) -> str:
    if not raw:
        return "(no system)"
    return normalizer.registry.canonical(raw) or raw

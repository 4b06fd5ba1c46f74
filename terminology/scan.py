"""One pass over every resource of the warehouse, unfiltered: what coverage and suggestions count."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import duckdb

from pipelines.common.warehouse import resource_tables
from pipelines.normalize import chunks, loads_exact
from terminology.normalize import Normalizer


def scan(
    con: duckdb.DuckDBPyConnection,
    normalizer: Normalizer,
    before: Callable[[str, dict[str, Any], str], None] | None = None,
) -> int:
    """Decide every Coding of every resource of every fhir table (reference-only stand-ins included),
    without writing; the normalizer's counts then hold the whole warehouse. Returns the resources seen."""
    seen = 0
    for table in resource_tables(con):
        for rows in chunks(con, f'fhir."{table}"', "TRUE", []):
            for _, text, source in rows:
                resource = loads_exact(text)
                if before is not None:
                    before(table, resource, source)
                normalizer.normalize(resource, source)
                seen += 1
    return seen


def codings(cc: Any) -> Iterator[dict[str, Any]]:
    if isinstance(cc, dict):
        for c in cc.get("coding") or ():
            if isinstance(c, dict):
                yield c

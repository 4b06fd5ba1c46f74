"""The normalize stage: every Coding of the run's resources made standard or visibly unmapped, with its audit.

Resources are rewritten in place in fhir.* in chunks (bounded memory, one commit per chunk); a re-run
strips what normalization added and derives it again, so it is idempotent. Each distinct decision is one
ops.mapping_log row per run and data source, with how often it was applied.
"""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import orjson

from pipelines.common.config import RunConfig, new_run_id
from pipelines.common.progress import StageBar, stage_bar
from pipelines.common.warehouse import open_warehouse, resource_tables, transaction
from pipelines.resume.marks import mark_stage, pending_runs, run_filter
from terminology import core
from terminology.crosswalks import CrosswalkRow, load_crosswalks
from terminology.normalize import Normalizer
from terminology.terms import WarehouseTerminology

log = logging.getLogger(__name__)
CHUNK = 5_000
# A system or code member whose string value has no escapes, as regexp_extract_all finds it in the text.
_MEMBERS = r'"(?:system|code)"\s*:\s*"[^"\\]*"'

_LOG_COLUMNS = (
    "run_id, source_system, source_code, source_display, target_system, target_code, target_display, method, "
    "reason, terminology_version, crosswalk_version, occurrences, decision_id, data_source, kind"
)


def normalize_stage(config: RunConfig) -> dict[str, Any]:
    """Normalize the resources this run (and any killed run before it) wrote, and re-normalize older ones
    whose crosswalk entry changed."""
    with open_warehouse(config.warehouse) as con:
        load_default_terminology(con)
        normalizer, changed = build_normalizer(con, config.warehouse)
        counts = {"resources": 0, "rewritten": 0, "renormalized": 0}
        if changed:
            # A reviewed crosswalk version changes decisions for resources earlier runs wrote.
            older = _normalize_where(con, normalizer, "run_id <> ?", [config.run_id], _holding(changed))
            counts["renormalized"] = older["rewritten"]
        # This run's resources and those of any killed or failed run that no normalize stage finished
        # (ops.stage_marks): their decisions are logged under this run, so the audit stays complete.
        runs = pending_runs(con, "normalize", config.run_id)
        where, params = run_filter(runs)
        own = _normalize_where(con, normalizer, where, params)
        counts["resources"] += own["resources"]
        counts["rewritten"] += own["rewritten"]
        counts["resumed_runs"] = len(runs) - 1
        with transaction(con):
            write_mapping_log(con, config.run_id, normalizer)
            mark_stage(con, "normalize", runs, config.run_id)
    counts["decisions"] = len(normalizer.decisions)
    counts["crosswalk_changes"] = len(changed)
    log.info(
        "run %s normalized %d resources (%d decisions)",
        config.run_id,
        counts["resources"],
        counts["decisions"],
    )
    return counts


def renormalize(
    con: duckdb.DuckDBPyConnection,
    codes: Iterable[tuple[str, str]],
    *,
    run_id: str | None = None,
    warehouse: Path | None = None,
) -> dict[str, Any]:
    """Re-normalize every warehouse resource holding one of these (system, code) codings (after a new
    release changed their status); writes the new decisions to ops.mapping_log under run_id."""
    wanted = {(s, c) for s, c in codes}
    run_id = run_id or new_run_id()
    if not wanted:
        return {"run_id": run_id, "resources": 0, "rewritten": 0, "decisions": 0}
    normalizer, _ = build_normalizer(con, warehouse, sync=False)
    counts = _normalize_where(con, normalizer, "TRUE", [], _holding(wanted, normalizer.registry))
    with transaction(con):
        write_mapping_log(con, run_id, normalizer, replace=False)
    return {"run_id": run_id, **counts, "decisions": len(normalizer.decisions)}


def normalize_all(con: duckdb.DuckDBPyConnection, run_id: str, warehouse: Path | None) -> dict[str, Any]:
    """Every resource of the warehouse, with the current terminology and crosswalks (`ehrlift normalize`);
    the run's mapping log then covers the whole warehouse. A second call rewrites nothing."""
    load_default_terminology(con)
    normalizer, changed = build_normalizer(con, warehouse)
    counts = _normalize_where(con, normalizer, "TRUE", [])
    with transaction(con):
        write_mapping_log(con, run_id, normalizer)
    return {**counts, "decisions": len(normalizer.decisions), "crosswalk_changes": len(changed)}


def load_default_terminology(con: duckdb.DuckDBPyConnection) -> bool:
    """The embedded default terminology, for systems no user release covers (offline, no download)."""
    return core.ensure_default(con)


def build_normalizer(
    con: duckdb.DuckDBPyConnection, warehouse: Path | None, *, sync: bool = True
) -> tuple[Normalizer, set[tuple[str, str]]]:
    """A normalizer over the warehouse's terminology and the current crosswalks; with sync, also the
    source codes whose crosswalk entry changed since the crosswalks were last copied into the warehouse."""
    rows = load_crosswalks(warehouse)
    terms = WarehouseTerminology(con)
    terms.add_crosswalks(rows)
    changed = _sync_crosswalks(con, rows) if sync and "maps" in terms.has else set()
    return Normalizer(terms), changed


def _sync_crosswalks(con: duckdb.DuckDBPyConnection, rows: list[CrosswalkRow]) -> set[tuple[str, str]]:
    """Mirror the effective crosswalk rows into terminology.maps; returns the source codes that changed."""
    before = set(
        con.execute(
            "SELECT source_system, source_code, target_system, target_code, map, map_version "
            "FROM terminology.maps WHERE map LIKE 'crosswalk:%'"
        ).fetchall()
    )
    after = {
        (
            r.source_system,
            r.source_code,
            r.target_system,
            r.target_code,
            f"crosswalk:{r.file.stem}",
            r.version,
        )
        for r in rows
    }
    if before == after:
        return set()
    with transaction(con):
        con.execute("DELETE FROM terminology.maps WHERE map LIKE 'crosswalk:%'")
        con.executemany(
            "INSERT INTO terminology.maps (map, map_version, source_system, source_code, source_display, "
            "target_system, target_code, target_display, equivalence, author, reviewer, review_date) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?, ?)",
            [
                (
                    f"crosswalk:{r.file.stem}",
                    r.version,
                    r.source_system,
                    r.source_code,
                    r.source_display or None,
                    r.target_system,
                    r.target_code,
                    r.equivalence,
                    r.author or None,
                    r.reviewer or None,
                    r.review_date or None,
                )
                for r in rows
            ],
        )
    return {(s, c) for s, c, *_ in before ^ after}


def _holding(
    codes: set[tuple[str, str]], registry: core.Registry | None = None
) -> Callable[[dict[str, Any]], bool]:
    """A filter: does a resource hold a coding with one of these (system, code) pairs?"""
    reg = registry or core.registry()
    by_code: dict[str, set[str]] = {}
    for s, c in codes:
        by_code.setdefault(c, set()).add(s)

    def match(node: Any) -> bool:
        if isinstance(node, dict):
            code = node.get("code")
            if isinstance(code, str) and code in by_code:
                system = node.get("system")
                if isinstance(system, str) and (
                    system in by_code[code] or (reg.canonical(system) or "") in by_code[code]
                ):
                    return True
            return any(match(v) for v in node.values() if isinstance(v, dict | list))
        if isinstance(node, list):
            return any(match(v) for v in node if isinstance(v, dict | list))
        return False

    match.codes = sorted(by_code)  # type: ignore[attr-defined]
    return match


def _normalize_where(
    con: duckdb.DuckDBPyConnection,
    normalizer: Normalizer,
    where: str,
    params: list[Any],
    keep: Callable[[dict[str, Any]], bool] | None = None,
) -> dict[str, int]:
    """Normalize the rows of every fhir table matching `where`, rewriting those that change, per chunk."""
    counts = {"resources": 0, "rewritten": 0}
    codes = getattr(keep, "codes", None)
    tables = resource_tables(con)
    # The bar follows the run's own resources; re-normalizing older rows for a changed crosswalk is brief.
    bar = stage_bar("normalize", "resources") if keep is None else StageBar()
    if bar.watched:  # counted only for an operator watching the bar
        bar.total(sum(_count(con, f'fhir."{t}"', where, params) for t in tables))
    prefilter = ""
    if codes is not None:
        # A cheap text pre-filter before parsing: only rows mentioning one of the codes.
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _norm_codes AS SELECT unnest(?::VARCHAR[]) AS needle",
            [[orjson.dumps(c).decode() for c in codes]],
        )
        prefilter = " AND EXISTS (SELECT 1 FROM _norm_codes n WHERE contains(t.resource::VARCHAR, n.needle))"
    _prefetch(con, normalizer, [f'fhir."{t}"' for t in tables], where + prefilter, params)
    for table in tables:
        quoted = f'fhir."{table}"'
        for chunk in _without_cycle_collection(chunks(con, quoted, where + prefilter, params)):
            bar.advance(len(chunk))
            updates_id, updates_json = [], []
            for rid, text, source in chunk:
                resource, exact = _parse(text)
                if keep is not None and not keep(resource):
                    continue
                counts["resources"] += 1
                before = normalizer.changes
                normalizer.normalize(resource, source)
                if normalizer.changes == before:
                    continue  # nothing stripped or added: the stored text stands as it is
                baseline = exact
                if baseline is None:
                    # Rewritten text keeps every number as written: when the fast parse does not give the
                    # stored bytes back, the resource is normalized again from an exact parse (uncounted).
                    baseline = text.encode()
                    if orjson.dumps(orjson.loads(baseline)) != baseline:
                        exact_doc, baseline = _parse_verbatim(text)
                        resource = normalizer.reapply(exact_doc, source)
                out = orjson.dumps(resource)
                # Only a resource whose codings changed is rewritten: the others keep their stored text
                # byte for byte, however its source spelled it (escaped slashes, spacing, exponents).
                if out != baseline:
                    updates_id.append(rid)
                    updates_json.append(out.decode())
            if updates_id:
                counts["rewritten"] += len(updates_id)
                with transaction(con):
                    con.execute(
                        f"UPDATE {quoted} AS t SET resource = u.resource::JSON FROM (SELECT "
                        "unnest(?::BIGINT[]) AS rid, unnest(?::VARCHAR[]) AS resource) u "
                        "WHERE t.rowid = u.rid",
                        [updates_id, updates_json],
                    )
                    # Rows of earlier runs may be among them: their views are rebuilt by the next load.
                    con.execute("INSERT OR IGNORE INTO ops.views_stale VALUES (?)", [table])
    return counts


def _prefetch(
    con: duckdb.DuckDBPyConnection, normalizer: Normalizer, tables: list[str], where: str, params: list[Any]
) -> None:
    """The terminology rows the tables' rows can ask for, fetched before the walk in one query per
    terminology table: the distinct systems and codes written in the rows' text (DuckDB scans it on
    every core). A code spelled with a JSON escape is not seen here and is fetched when decided."""
    if not tables:
        return
    texts = " UNION ALL ".join(
        f"SELECT unnest(regexp_extract_all(t.resource::VARCHAR, ?)) AS v FROM {quoted} t WHERE ({where})"
        for quoted in tables
    )
    (matches,) = con.execute(
        f"SELECT list(DISTINCT v) FROM ({texts})", [x for _ in tables for x in (_MEMBERS, *params)]
    ).fetchone()
    found: dict[str, set[str]] = {"system": set(), "code": set()}
    for match in matches or ():
        ((member, value),) = orjson.loads("{" + match + "}").items()
        found[member].add(value)
    normalizer.prefetch_sets(found["system"], found["code"])


def _parse(text: str) -> tuple[Any, bytes | None]:
    """(resource, None) from the fast parser; (resource, its exact serialization) where only the exact
    parser reads it (an integer beyond 64 bits)."""
    try:
        return orjson.loads(text), None
    except orjson.JSONDecodeError:
        return parse_exact(text)


def _count(con: duckdb.DuckDBPyConnection, quoted: str, where: str, params: list[Any]) -> int:
    row = con.execute(f"SELECT count(*) FROM {quoted} t WHERE ({where})", params).fetchone()
    return row[0] if row else 0


def _without_cycle_collection(items: Iterator[Any]) -> Iterator[Any]:
    """Parsed JSON holds no reference cycles, yet thousands of fresh dicts per chunk trigger Python's cycle
    collector over and over; it is paused while a chunk is processed (reference counting still frees)."""
    for item in items:
        gc.disable()
        try:
            yield item
        finally:
            gc.enable()


def parse_exact(text: str) -> tuple[Any, bytes]:
    """(resource, its compact serialization before normalization), every number kept exactly as written
    (FHIR decimals keep their precision: 7.10 stays 7.10). ehrlift stores compact JSON, so when a fast
    parse serializes back to the same bytes nothing was lost; otherwise the text is parsed again with each
    number kept verbatim."""
    raw = text.encode()
    try:
        doc = orjson.loads(raw)
        if orjson.dumps(doc) == raw:
            return doc, raw
    except orjson.JSONDecodeError:
        pass  # e.g. an integer beyond 64 bits: the exact parser keeps it
    return _parse_verbatim(text)


def _parse_verbatim(text: str) -> tuple[Any, bytes]:
    doc = json.loads(text, parse_float=orjson.Fragment, parse_int=orjson.Fragment)
    return doc, orjson.dumps(doc)


def loads_exact(text: str) -> Any:
    return parse_exact(text)[0]


def chunks(
    con: duckdb.DuckDBPyConnection, table: str, where: str, params: list[Any]
) -> Iterator[list[tuple[int, str, str]]]:
    """(rowid, resource JSON, data source) of the matching rows, a rowid range at a time: each chunk is a
    range scan, not a full one, so memory and time per chunk stay flat however large the table."""
    lo, hi = con.execute(
        f"SELECT min(t.rowid), max(t.rowid) FROM {table} t WHERE ({where})", params
    ).fetchone()
    if lo is None:
        return
    for start in range(lo, hi + 1, CHUNK):
        rows = con.execute(
            f"SELECT t.rowid, t.resource::VARCHAR, t.source_system FROM {table} t "
            f"WHERE ({where}) AND t.rowid >= ? AND t.rowid < ? ORDER BY t.rowid",
            [*params, start, start + CHUNK],
        ).fetchall()
        if rows:
            yield rows


def write_mapping_log(
    con: duckdb.DuckDBPyConnection, run_id: str, normalizer: Normalizer, *, replace: bool = True
) -> int:
    """One row per distinct decision and data source; a retried stage replaces its run's rows."""
    if replace:
        con.execute("DELETE FROM ops.mapping_log WHERE run_id = ?", [run_id])
    rows = [
        (
            run_id,
            d.source_system,
            d.source_code,
            d.source_display,
            d.target_system,
            d.target_code,
            d.target_display,
            d.method,
            d.reason,
            d.terminology_version,
            d.crosswalk_version,
            n,
            d.decision_id,
            src,
            d.kind,
        )
        for d, src, n in normalizer.log_rows()
    ]
    if rows:
        # One statement over column lists: executemany inserts row by row (seconds for a few thousand).
        columns = [list(c) for c in zip(*rows, strict=True)]
        types = ["VARCHAR"] * 11 + ["BIGINT"] + ["VARCHAR"] * 3
        unnest = ", ".join(f"unnest(?::{t}[])" for t in types)
        con.execute(f"INSERT INTO ops.mapping_log ({_LOG_COLUMNS}) SELECT {unnest}", columns)
    return len(rows)

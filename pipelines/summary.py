"""The run summary: units in, converted, quarantined, skipped per format, and resources per type."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from pipelines.common.stages import stage_times


@dataclass
class FormatCounts:
    files: int = 0
    units: int = 0
    converted: int = 0
    quarantined: int = 0
    skipped: int = 0


@dataclass
class RunSummary:
    run_id: str
    status: str
    warehouse: str
    files_given: int
    files_already_processed: int
    by_format: dict[str, FormatCounts] = field(default_factory=dict)
    resources_by_type: dict[str, int] = field(default_factory=dict)
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    skip_reasons: dict[str, int] = field(default_factory=dict)
    warehouse_resources: dict[str, int] = field(default_factory=dict)
    views: dict[str, int] = field(default_factory=dict)
    # container (message or document type) -> item (segment, entry templateId) -> count not consumed
    unconsumed: dict[str, dict[str, int]] = field(default_factory=dict)
    # data-quality gate: expectations evaluated, failed critical and warning expectation names
    validation: dict[str, Any] = field(default_factory=dict)
    # stage -> seconds, cpu_seconds, peak_rss_mb (ops.run_stages)
    stages: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def totals(self) -> FormatCounts:
        out = FormatCounts()
        for c in self.by_format.values():
            for k, v in asdict(c).items():
                setattr(out, k, getattr(out, k) + v)
        return out

    @property
    def reconciles(self) -> bool:
        """Units in = converted + quarantined + skipped, for every format."""
        return all(c.units == c.converted + c.quarantined + c.skipped for c in self.by_format.values())

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["totals"] = asdict(self.totals)
        out["reconciles"] = self.reconciles
        return out


def _names(con: duckdb.DuckDBPyConnection, schema: str) -> list[str]:
    rows = con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = ? ORDER BY 1", [schema]
    ).fetchall()
    return [r[0] for r in rows]


def _counts(
    con: duckdb.DuckDBPyConnection, schema: str, tables: list[str], extra: str, params: list
) -> list[tuple[str, int, int]]:
    """(table, rows, `extra`) for each table, in the tables' order: one statement, not one per table."""
    if not tables:
        return []
    sql = " UNION ALL ".join(
        f'SELECT {i} AS i, ? AS t, count(*), {extra} FROM {schema}."{t}"' for i, t in enumerate(tables)
    )
    rows = con.execute(
        f"SELECT t, * EXCLUDE (i, t) FROM ({sql}) ORDER BY i", [v for t in tables for v in (t, *params)]
    ).fetchall()
    return [(t, int(n), int(x)) for t, n, x in rows]


def build_summary(con: duckdb.DuckDBPyConnection, run_id: str) -> RunSummary:
    row = con.execute(
        "SELECT status, config->>'warehouse' FROM ops.runs WHERE run_id = ?", [run_id]
    ).fetchone()
    status, warehouse = row if row else ("unknown", "")
    files = con.execute(
        """
        SELECT count(*), count(*) FILTER (WHERE status = 'already_processed')
        FROM ops.run_files WHERE run_id = ?""",
        [run_id],
    ).fetchone() or (0, 0)
    summary = RunSummary(run_id, status, warehouse, files[0], files[1])
    for fmt, nfiles, units, conv, quar, skip in con.execute(
        """
        SELECT f.format, count(DISTINCT l.file_sha256), count(*),
               count(*) FILTER (WHERE outcome = 'converted'),
               count(*) FILTER (WHERE outcome = 'quarantined'),
               count(*) FILTER (WHERE outcome = 'skipped')
        FROM ops.ledger l JOIN ops.files f USING (file_sha256)
        WHERE l.run_id = ? GROUP BY 1 ORDER BY 1""",
        [run_id],
    ).fetchall():
        summary.by_format[fmt] = FormatCounts(nfiles, units, conv, quar, skip)
    for outcome, target in (("quarantined", summary.quarantine_reasons), ("skipped", summary.skip_reasons)):
        for reason, n in con.execute(
            "SELECT reason, count(*) FROM ops.ledger WHERE run_id = ? AND outcome = ? "
            "GROUP BY 1 ORDER BY 2 DESC, 1",
            [run_id, outcome],
        ).fetchall():
            target[reason] = n
    fhir = _names(con, "fhir")
    for table, total, this_run in _counts(con, "fhir", fhir, "count(*) FILTER (WHERE run_id = ?)", [run_id]):
        summary.warehouse_resources[table] = total
        if this_run:
            summary.resources_by_type[table] = this_run
    for container, item, n in con.execute(
        "SELECT coalesce(container, '?'), item, sum(count) FROM ops.unconsumed WHERE run_id = ? "
        "GROUP BY 1, 2 ORDER BY 1, 3 DESC, 2",
        [run_id],
    ).fetchall():
        summary.unconsumed.setdefault(container, {})[item] = int(n)
    for table, n, _ in _counts(con, "views", _names(con, "views"), "0", []):
        summary.views[table] = n
    summary.stages = stage_times(con, run_id)
    failed: dict[str, list[str]] = {"critical": [], "warning": []}
    evaluated = 0
    for name, severity, success in con.execute(
        "SELECT expectation, severity, success FROM ops.validation_results WHERE run_id = ? ORDER BY 1",
        [run_id],
    ).fetchall():
        evaluated += 1
        if not success:
            failed[severity].append(name)
    if evaluated:
        # A failed gate an operator overrode (with a recorded reason) does not block the run.
        override = con.execute("SELECT reason FROM ops.gate_overrides WHERE run_id = ?", [run_id]).fetchall()
        summary.validation = {
            "evaluated": evaluated,
            "blocked": bool(failed["critical"]) and not override,
            "critical_failed": failed["critical"],
            "warnings_failed": failed["warning"],
        }
        if override:
            summary.validation["gate_override"] = override[0][0]
    return summary


def list_runs(con: duckdb.DuckDBPyConnection, limit: int) -> list[dict[str, Any]]:
    """The latest runs, newest first: id, UTC times, status, exit status, ledger units and resources."""
    rows = con.execute(
        """
        SELECT r.run_id,
               strftime(r.started_at AT TIME ZONE 'UTC', '%Y-%m-%d %H:%M:%S'),
               strftime(r.finished_at AT TIME ZONE 'UTC', '%Y-%m-%d %H:%M:%S'),
               r.status, r.exit_code,
               count(DISTINCT l.file_sha256), count(l.unit_position),
               count(*) FILTER (WHERE l.outcome = 'converted'),
               count(*) FILTER (WHERE l.outcome = 'quarantined'),
               count(*) FILTER (WHERE l.outcome = 'skipped'),
               coalesce(sum(l.resource_count) FILTER (WHERE l.outcome = 'converted'), 0)
        FROM ops.runs r LEFT JOIN ops.ledger l USING (run_id)
        GROUP BY r.run_id, r.started_at, r.finished_at, r.status, r.exit_code
        ORDER BY r.started_at DESC, r.run_id DESC LIMIT ?
        """,
        [limit],
    ).fetchall()
    keys = (
        "run_id", "started_at", "finished_at", "status", "exit_code", "files", "units",
        "converted", "quarantined", "skipped", "resources",
    )  # fmt: skip
    return [dict(zip(keys, row, strict=True)) for row in rows]


def task_summary(warehouse: Path, run_id: str) -> dict[str, Any]:
    """What an orchestrator's task returns for a run, from the same RunSummary `ehrlift run` prints:
    units are ledger rows (messages, documents, NDJSON lines), resources are stored FHIR resources."""
    from pipelines.common.warehouse import open_warehouse

    con = open_warehouse(warehouse, read_only=True)
    try:
        s = build_summary(con, run_id)
    finally:
        con.close()
    t = s.totals
    return {
        "run_id": s.run_id,
        "status": s.status,
        "files": t.files,
        "units": {
            "in": t.units,
            "converted": t.converted,
            "quarantined": t.quarantined,
            "skipped": t.skipped,
        },
        "resources_loaded": {"total": sum(s.resources_by_type.values()), "by_type": s.resources_by_type},
        "quarantine_reasons": s.quarantine_reasons,
        "reconciles": s.reconciles,
        "gate": s.validation,
    }

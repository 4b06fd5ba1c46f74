"""The run record: a run's end in ops.runs and its JSON report beside the warehouse (counts, never values)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import orjson

from pipelines.common.config import RunConfig
from pipelines.summary import RunSummary, build_summary


def finish_run(
    con: duckdb.DuckDBPyConnection,
    config: RunConfig,
    status: str,
    code: int,
    reconciliation: dict[str, Any] | None = None,
) -> RunSummary:
    """Record the run's end (status, exit code, summary) and write its JSON report beside the warehouse."""
    summary = build_summary(con, config.run_id)
    summary.status = status
    record_finish(con, config.run_id, status, code, summary)
    write_run_report(config, summary, reconciliation)
    return summary


def run_report_path(config: RunConfig) -> Path:
    return config.warehouse.parent / "runs" / f"{config.run_id}.json"


def write_run_report(
    config: RunConfig, summary: RunSummary, reconciliation: dict[str, Any] | None = None
) -> Path:
    """The run's config and reconciliation beside the warehouse: counts and reason codes, never values."""
    path = run_report_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        orjson.dumps(
            {"config": config.to_dict(), "summary": summary.to_dict(), "reconciliation": reconciliation},
            option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS,
        )
    )
    return path


def record_finish(
    con: duckdb.DuckDBPyConnection, run_id: str, status: str, code: int, summary: RunSummary | None
) -> None:
    con.execute(
        "UPDATE ops.runs SET finished_at = now(), status = ?, exit_code = ?, summary = ? WHERE run_id = ?",
        [status, int(code), orjson.dumps(summary.to_dict()).decode() if summary else None, run_id],
    )

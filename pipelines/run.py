"""The pipeline's stages as plain functions (land, convert, normalize, load) and the run that chains them."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import duckdb
import orjson

from pipelines.common.config import RunConfig, ehrlift_version
from pipelines.common.errors import EhrliftError, ExitCode
from pipelines.common.progress import Bars
from pipelines.common.warehouse import open_warehouse
from pipelines.land import land_sources
from pipelines.normalize import normalize_stage
from pipelines.summary import RunSummary, build_summary

log = logging.getLogger(__name__)


def land_stage(config: RunConfig) -> dict[str, Any]:
    """Start the run (ops.runs) and land its sources; returns the landing counts."""
    with open_warehouse(config.warehouse) as con:
        _start_run(con, config)
        result = land_sources(con, config)
    log.info("run %s landed %d files (%d new)", config.run_id, result.files_given, result.files_landed)
    return asdict(result)


def convert_stage(config: RunConfig, bars: Bars | None = None) -> dict[str, int]:
    """Convert and merge every pending file of the run; returns unit and merge counts.

    Small files share a transaction and large ones commit in chunks (pipelines.scale): a crash leaves
    no file half-written, and a re-run converts only what was not committed.
    """
    from pipelines.scale import convert_pending

    with open_warehouse(config.warehouse) as con:
        size = con.execute(
            "SELECT coalesce(sum(f.size_bytes), 0) FROM ops.run_files rf "
            "JOIN ops.files f USING (file_sha256) "
            "WHERE rf.run_id = ? AND rf.status IN ('pending', 'partial')",
            [config.run_id],
        ).fetchall()[0][0]
        advance = (bars or Bars(False)).bar("convert", int(size))
        return convert_pending(con, config, advance)


def load_stage(config: RunConfig) -> dict[str, Any]:
    """Rebuild the analyst views over fhir.*; the validate stage then checks them and finishes the run."""
    from pipelines.common.paths import shipped
    from pipelines.deid.audit import record_access
    from pipelines.views.materialize import materialize_views

    with open_warehouse(config.warehouse) as con:
        views = materialize_views(con, shipped("schemas") / "views")
        written = {f"fhir.{t}": n for t, n in build_summary(con, config.run_id).resources_by_type.items()}
        record_access(
            con, "run", "write", written | {f"views.{v}": n for v, n in views.items()}, config.run_id
        )
    return {"views": views}


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
    _finish_run(con, config.run_id, status, code, summary)
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


def run_pipeline(config: RunConfig) -> RunSummary:
    """land → convert → normalize → load → validate in one process, as `ehrlift run` does.

    A run the gate blocks returns normally with status 'blocked' in its summary: the caller decides.
    """
    from pipelines.validate import validate_stage

    bars = Bars(config.progress)
    try:
        with bars.running():
            land_stage(config)
            convert_stage(config, bars)
            normalize_stage(config)
            load_stage(config)
            validate_stage(config)
    except (EhrliftError, KeyboardInterrupt) as exc:
        code = exc.exit_code if isinstance(exc, EhrliftError) else ExitCode.INTERRUPTED
        _mark_failed(config, code)
        raise
    except Exception:
        _mark_failed(config, ExitCode.INTERNAL)
        raise
    with open_warehouse(config.warehouse, read_only=True) as con:
        return build_summary(con, config.run_id)


def _start_run(con: duckdb.DuckDBPyConnection, config: RunConfig) -> None:
    exists = con.execute("SELECT count(*) FROM ops.runs WHERE run_id = ?", [config.run_id]).fetchone()
    if exists and exists[0]:
        return  # an Airflow retry of the land task: the run is already recorded
    con.execute(
        "INSERT INTO ops.runs VALUES (?, now(), NULL, 'running', NULL, ?, ?, NULL)",
        [config.run_id, ehrlift_version(), orjson.dumps(config.to_dict()).decode()],
    )


def _finish_run(
    con: duckdb.DuckDBPyConnection, run_id: str, status: str, code: int, summary: RunSummary | None
) -> None:
    con.execute(
        "UPDATE ops.runs SET finished_at = now(), status = ?, exit_code = ?, summary = ? WHERE run_id = ?",
        [status, int(code), orjson.dumps(summary.to_dict()).decode() if summary else None, run_id],
    )


def _mark_failed(config: RunConfig, code: int) -> None:
    try:
        with open_warehouse(config.warehouse) as con:
            _finish_run(con, config.run_id, "failed", code, None)
    except EhrliftError:
        pass  # the warehouse itself is the problem; the original error is what the operator needs

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
from pipelines.common.stages import StageClock, timed_stage
from pipelines.common.warehouse import open_warehouse
from pipelines.identity import identify_stage
from pipelines.land import check_sources, land_sources
from pipelines.normalize import normalize_stage
from pipelines.summary import RunSummary, build_summary

log = logging.getLogger(__name__)


def land_stage(config: RunConfig) -> dict[str, Any]:
    """Start the run (ops.runs) and land its sources; returns the landing counts."""
    check_sources(config.sources)
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
    """Rebuild the analyst views the run's resources can change; the validate stage then checks them.

    A view reads one resource table, so only the views over the types this run wrote are rebuilt,
    plus those over types re-normalized since their views were built (ops.views_stale) and any view
    missing or redefined; a site file's "refresh": "all" rebuilds every view.
    """
    from pipelines.common.paths import shipped
    from pipelines.deid.audit import record_access
    from pipelines.identity.views import resolve_person_views
    from pipelines.quality.settings import load_settings
    from pipelines.views.materialize import materialize_views, views_built_by

    with open_warehouse(config.warehouse) as con:
        written = build_summary(con, config.run_id).resources_by_type
        stale = {t for (t,) in con.execute("SELECT resource_type FROM ops.views_stale").fetchall()}
        changed = None if load_settings().refresh == "all" else set(written) | stale
        views = materialize_views(con, shipped("schemas") / "views", changed, config.run_id)
        con.execute("DELETE FROM ops.views_stale")  # every view over them was just rebuilt
        rebuilt = views_built_by(con, config.run_id)
        # Person ids are written into every view with a patient_id, rebuilt or not: links may have changed.
        resolved = resolve_person_views(con, shipped("schemas") / "views", rebuilt)
        views |= resolved
        tables = {f"fhir.{t}": n for t, n in written.items()}
        tables |= {f"views.{v}": n for v, n in views.items() if v in rebuilt or v in resolved}
        record_access(con, "run", "write", tables, config.run_id)
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
    """land → convert → normalize → identify → load → validate in one process, as `ehrlift run` does.

    A run the gate blocks returns normally with status 'blocked' in its summary: the caller decides.
    """
    from pipelines.validate import validate_stage

    bars = Bars(config.progress)
    timed: list[StageClock] = []  # written by the validate stage (or when the run fails)
    try:
        with bars.running():
            with timed_stage(config, "land", timed):
                land_stage(config)
            with timed_stage(config, "convert", timed):
                convert_stage(config, bars)
            with timed_stage(config, "normalize", timed):
                normalize_stage(config)
            with timed_stage(config, "identify", timed):
                identify_stage(config)
            with timed_stage(config, "load", timed):
                load_stage(config)
            validate_stage(config, stages=timed)  # records its own time before it finishes the run
    except (EhrliftError, KeyboardInterrupt) as exc:
        code = exc.exit_code if isinstance(exc, EhrliftError) else ExitCode.INTERRUPTED
        _mark_failed(config, code, timed)
        raise
    except Exception:
        _mark_failed(config, ExitCode.INTERNAL, timed)
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


def _mark_failed(config: RunConfig, code: int, timed: list[StageClock] | None = None) -> None:
    if not config.warehouse.exists():
        return  # the run stopped before it was recorded (a mistyped source): create nothing
    try:
        with open_warehouse(config.warehouse) as con:
            for clock in timed or []:
                clock.record(con)
            _finish_run(con, config.run_id, "failed", code, None)
    except EhrliftError:
        pass  # the warehouse itself is the problem; the original error is what the operator needs

"""The pipeline's stages as plain functions (land, convert, normalize, load) and the run that chains them."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import duckdb
import orjson

from pipelines.common.config import RunConfig, ehrlift_version
from pipelines.common.errors import EhrliftError, ExitCode
from pipelines.common.ledger import LedgerWriter
from pipelines.common.progress import Bars
from pipelines.common.stages import StageClock, timed_stage
from pipelines.common.unit import BatchConverter, FileContext, Unit, UnreadableFile, convert_units
from pipelines.common.warehouse import open_warehouse, transaction
from pipelines.convert import handler_for
from pipelines.fhir_release import committed_position, conversion_done
from pipelines.identity import identify_stage
from pipelines.land import check_sources, land_sources, landed_path
from pipelines.load import create_stage, merge_stage
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

    Units, ledger rows and resources commit together, per file or (for chunked formats) per chunk: a
    crash leaves nothing half-written, and a re-run converts only what was not committed.
    """
    totals: Counter[str] = Counter()
    with open_warehouse(config.warehouse) as con:
        create_stage(con)
        pending = con.execute(
            """
            SELECT rf.seq, rf.file_sha256, coalesce(d.format, f.format),
                CASE WHEN d.format IS NULL THEN f.format_detail ELSE d.format_detail END,
                f.size_bytes, d.release
            FROM ops.run_files rf JOIN ops.files f USING (file_sha256)
            LEFT JOIN ops.fhir_release_declarations d
                ON d.run_id = rf.run_id AND d.file_sha256 = rf.file_sha256
            WHERE rf.run_id = ? AND rf.status IN ('pending', 'partial') ORDER BY rf.seq
        """,
            [config.run_id],
        ).fetchall()
        advance = (bars or Bars(False)).bar("convert", sum(r[4] for r in pending))
        for seq, sha, fmt, detail, size, declared in pending:
            handler = handler_for(fmt)
            # A file read under another declared release is converted again; the same reading is not.
            if conversion_done(con, sha, handler.name, fmt, declared):
                con.execute(
                    "UPDATE ops.run_files SET handler = ?, status = 'already_processed' "
                    "WHERE run_id = ? AND seq = ?",
                    [handler.name, config.run_id, seq],
                )
                totals["already_processed"] += 1
                advance(size)
                continue
            ctx = FileContext(
                config.run_id,
                seq,
                sha,
                landed_path(config, sha),
                fmt,
                detail,
                _file_source_system(con, sha),
                declared,
            )
            totals.update(_convert_file(con, config, handler, ctx, advance))
            totals["files"] += 1
    return dict(totals)


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


def _convert_file(
    con: duckdb.DuckDBPyConnection, config: RunConfig, handler, ctx: FileContext, advance
) -> dict[str, int]:
    """Convert one file and merge its resources; returns its unit outcomes and merge counts.

    A whole-document format commits once at the end. A chunked one (NDJSON, HL7) also commits at
    checkpoints, recording its progress as 'partial', so memory stays bounded for any file size and a
    re-run resumes after the last committed unit.
    """
    done = 0
    counts: Counter[str] = Counter()

    def on_progress(position: int) -> None:
        nonlocal done
        advance(position - done)
        done = position

    def merge_and_count() -> None:
        writer.flush()
        writer.staged = 0
        merged = merge_stage(con)
        counts["resources"] += sum(merged.resources_loaded.values())
        counts["replaced"] += merged.replaced
        counts["duplicates_identical"] += merged.duplicates_identical
        counts["superseded"] += merged.superseded
        counts["conflicts"] += merged.conflicts

    def checkpoint() -> None:
        merge_and_count()
        _mark_file(con, ctx, handler.name, None, status="partial")
        con.execute("COMMIT")
        con.execute("BEGIN TRANSACTION")

    resume = _committed_position(con, ctx, handler.name) if handler.chunked else 0
    writer = LedgerWriter(con, ctx, config.batch_size)
    con.execute("BEGIN TRANSACTION")
    try:
        kwargs = {"skip_through": resume, "checkpoint": checkpoint if handler.chunked else None}
        if isinstance(handler, BatchConverter):
            result = handler.convert_file(ctx, con, writer, on_progress, **kwargs)
        else:
            result = convert_units(handler, ctx, writer, on_progress, **kwargs)
        merge_and_count()
        _mark_file(con, ctx, handler.name, result.units)
        con.execute("COMMIT")
        counts["units"] += result.units
    except (UnreadableFile, OSError) as exc:
        con.execute("ROLLBACK")
        if resume or _committed_position(con, ctx, handler.name):
            raise  # part of the file is in: an I/O fault is the run's problem, and a re-run resumes
        # Nothing of the file was kept: record the file as one bad unit.
        if isinstance(exc, UnreadableFile):
            reason, message = exc.reason, exc.message
        else:
            reason, message = "unreadable_file", f"I/O error ({type(exc).__name__})"
        with transaction(con):
            writer = LedgerWriter(con, ctx, config.batch_size)
            writer.quarantine(Unit(0, "file", None, 0, ctx.path.stat().st_size), reason, message)
            writer.flush()
            _mark_file(con, ctx, handler.name, 1)
        counts = Counter({"units": 1})
    except BaseException:
        con.execute("ROLLBACK")
        raise
    advance(ctx.path.stat().st_size - done)
    return dict(counts)


def _committed_position(con: duckdb.DuckDBPyConnection, ctx: FileContext, handler: str) -> int:
    """The last unit of this file that interrupted runs committed with this handler, read the same way."""
    return committed_position(con, ctx.file_sha256, handler, ctx.format, ctx.declared_release)


def _mark_file(
    con: duckdb.DuckDBPyConnection,
    ctx: FileContext,
    handler: str,
    units: int | None,
    status: str = "converted",
) -> None:
    con.execute(
        "UPDATE ops.run_files SET handler = ?, status = ?, units = coalesce(?, units) "
        "WHERE run_id = ? AND seq = ?",
        [handler, status, units, ctx.run_id, ctx.seq],
    )


def _file_source_system(con: duckdb.DuckDBPyConnection, sha: str) -> str:
    # The system a file was first landed under decides its ids, so a re-run under another name
    # cannot give the same records a second identity.
    row = con.execute("SELECT source_system FROM ops.files WHERE file_sha256 = ?", [sha]).fetchone()
    assert row is not None
    return row[0]


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

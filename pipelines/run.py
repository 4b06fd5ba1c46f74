"""The pipeline's stages as plain functions (land, convert, normalize, load) and the run that chains them."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from typing import Any

import duckdb
import orjson

from pipelines.common.config import RunConfig, ehrlift_version
from pipelines.common.errors import EhrliftError, ExitCode
from pipelines.common.interrupt import interrupted
from pipelines.common.progress import Bars
from pipelines.common.runrecord import record_finish
from pipelines.common.stages import StageClock, timed_stage
from pipelines.common.warehouse import (
    THREADS_ENV,
    held_warehouse,
    open_warehouse,
    rows_per_table,
    transaction,
)
from pipelines.identity import identify_stage
from pipelines.land import check_sources, land_sources
from pipelines.normalize import normalize_stage
from pipelines.resume import mark_orphans, mark_stage, pending_runs, record_owner, run_filter, run_lock
from pipelines.summary import RunSummary, build_summary

log = logging.getLogger(__name__)


def land_stage(config: RunConfig, *, owned: bool = False) -> dict[str, Any]:
    """Start the run (ops.runs) and land its sources; returns the landing counts.

    owned: this process runs every stage (`ehrlift run`), so it records itself as the run's owner and a
    later run can tell, once it is gone, that the run was killed.
    """
    check_sources(config.sources)
    with open_warehouse(config.warehouse) as con:
        _start_run(con, config, owned)
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
        advance = (bars or Bars(False)).bar("convert", pending_bytes(con, config.run_id))
        return convert_pending(con, config, advance)


def pending_bytes(con: duckdb.DuckDBPyConnection, run_id: str) -> int:
    """Bytes of the run's landed files still to convert."""
    return int(
        con.execute(
            "SELECT coalesce(sum(f.size_bytes), 0) FROM ops.run_files rf "
            "JOIN ops.files f USING (file_sha256) "
            "WHERE rf.run_id = ? AND rf.status IN ('pending', 'partial')",
            [run_id],
        ).fetchall()[0][0]
    )


def fit_threads(config: RunConfig) -> None:
    """One DuckDB thread for a run whose pending input is some but under small_run_bytes (scale_limits.json).

    Each further DuckDB thread keeps allocator caches of its own (15-20 MB of a one-file run's ~250 MB
    peak) and a few files give threads little to share. Set on the held warehouse, for this run only;
    EHRLIFT_DUCKDB_THREADS, when set, is DuckDB's thread count for every connection instead.
    """
    from pipelines.scale.limits import limits

    if os.environ.get(THREADS_ENV):
        return
    with open_warehouse(config.warehouse) as con:
        # Nothing to convert is a resume whose later stages may have a whole killed run's work left.
        if 0 < pending_bytes(con, config.run_id) < limits().small_run_bytes:
            con.execute("SET threads = 1")


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
        # This run's resources and those of any killed run whose views were never built (ops.stage_marks).
        runs = pending_runs(con, "load", config.run_id)
        written = resources_of_runs(con, runs)
        stale = {t for (t,) in con.execute("SELECT resource_type FROM ops.views_stale").fetchall()}
        changed = None if load_settings().refresh == "all" else set(written) | stale
        rows_of = {} if changed is None else narrow_refresh(con, runs, set(written) - stale)
        views = materialize_views(con, shipped("schemas") / "views", changed, config.run_id, rows_of)
        with transaction(con):
            con.execute("DELETE FROM ops.views_stale")  # every view over them was just rebuilt
            mark_stage(con, "load", runs, config.run_id)
        rebuilt = views_built_by(con, config.run_id)
        # Person ids are written into every view with a patient_id, rebuilt or not: links may have changed.
        # The person-level views.patient is rebuilt only when these runs wrote person records.
        where, params = run_filter(runs)
        persons = con.execute(f"SELECT count(*) FROM ops.person_records WHERE {where}", params).fetchall()
        resolved = resolve_person_views(con, shipped("schemas") / "views", rebuilt, bool(persons[0][0]))
        views |= resolved
        tables = {f"fhir.{t}": n for t, n in written.items()}
        tables |= {f"views.{v}": n for v, n in views.items() if v in rebuilt or v in resolved}
        record_access(con, "run", "write", tables, config.run_id)
    return {"views": views}


def narrow_refresh(con: duckdb.DuckDBPyConnection, runs: list[str], types: set[str]) -> dict[str, str]:
    """Per resource type the runs wrote: SQL selecting the ids whose view rows are to be replaced.

    Only the rows of those resources can differ from a full rebuild, unless the runs' terminology
    decisions differ from the ones already logged: a view row's standard columns follow the latest
    decision for each coding, so then every row may change and nothing is narrowed (empty answer).
    Also empty when the written resources are most of their table, where a full rebuild is cheaper.
    """
    if not types or _decisions_changed(con, runs):
        return {}
    where, params = run_filter(runs)
    con.execute("CREATE OR REPLACE TEMP TABLE _refresh_ids (resource_type VARCHAR, id VARCHAR)")
    out = {}
    for rtype in sorted(types):
        con.execute(
            f'INSERT INTO _refresh_ids SELECT ?, id FROM fhir."{rtype}" WHERE {where}', [rtype, *params]
        )
        n, total = con.execute(
            f"SELECT (SELECT count(*) FROM _refresh_ids WHERE resource_type = ?), "
            f'(SELECT count(*) FROM fhir."{rtype}")',
            [rtype],
        ).fetchall()[0]
        if n * 2 <= total:
            out[rtype] = f"SELECT id FROM _refresh_ids WHERE resource_type = '{rtype}'"
    return out


_DECISION = (
    "SELECT source_system AS s, source_code AS c, source_display AS d, arg_max(method, run_id) AS m, "
    "arg_max(reason, run_id) AS r, arg_max(target_system, run_id) AS ts, arg_max(target_code, run_id) AS tc, "
    "arg_max(target_display, run_id) AS td FROM ops.mapping_log "
    "WHERE coalesce(kind, 'coding') = 'coding' AND {where} GROUP BY ALL"
)


def _decisions_changed(con: duckdb.DuckDBPyConnection, runs: list[str]) -> bool:
    """Did these runs log a coding decision that differs from (or is absent among) earlier runs' latest?"""
    mine, params = run_filter(runs)
    sql = (
        f"WITH mine AS ({_DECISION.format(where=mine)}), before AS ({_DECISION.format(where='NOT ' + mine)}) "
        "SELECT count(*) FROM mine n LEFT JOIN before b ON n.s IS NOT DISTINCT FROM b.s "
        "AND n.c IS NOT DISTINCT FROM b.c AND n.d IS NOT DISTINCT FROM b.d "
        "WHERE (n.m, n.r, n.ts, n.tc, n.td) IS DISTINCT FROM (b.m, b.r, b.ts, b.tc, b.td)"
    )
    return bool(con.execute(sql, params + params).fetchall()[0][0])


def resources_of_runs(con: duckdb.DuckDBPyConnection, runs: list[str]) -> dict[str, int]:
    """Stored resources per type written by these runs."""
    return rows_per_table(con, *run_filter(runs))


def run_pipeline(config: RunConfig) -> RunSummary:
    """land → convert → normalize → identify → load → validate in one process, as `ehrlift run` does.

    A run the gate blocks returns normally with status 'blocked' in its summary: the caller decides.
    One run at a time per warehouse: a second one exits 4 (pipelines.resume.run_lock).
    """
    check_sources(config.sources)  # a mistyped source creates nothing, not even the lock file
    with run_lock(config.warehouse, config.run_id), held_warehouse(config.warehouse):
        return _run_locked(config)


def _run_locked(config: RunConfig) -> RunSummary:
    from pipelines.validate import validate_stage

    bars = Bars(config.progress)
    timed: list[StageClock] = []  # written by the validate stage (or when the run fails)
    try:
        with bars.running():
            with timed_stage(config, "land", timed):
                land_stage(config, owned=True)
                fit_threads(config)
            with timed_stage(config, "convert", timed):
                convert_stage(config, bars)
            with timed_stage(config, "normalize", timed):
                normalize_stage(config)
            with timed_stage(config, "identify", timed):
                identify_stage(config)
            with timed_stage(config, "load", timed):
                load_stage(config)
            validate_stage(config, stages=timed)  # records its own time before it finishes the run
    except BaseException as exc:
        if interrupted(exc):
            # Ctrl-C, in Python or inside a DuckDB query (which ends it with an ordinary error): not a
            # bug; the next run resumes what this one left.
            _mark_failed(config, ExitCode.INTERRUPTED, timed, status="interrupted")
            raise KeyboardInterrupt from None
        if isinstance(exc, EhrliftError):
            _mark_failed(config, exc.exit_code, timed)
        elif isinstance(exc, Exception):
            _mark_failed(config, ExitCode.INTERNAL, timed)
        raise
    with open_warehouse(config.warehouse, read_only=True) as con:
        return build_summary(con, config.run_id)


def _start_run(con: duckdb.DuckDBPyConnection, config: RunConfig, owned: bool = False) -> None:
    exists = con.execute("SELECT count(*) FROM ops.runs WHERE run_id = ?", [config.run_id]).fetchone()
    if exists and exists[0]:
        return  # an Airflow retry of the land task: the run is already recorded
    with transaction(con):
        orphans = mark_orphans(con, config.run_id)
        con.execute(
            "INSERT INTO ops.runs VALUES (?, now(), NULL, 'running', NULL, ?, ?, NULL)",
            [config.run_id, ehrlift_version(), orjson.dumps(config.to_dict()).decode()],
        )
        if owned:
            record_owner(con, config.run_id)
    if orphans:
        log.warning(
            "%d earlier run(s) were killed mid-way: marked interrupted; this run resumes them", len(orphans)
        )


def _mark_failed(
    config: RunConfig, code: int, timed: list[StageClock] | None = None, status: str = "failed"
) -> None:
    if not config.warehouse.exists():
        return  # the run stopped before it was recorded (a mistyped source): create nothing
    try:
        with open_warehouse(config.warehouse) as con:
            for clock in timed or []:
                clock.record(con)
            record_finish(con, config.run_id, status, code, None)
    except EhrliftError:
        pass  # the warehouse itself is the problem; the original error is what the operator needs

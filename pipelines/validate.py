"""The validate stage: GX suites over the views, structural FHIR checks, reconciliation, the gate."""

from __future__ import annotations

import logging
from typing import Any

import duckdb
import orjson

from pipelines.common.config import RunConfig
from pipelines.common.errors import ExitCode
from pipelines.common.progress import stage_bar
from pipelines.common.runrecord import finish_run
from pipelines.common.stages import StageClock
from pipelines.common.warehouse import open_warehouse
from pipelines.quality.frames import prepare
from pipelines.quality.gate import Gate, ResultRow, read_gate, write_results
from pipelines.quality.outcome import Outcome
from pipelines.quality.reconcile import check_reconciliation, reconcile
from pipelines.quality.settings import QualitySettings, Suite, load_settings
from pipelines.quality.sqlcheck import mapping_rows_sql, sql_outcomes
from pipelines.quality.structure import SUITE as STRUCTURE_SUITE
from pipelines.quality.structure import validate_structure
from pipelines.resume.marks import mark_stage, pending_runs
from pipelines.views.materialize import views_built_by

log = logging.getLogger(__name__)


def validate_stage(
    config: RunConfig, settings: QualitySettings | None = None, stages: list[StageClock] | None = None
) -> dict[str, Any]:
    """Validate the run, store the results, check reconciliation, then finish the run: succeeded or blocked.

    A blocked run is recorded with status 'blocked' and exit code 7; the caller decides how to fail
    (the CLI exits 7, the Airflow task raises). Warnings never block; they are in the results.
    """
    settings = settings or load_settings()
    clock = StageClock(config.run_id, "validate")
    with open_warehouse(config.warehouse) as con:
        # A killed run's resources that no validate stage checked are checked now (ops.stage_marks).
        runs = pending_runs(con, "validate", config.run_id)
        outcomes = run_checks(con, config.run_id, settings, runs)
        write_results(con, config.run_id, outcomes)
        recon = reconcile(con, config.run_id)
        check_reconciliation(recon)
        gate = read_gate(con, config.run_id)
        overridden = gate.blocked and config.gate_override is not None
        if overridden:
            record_override(con, config.run_id, config.gate_override or "", gate.critical_failed)
        blocked = gate.blocked and not overridden
        status, code = ("blocked", ExitCode.GATE_BLOCKED) if blocked else ("succeeded", ExitCode.OK)
        # Data Docs need Great Expectations (seconds to import): `ehrlift report` renders them from
        # the stored results, unless the site wants them from every run (or runs GX anyway).
        wanted = settings.data_docs == "always" or settings.engine == "gx"
        docs = _data_docs(config, settings, outcomes) if wanted else None
        for earlier in stages or []:  # the run's earlier stages, timed in this process
            earlier.record(con)
        clock.record(con)  # before finishing, so the run's summary holds the validate stage too
        mark_stage(con, "validate", runs, config.run_id)
        finish_run(con, config, status, code, reconciliation=recon.to_dict())
    log.info(
        "run %s validated: %d expectations, %d critical and %d warning failures",
        config.run_id,
        gate.evaluated,
        len(gate.critical_failed),
        len(gate.warnings_failed),
    )
    return {
        **gate.to_dict(),
        "blocked": blocked,
        "gate_overridden": overridden,
        "data_docs": str(docs) if docs else None,
    }


def record_override(con: duckdb.DuckDBPyConnection, run_id: str, reason: str, failed: list[str]) -> None:
    """The run's failed gate accepted by an operator: who, when, why, and which expectations."""
    from pipelines.deid.audit import os_user

    con.execute(
        "INSERT INTO ops.gate_overrides VALUES (?, ?, ?, ?, now())",
        [run_id, reason.strip(), orjson.dumps(sorted(failed)).decode(), os_user()],
    )


def run_checks(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    settings: QualitySettings,
    runs: list[str] | None = None,
) -> list[ResultRow]:
    """Every suite and the structural check (over the resources of `runs`, by default this run's), as
    result rows (pointers only, never values)."""
    prepare(con, settings)
    validator = None
    if settings.engine == "gx":
        from pipelines.quality.engine import Validator

        validator = Validator(settings)
    rows: list[ResultRow] = []
    suites = affected_suites(con, run_id, settings)
    bar = stage_bar("validate", "suites")
    bar.total(len(suites) + 1)  # and the structural check
    for suite in suites:
        mapping = suite.source.get("source") == "mapping_log"
        if validator is None:
            rows_sql = mapping_rows_sql(run_id, settings) if mapping else None
            outcomes = sql_outcomes(con, suite, settings, rows_sql)
        elif mapping:
            from pipelines.quality.engine import run_mapping_suite

            outcomes = run_mapping_suite(con, validator, suite, run_id)
        else:
            from pipelines.quality.engine import run_view_suite

            outcomes = run_view_suite(con, validator, suite)
        rows.extend(_row(o) for o in outcomes)
        bar.advance()
    for t in validate_structure(con, runs or [run_id], settings.max_record_pointers):
        share = t.invalid / t.checked if t.checked else 0.0
        rows.append(
            ResultRow(
                STRUCTURE_SUITE,
                t.name,
                "warning" if t.no_model else "critical",
                not t.no_model and share <= settings.fhir_structure_max_invalid_share,
                t.observed_value(),
                t.invalid,
                t.pointers,
            )
        )
    bar.advance()
    return rows


def affected_suites(con: duckdb.DuckDBPyConnection, run_id: str, settings: QualitySettings) -> list[Suite]:
    """The suites a run's changes can affect: those over a view it rebuilt or joining one, and the
    run's own mapping coverage; every suite when the site asks for "refresh": "all"."""
    if settings.refresh == "all":
        return list(settings.suites)
    rebuilt = views_built_by(con, run_id)
    out = []
    for suite in settings.suites:
        src = suite.source
        if src.get("source") == "mapping_log":
            out.append(suite)
            continue
        reads = {src["view"]}
        for spec in src.get("derive", {}).values():
            if "resolves" in spec:
                reads.add(spec["resolves"]["view"])
            elif "birth_of" in spec:
                reads.add("patient")  # frames.select_sql joins views.patient for a birth date
        if reads & rebuilt:
            out.append(suite)
    return out


def _row(o: Outcome) -> ResultRow:
    return ResultRow(
        o.suite, o.name, o.severity, o.success, o.observed_value, o.unexpected_count, o.pointers, o
    )


def _data_docs(config: RunConfig, settings: QualitySettings, rows: list[ResultRow]):
    from pipelines.quality.datadocs import build_data_docs

    return build_data_docs(config, settings, rows)


def gate_for(config: RunConfig) -> Gate:
    with open_warehouse(config.warehouse, read_only=True) as con:
        return read_gate(con, config.run_id)

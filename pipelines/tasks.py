"""Entry points for orchestrators: plain JSON-able arguments in and out, one call per pipeline stage."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

# Exit statuses a retry cannot change: a missing source, a bad setting, missing terminology, a blocked
# gate. Under Airflow these fail the task at once instead of spending its retries.
FINAL_EXIT_STATUSES = frozenset({3, 5, 6, 7})

# Pool slots the back-load send task holds: its most requests in flight to the target (the DAG's
# concurrency param may lower it, never raise it); schemas/airflow_pools.json sizes the pool to match.
BACKLOAD_SEND_SLOTS = 4


def fail_fast(fn: F) -> F:
    """Re-raise an EhrliftError whose status retrying cannot change as Airflow's AirflowFailException
    (the message and status kept); outside Airflow the error passes unchanged."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from pipelines.common.errors import EhrliftError

        try:
            return fn(*args, **kwargs)
        except EhrliftError as exc:
            if int(exc.exit_code) not in FINAL_EXIT_STATUSES:
                raise
            try:
                from airflow.sdk.exceptions import AirflowFailException
            except ImportError:
                raise exc from None
            raise AirflowFailException(f"exit status {int(exc.exit_code)}: {exc}") from exc

    return wrapper  # type: ignore[return-value]


def default_warehouse() -> Path:
    """Where a run without a warehouse writes: $EHRLIFT_WAREHOUSE, else ehrlift-data/warehouse.duckdb in
    $AIRFLOW_HOME (an orchestrator's task runs in a scratch folder, so a relative default would scatter
    warehouses), else in the current folder; always absolute."""
    from pipelines.common.config import DEFAULT_DATA_DIR

    if os.environ.get("EHRLIFT_WAREHOUSE"):
        return Path(os.environ["EHRLIFT_WAREHOUSE"]).expanduser().resolve()
    base = Path(os.environ.get("AIRFLOW_HOME") or Path.cwd()).expanduser()
    return (base / DEFAULT_DATA_DIR / "warehouse.duckdb").resolve()


def _timed(config: dict[str, Any], name: str, stage: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """One stage of the run the config names, its seconds and peak memory recorded (ops.run_stages)."""
    from pipelines.common.config import RunConfig
    from pipelines.common.stages import timed_stage

    run = RunConfig.from_dict(config)
    with timed_stage(run, name):
        return stage(run)


@fail_fast
def configure(
    sources: list[str],
    warehouse: str | None = None,
    source_system: str | None = None,
    fhir_release: str | None = None,
) -> dict[str, Any]:
    """Build and check the run config once; later tasks receive it as JSON."""
    from pipelines.common.config import RunConfig

    if not sources:
        from pipelines.common.errors import ConfigError

        raise ConfigError("no sources given", hint='trigger the DAG with {"sources": ["/path/to/files"]}')
    config = RunConfig.from_env(
        tuple(sources),
        warehouse=Path(warehouse).expanduser().resolve() if warehouse else default_warehouse(),
        source_system=source_system,
        fhir_release=fhir_release,
        progress=False,
    )
    return config.to_dict()


@fail_fast
def land(config: dict[str, Any]) -> dict[str, Any]:
    from pipelines.run import land_stage

    return _timed(config, "land", land_stage)


@fail_fast
def convert(config: dict[str, Any]) -> dict[str, Any]:
    from pipelines.run import convert_stage

    return _timed(config, "convert", convert_stage)


@fail_fast
def plan_chunks(config: dict[str, Any], max_chunks: int = 64) -> list[dict[str, Any]]:
    """The run's pending files as chunks for mapped convert tasks (same commit order as `ehrlift run`)."""
    from pipelines.common.config import RunConfig
    from pipelines.scale.chunks import plan

    return plan(RunConfig.from_dict(config), max_chunks)


@fail_fast
def convert_chunk(config: dict[str, Any], chunk: dict[str, Any]) -> dict[str, Any]:
    """Convert one chunk into staged Parquet batches under the shared stage folder (no warehouse)."""
    from pipelines.common.config import RunConfig
    from pipelines.scale.chunks import convert as convert_staged

    return convert_staged(RunConfig.from_dict(config), chunk)


@fail_fast
def merge_chunks(config: dict[str, Any], chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """The one writer: merge every chunk's staged batches into the warehouse, in plan order."""
    from pipelines.common.config import RunConfig
    from pipelines.scale.chunks import merge

    return merge(RunConfig.from_dict(config), chunks)


@fail_fast
def normalize(config: dict[str, Any]) -> dict[str, Any]:
    from pipelines.normalize import normalize_stage

    return _timed(config, "normalize", normalize_stage)


@fail_fast
def identify(config: dict[str, Any]) -> dict[str, Any]:
    from pipelines.identity import identify_stage

    return _timed(config, "identify", identify_stage)


@fail_fast
def load(config: dict[str, Any]) -> dict[str, Any]:
    from pipelines.run import load_stage

    return _timed(config, "load", load_stage)


@fail_fast
def validate(config: dict[str, Any]) -> dict[str, Any]:
    """Validate and finish the run; raises (exit status 7) when a critical expectation failed."""
    from pipelines.common.config import RunConfig
    from pipelines.validate import gate_for, validate_stage

    run = RunConfig.from_dict(config)
    result = validate_stage(run)
    if result["blocked"]:
        raise gate_for(run).error()
    return result


@fail_fast
def bulk_export(params: dict[str, Any] | None) -> dict[str, Any]:
    """Kick off or resume the scheduled bulk export, download it; the run config of its manifest."""
    from pipelines.export.scheduled import download

    return download(params)


def finish_bulk_export(config: dict[str, Any], params: dict[str, Any] | None) -> dict[str, Any]:
    """After load: remember the export's transactionTime as the next scheduled run's `_since`."""
    from pipelines.export.scheduled import finish

    return finish(config, params)


@fail_fast
def backload_plan(params: dict[str, Any] | None) -> dict[str, Any]:
    """Plan the back-load of the latest succeeded run (refused with exit status 7 for a blocked run)."""
    from pipelines.backload.runner import plan_from_params

    return plan_from_params(params)


@fail_fast
def backload_send(
    plan: dict[str, Any], params: dict[str, Any] | None, slots: int | None = None
) -> dict[str, Any]:
    """Send that plan to the target server with at most `slots` requests in flight (the pool slots the task
    holds); a re-run resumes and never creates twice."""
    from pipelines.backload.runner import send_from_params

    return send_from_params(plan, params, slots)


@fail_fast
def backload_hl7(params: dict[str, Any] | None) -> dict[str, Any]:
    """Send results, immunizations, documents and registrations as HL7 v2 over MLLP (param hl7_to)."""
    from pipelines.backload.hl7.runner import hl7_from_params

    return hl7_from_params(params)


@fail_fast
def report(config: dict[str, Any]) -> dict[str, Any]:
    """The compliance report of the run, whatever its outcome (a blocked run most needs one), and its
    summary: units (ledger rows) and resources (stored resources), as `ehrlift run` prints them."""
    from pipelines.common.config import RunConfig
    from pipelines.report import write_report
    from pipelines.summary import task_summary

    run = RunConfig.from_dict(config)
    files = write_report(run.warehouse, None, run.run_id)
    summary = task_summary(run.warehouse, run.run_id)
    return {**summary, "report": str(files.html), "report_data": str(files.data)}

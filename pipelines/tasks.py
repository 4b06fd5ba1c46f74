"""Entry points for orchestrators: plain JSON-able arguments in and out, one call per pipeline stage."""

from __future__ import annotations

from typing import Any


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
        warehouse=warehouse,
        source_system=source_system,
        fhir_release=fhir_release,
        progress=False,
    )
    return config.to_dict()


def land(config: dict[str, Any]) -> dict[str, Any]:
    from pipelines.common.config import RunConfig
    from pipelines.common.stages import timed_stage
    from pipelines.run import land_stage

    run = RunConfig.from_dict(config)
    with timed_stage(run, "land"):
        return land_stage(run)


def convert(config: dict[str, Any]) -> dict[str, Any]:
    from pipelines.common.config import RunConfig
    from pipelines.common.stages import timed_stage
    from pipelines.run import convert_stage

    run = RunConfig.from_dict(config)
    with timed_stage(run, "convert"):
        return convert_stage(run)


def plan_chunks(config: dict[str, Any], max_chunks: int = 64) -> list[dict[str, Any]]:
    """The run's pending files as chunks for mapped convert tasks (same commit order as `ehrlift run`)."""
    from pipelines.common.config import RunConfig
    from pipelines.scale.chunks import plan

    return plan(RunConfig.from_dict(config), max_chunks)


def convert_chunk(config: dict[str, Any], chunk: dict[str, Any]) -> dict[str, Any]:
    """Convert one chunk into staged Parquet batches under the shared stage folder (no warehouse)."""
    from pipelines.common.config import RunConfig
    from pipelines.scale.chunks import convert as convert_staged

    return convert_staged(RunConfig.from_dict(config), chunk)


def merge_chunks(config: dict[str, Any], chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """The one writer: merge every chunk's staged batches into the warehouse, in plan order."""
    from pipelines.common.config import RunConfig
    from pipelines.scale.chunks import merge

    return merge(RunConfig.from_dict(config), chunks)


def normalize(config: dict[str, Any]) -> dict[str, Any]:
    from pipelines.common.config import RunConfig
    from pipelines.common.stages import timed_stage
    from pipelines.normalize import normalize_stage

    run = RunConfig.from_dict(config)
    with timed_stage(run, "normalize"):
        return normalize_stage(run)


def identify(config: dict[str, Any]) -> dict[str, Any]:
    from pipelines.common.config import RunConfig
    from pipelines.common.stages import timed_stage
    from pipelines.identity import identify_stage

    run = RunConfig.from_dict(config)
    with timed_stage(run, "identify"):
        return identify_stage(run)


def load(config: dict[str, Any]) -> dict[str, Any]:
    from pipelines.common.config import RunConfig
    from pipelines.common.stages import timed_stage
    from pipelines.run import load_stage

    run = RunConfig.from_dict(config)
    with timed_stage(run, "load"):
        return load_stage(run)


def validate(config: dict[str, Any]) -> dict[str, Any]:
    """Validate and finish the run; raises (exit status 7) when a critical expectation failed."""
    from pipelines.common.config import RunConfig
    from pipelines.validate import gate_for, validate_stage

    run = RunConfig.from_dict(config)
    result = validate_stage(run)
    if result["blocked"]:
        raise gate_for(run).error()
    return result


def bulk_export(params: dict[str, Any] | None) -> dict[str, Any]:
    """Kick off or resume the scheduled bulk export, download it; the run config of its manifest."""
    from pipelines.export.scheduled import download

    return download(params)


def finish_bulk_export(config: dict[str, Any], params: dict[str, Any] | None) -> dict[str, Any]:
    """After load: remember the export's transactionTime as the next scheduled run's `_since`."""
    from pipelines.export.scheduled import finish

    return finish(config, params)


def backload_plan(params: dict[str, Any] | None) -> dict[str, Any]:
    """Plan the back-load of the latest succeeded run (refused with exit status 7 for a blocked run)."""
    from pipelines.backload.runner import plan_from_params

    return plan_from_params(params)


def backload_send(
    plan: dict[str, Any], params: dict[str, Any] | None, slots: int | None = None
) -> dict[str, Any]:
    """Send that plan to the target server with at most `slots` requests in flight (the pool slots the task
    holds); a re-run resumes and never creates twice."""
    from pipelines.backload.runner import send_from_params

    return send_from_params(plan, params, slots)


def backload_hl7(params: dict[str, Any] | None) -> dict[str, Any]:
    """Send results, immunizations, documents and registrations as HL7 v2 over MLLP (param hl7_to)."""
    from pipelines.backload.hl7.runner import hl7_from_params

    return hl7_from_params(params)

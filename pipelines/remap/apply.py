"""Re-normalize every resource of the warehouse with today's terminology and crosswalks, without sources.

After a reviewed crosswalk is imported (or a release loaded), `ehrlift normalize` applies it to what is
already in the warehouse: normalization strips what it added before and derives it again, so a second
call changes nothing. It is recorded as a run of its own (no files, no units): its mapping log covers the
whole warehouse, the views over rewritten types are rebuilt, the suites check them, and its compliance
report shows the coverage change against the run before it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orjson

from pipelines.common.config import RunConfig, ehrlift_version
from pipelines.common.errors import EhrliftError, ExitCode, InputNotFoundError
from pipelines.common.stages import StageClock, timed_stage
from pipelines.common.warehouse import open_warehouse

log = logging.getLogger(__name__)


def normalize_warehouse(warehouse: Path) -> dict[str, Any]:
    """Re-apply mappings to every resource, rebuild the views, validate; returns the run id and counts."""
    from pipelines.normalize import normalize_all
    from pipelines.run import _mark_failed, load_stage
    from pipelines.validate import validate_stage

    if not Path(warehouse).is_file():
        raise InputNotFoundError(f"no warehouse at {warehouse}", hint="run `ehrlift run` first")
    config = RunConfig(sources=(), warehouse=Path(warehouse), progress=False)
    timed: list[StageClock] = []
    with open_warehouse(config.warehouse) as con:
        con.execute(
            "INSERT INTO ops.runs VALUES (?, now(), NULL, 'running', NULL, ?, ?, NULL)",
            [
                config.run_id,
                ehrlift_version(),
                orjson.dumps({**config.to_dict(), "command": "normalize"}).decode(),
            ],
        )
    try:
        with timed_stage(config, "normalize", timed), open_warehouse(config.warehouse) as con:
            counts = normalize_all(con, config.run_id, config.warehouse)
        with timed_stage(config, "load", timed):
            load_stage(config)
        gate = validate_stage(config, stages=timed)  # finishes the run: succeeded, or blocked
    except (EhrliftError, KeyboardInterrupt) as exc:
        _mark_failed(config, exc.exit_code if isinstance(exc, EhrliftError) else ExitCode.INTERRUPTED, timed)
        raise
    except Exception:
        _mark_failed(config, ExitCode.INTERNAL, timed)
        raise
    log.info(
        "normalize run %s: %d resources, %d rewritten",
        config.run_id,
        counts["resources"],
        counts["rewritten"],
    )
    return {"run_id": config.run_id, "blocked": bool(gate.get("blocked")), **counts}

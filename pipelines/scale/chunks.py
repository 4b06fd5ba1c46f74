"""Scale-out across machines: plan a run's conversion as chunks, convert each anywhere, merge in order.

An orchestrator (the Airflow DAG) calls plan() once, convert() once per chunk on any worker that sees
the landing and stage folders, and merge() once in the one process allowed to write the warehouse.
The chunks hold the same groups and slices, in the same commit order, as `ehrlift run` on one machine,
so the warehouse is the same.
"""

from __future__ import annotations

import shutil
from collections import Counter
from typing import Any

import duckdb

from pipelines.common.config import RunConfig
from pipelines.common.errors import EhrliftError
from pipelines.common.warehouse import open_warehouse
from pipelines.load import create_stage
from pipelines.scale import limits as scale_limits
from pipelines.scale.plan import Group, pending_files, plan_groups
from pipelines.scale.ranges import cut_ranges, rangeable
from pipelines.scale.slices import Slice, sliceable, span_slices
from pipelines.scale.spool import batch_dir, read_batch, spool_task, stage_root
from pipelines.scale.stage import worker_name
from pipelines.scale.writer import apply_batch, bounded_writer


def plan(config: RunConfig, max_chunks: int = 64) -> list[dict[str, Any]]:
    """The run's pending work as at most max_chunks chunks of consecutive tasks (JSON for XCom)."""
    bounds = scale_limits.limits()
    with open_warehouse(config.warehouse) as con:
        files, _already = pending_files(con, config.run_id)
    tasks: list[dict[str, Any]] = []
    for group in plan_groups(files, bounds):
        solo = group.files[0] if len(group.files) == 1 else None
        if solo is not None and sliceable(solo, bounds.slice_bytes):
            for piece in span_slices(config, solo, len(tasks), bounds.slice_units):
                tasks.append({"slice": piece.to_dict()})
        elif solo is not None and rangeable(solo) and (ranges := cut_ranges(config, solo, len(tasks))):
            tasks += [{"slice": piece.to_dict()} for piece in ranges]
        else:
            tasks.append({"group": Group(len(tasks), group.files).to_dict()})
    if not tasks:
        return []
    per_chunk = -(-len(tasks) // max(1, max_chunks))
    return [{"tasks": tasks[i : i + per_chunk]} for i in range(0, len(tasks), per_chunk)]


def convert(config: RunConfig, chunk: dict[str, Any]) -> dict[str, Any]:
    """Convert one chunk's tasks into Parquet batches under the shared stage folder; no warehouse."""
    root = stage_root(config)
    root.mkdir(parents=True, exist_ok=True)
    batches = 0
    for task in chunk["tasks"]:
        batches += spool_task(config.to_dict(), _task(task), str(root))
    return {"tasks": len(chunk["tasks"]), "batches": batches, "worker": worker_name()}


def merge(config: RunConfig, chunks: list[dict[str, Any]]) -> dict[str, int]:
    """Commit every staged batch in plan order, one transaction each; a retry skips what committed."""
    root = stage_root(config)
    totals: Counter[str] = Counter()
    with open_warehouse(config.warehouse) as con, bounded_writer(con):
        create_stage(con)
        done = set(
            con.execute(
                "SELECT task_index, batch_number FROM ops.stage_batches WHERE run_id = ?", [config.run_id]
            ).fetchall()
        )
        for chunk in chunks:
            for task in chunk["tasks"]:
                index = _task(task).index
                number = 0
                while (path := batch_dir(root, index, number)).is_dir():
                    if (index, number) not in done:
                        batch = read_batch(path)
                        totals.update(apply_batch(con, config.run_id, batch, record=True))
                    number += 1
        _check_settled(con, config.run_id)
    shutil.rmtree(root, ignore_errors=True)
    return dict(totals)


def _task(task: dict[str, Any]) -> Group | Slice:
    if "group" in task:
        return Group.from_dict(task["group"])
    return Slice.from_dict(task["slice"])


def _check_settled(con: duckdb.DuckDBPyConnection, run_id: str) -> None:
    """Every file of the run left pending or partial means a convert task's batches went missing."""
    left = con.execute(
        "SELECT count(*) FROM ops.run_files WHERE run_id = ? AND status IN ('pending', 'partial')", [run_id]
    ).fetchall()[0][0]
    if left:
        raise EhrliftError(
            f"{left} files have no staged batches to merge",
            hint="re-run the convert tasks: the stage folder must be shared by every worker and the merge",
        )

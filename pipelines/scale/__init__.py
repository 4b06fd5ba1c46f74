"""Converting a run's pending files in commit groups, on one core or a process pool, through one writer."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import shutil
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path

import duckdb

from pipelines.common.config import RunConfig
from pipelines.common.stages import credit_cpu
from pipelines.load import create_stage
from pipelines.scale import limits as scale_limits
from pipelines.scale.limits import Limits
from pipelines.scale.plan import Group, pending_files, plan_groups
from pipelines.scale.ranges import cut_ranges, rangeable
from pipelines.scale.slices import Slice, cut_slices, sliceable
from pipelines.scale.spool import batch_dir, read_batch, spool_task, stage_root
from pipelines.scale.stage import Batch, convert_task
from pipelines.scale.writer import apply_batch, bounded_writer

__all__ = ["convert_pending", "worker_count"]


def worker_count(config: RunConfig) -> int:
    """Processes for conversion: the config's, else EHRLIFT_WORKERS, else every core."""
    if config.workers:
        return config.workers
    env = os.environ.get("EHRLIFT_WORKERS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return os.cpu_count() or 1


def convert_pending(
    con: duckdb.DuckDBPyConnection, config: RunConfig, advance: Callable[[int], None]
) -> dict[str, int]:
    """Convert and merge every pending file of the run; returns unit and merge counts.

    Files convert in groups (schemas/scale_limits.json); each group's batches commit in order through
    this connection, the one writer. Across processes when there is enough work and more than one
    worker; the groups, their batches and so the warehouse are the same either way.
    """
    create_stage(con)
    files, already = pending_files(con, config.run_id)
    totals: Counter[str] = Counter()
    if already:
        totals["already_processed"] += len(already)
        advance(sum(already))
    bounds = scale_limits.limits()
    groups = plan_groups(files, bounds)
    sliced = [
        g
        for g in groups
        if len(g.files) == 1 and (sliceable(g.files[0], bounds.slice_bytes) or rangeable(g.files[0]))
    ]
    workers = worker_count(config)
    pooled = (
        workers > 1
        and (len(groups) >= bounds.pool_min_groups or sliced)
        and sum(g.bytes for g in groups) >= bounds.pool_min_bytes
    )
    tasks = _tasks(config, groups, bounds)
    processes: set[str] = set()
    with bounded_writer(con):
        if pooled:
            _pooled(con, config, tasks, workers, advance, totals, processes)
        else:
            for task in tasks:
                _in_process(con, config, task, advance, totals, processes)
    if processes:
        totals["worker_processes"] = len(processes)  # how many processes converted this run's batches
    return dict(totals)


def _tasks(config: RunConfig, groups: list[Group], bounds: Limits) -> Iterator[Group | Slice]:
    """The run's work in commit order: groups of files, each large unit-by-unit file in slices and each
    large NDJSON file in byte ranges."""
    index = 0
    for group in groups:
        solo = group.files[0] if len(group.files) == 1 else None
        if solo is not None and sliceable(solo, bounds.slice_bytes):
            for piece in cut_slices(config, solo, index, bounds.slice_units):
                index = piece.index + 1
                yield piece
        elif solo is not None and rangeable(solo) and (ranges := cut_ranges(config, solo, index)):
            yield from ranges
            index = ranges[-1].index + 1
        else:
            yield dataclasses.replace(group, index=index)
            index += 1


def _task_bytes(task: Group | Slice) -> int:
    return task.bytes


def _in_process(
    con, config: RunConfig, task: Group | Slice, advance, totals: Counter, processes: set[str]
) -> None:
    reached = [0]

    def sink(batch: Batch) -> None:
        processes.add(batch.worker)
        totals.update(apply_batch(con, config.run_id, batch))
        advance(batch.reached - reached[0])
        reached[0] = batch.reached

    convert_task(config, task, sink)
    advance(_task_bytes(task) - reached[0])


def _pooled(
    con,
    config: RunConfig,
    tasks: Iterator[Group | Slice],
    workers: int,
    advance,
    totals: Counter,
    processes: set[str],
) -> None:
    root = stage_root(config)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    # forkserver: workers never inherit the writer's open DuckDB connection or its threads.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["pipelines.scale.spool"])
    config_dict = config.to_dict()
    ahead = 2 * workers  # bounds what waits for the writer, in memory (slices) and on disk (batches)
    try:
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            inflight: deque[tuple[Group | Slice, Future]] = deque()
            for task in tasks:
                inflight.append((task, pool.submit(spool_task, config_dict, task, str(root))))
                if len(inflight) >= ahead:
                    _merge_spooled(con, config, root, *inflight.popleft(), advance, totals, processes)
            while inflight:
                _merge_spooled(con, config, root, *inflight.popleft(), advance, totals, processes)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _merge_spooled(
    con,
    config: RunConfig,
    root: Path,
    task: Group | Slice,
    future: Future,
    advance,
    totals: Counter,
    processes: set[str],
) -> None:
    """Apply the group's batches in order as they appear, while later groups convert elsewhere."""
    number, reached = 0, 0
    while True:
        path = batch_dir(root, task.index, number)
        if path.is_dir():
            batch = read_batch(path)
            processes.add(batch.worker)
            credit_cpu(batch.cpu_seconds)  # the stage's CPU includes what the workers spent converting
            totals.update(apply_batch(con, config.run_id, batch))
            advance(batch.reached - reached)
            reached = batch.reached
            shutil.rmtree(path)
            number += 1
            continue
        if future.done():
            written = future.result()  # a worker's error is the run's error
            if number >= written:
                break
            continue
        wait([future], timeout=0.05, return_when=FIRST_COMPLETED)
    advance(_task_bytes(task) - reached)

"""Converting a run's pending files in commit groups, on one core or a process pool, through one writer."""

from __future__ import annotations

import multiprocessing
import os
import shutil
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path

import duckdb

from pipelines.common.config import RunConfig
from pipelines.load import create_stage
from pipelines.scale import limits as scale_limits
from pipelines.scale.plan import Group, pending_files, plan_groups
from pipelines.scale.spool import batch_dir, read_batch, spool_group, stage_root
from pipelines.scale.stage import Batch, convert_group
from pipelines.scale.writer import apply_batch

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
    workers = min(worker_count(config), len(groups))
    pooled = (
        workers > 1
        and len(groups) >= bounds.pool_min_groups
        and sum(g.bytes for g in groups) >= bounds.pool_min_bytes
    )
    run = _pooled if pooled else _in_process
    run(con, config, groups, workers, advance, totals)
    return dict(totals)


def _in_process(con, config: RunConfig, groups: list[Group], _workers, advance, totals: Counter) -> None:
    for group in groups:
        reached = [0]

        def sink(batch: Batch, reached: list[int] = reached) -> None:
            totals.update(apply_batch(con, config.run_id, batch))
            advance(batch.reached - reached[0])
            reached[0] = batch.reached

        convert_group(config, group, sink)
        advance(group.bytes - reached[0])


def _pooled(con, config: RunConfig, groups: list[Group], workers: int, advance, totals: Counter) -> None:
    root = stage_root(config)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    # forkserver: workers never inherit the writer's open DuckDB connection or its threads.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["pipelines.scale.spool"])
    config_dict = config.to_dict()
    try:
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures: dict[int, Future] = {}
            ahead = 2 * workers  # bounds the staged bytes on disk waiting for the writer
            for index, group in enumerate(groups):
                for g in groups[index : index + ahead]:
                    if g.index not in futures:
                        futures[g.index] = pool.submit(spool_group, config_dict, g.to_dict(), str(root))
                _merge_spooled(con, config, root, group, futures.pop(group.index), advance, totals)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _merge_spooled(
    con, config: RunConfig, root: Path, group: Group, future: Future, advance, totals: Counter
) -> None:
    """Apply the group's batches in order as they appear, while later groups convert elsewhere."""
    number, reached = 0, 0
    while True:
        path = batch_dir(root, group.index, number)
        if path.is_dir():
            batch = read_batch(path)
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
    advance(group.bytes - reached)

"""Batches on disk: a worker writes each as Parquet files in a folder, renamed into place when whole."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import orjson

from pipelines.common.config import RunConfig
from pipelines.scale.plan import Group
from pipelines.scale.slices import Slice
from pipelines.scale.stage import TABLES, Batch, convert_task


def stage_root(config: RunConfig) -> Path:
    """Where a run's staged batches wait for the writer: beside the warehouse, shared by all workers."""
    return config.warehouse.parent / "stage" / config.run_id


def group_dir(root: Path, group: int) -> Path:
    return root / f"g{group:06d}"


def batch_dir(root: Path, group: int, number: int) -> Path:
    return group_dir(root, group) / f"b{number:05d}"


def write_batch(root: Path, batch: Batch) -> Path:
    """Write then rename: the writer sees a batch folder only once every file in it is complete."""
    import pyarrow.parquet as pq  # only where batches are spooled (~9 MB): a one-process run never is

    final = batch_dir(root, batch.group, batch.number)
    tmp = final.with_name(final.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for table, rows in batch.tables.items():
        if rows.num_rows:
            pq.write_table(rows, tmp / f"{table}.parquet", compression="zstd")
    (tmp / "batch.json").write_bytes(
        orjson.dumps(
            {
                "group": batch.group,
                "number": batch.number,
                "files": batch.files,
                "reached": batch.reached,
                "worker": batch.worker,
                "cpu_seconds": batch.cpu_seconds,
            }
        )
    )
    shutil.rmtree(final, ignore_errors=True)  # a retried task rewrites what an earlier try left
    os.replace(tmp, final)
    return final


def read_batch(path: Path) -> Batch:
    """The batch in the folder; its tables stay Parquet files that the writer's DuckDB reads itself
    (read through pyarrow, every batch's rows passed through Python's heap and stayed there)."""
    meta = orjson.loads((path / "batch.json").read_bytes())
    tables = {t: path / f"{t}.parquet" for t in TABLES if (path / f"{t}.parquet").exists()}
    files = [(int(s), h, st, u) for s, h, st, u in meta["files"]]
    return Batch(
        int(meta["group"]),
        int(meta["number"]),
        tables,
        files,
        int(meta["reached"]),
        str(meta["worker"]),
        float(meta.get("cpu_seconds", 0.0)),
    )


def spool_group(config: dict, group: dict, root: str) -> int:
    """Convert one group (as JSON, from an orchestrator) into batch folders; returns their count."""
    return spool_task(config, Group.from_dict(group), root)


def spool_task(config: dict, task: Group | Slice, root: str) -> int:
    """Worker entry (picklable arguments): convert one task into batch folders; returns their count."""
    run = RunConfig.from_dict(config)
    base = Path(root)
    shutil.rmtree(group_dir(base, task.index), ignore_errors=True)
    written = [0]
    clock = [time.process_time()]

    def sink(batch: Batch) -> None:
        now = time.process_time()
        batch.cpu_seconds, clock[0] = now - clock[0], now
        write_batch(base, batch)
        written[0] += 1

    convert_task(run, task, sink)
    return written[0]

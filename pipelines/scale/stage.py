"""The worker side: convert a group of files into an in-memory stage and hand it on in batches.

A worker never opens the warehouse. It converts into its own in-memory DuckDB (the same ledger,
quarantine and stage tables the warehouse has), and every batch it hands to the sink carries whole
files, or the committed prefix of a chunked file marked 'partial', so the one writer can merge each
batch in one transaction and a crash still leaves no partial file behind.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import duckdb
import pyarrow as pa

from pipelines.common.config import RunConfig
from pipelines.common.ledger import LedgerWriter
from pipelines.common.unit import BatchConverter, Unit, UnreadableFile, convert_units
from pipelines.common.warehouse import apply_contract
from pipelines.convert import handler_for
from pipelines.load import create_stage
from pipelines.scale import limits as scale_limits
from pipelines.scale.plan import FileWork, Group
from pipelines.scale.slices import Slice, convert_slice, file_context

# What a batch carries, in the order the writer inserts it.
TABLES = ("_stage", "ops.ledger", "ops.quarantine", "ops.unconsumed", "ops.unit_items")


@dataclass
class Batch:
    """Rows of whole files (and at most one chunked file's committed prefix) for one transaction.

    files: (seq, handler, status, units) per file the batch settles or advances; reached: the bytes of
    the group's input accounted for once this batch commits (for the progress bar).
    """

    group: int
    number: int
    tables: dict[str, pa.Table | Path]  # a Path: the table's rows in a spooled Parquet file
    files: list[tuple[int, str, str, int | None]] = field(default_factory=list)
    reached: int = 0
    worker: str = field(default_factory=lambda: worker_name())  # the process that converted it
    cpu_seconds: float = 0.0  # CPU the converting process spent on the batch (set when it is spooled)


def worker_name() -> str:
    """name:pid of this process (no data in it), to show where batches were converted.

    The name is EHRLIFT_WORKER_NAME when the deployment sets one per worker, else the host name.
    """
    return f"{os.environ.get('EHRLIFT_WORKER_NAME') or socket.gethostname()}:{os.getpid()}"


@cache
def _stage_db() -> duckdb.DuckDBPyConnection:
    # One per process: a worker converts many groups, and the contract's DDL costs ~80 ms.
    con = duckdb.connect(":memory:", config={"threads": "1"})
    apply_contract(con)
    create_stage(con)
    return con


def convert_task(config: RunConfig, task: Group | Slice, sink: Callable[[Batch], None]) -> None:
    """Convert a group of files or a slice of one large file, handing sink one Batch per commit point."""
    if isinstance(task, Group):
        convert_group(config, task, sink)
        return
    con = _stage_db()
    _clear(con)
    number = [0]

    def emit(files: list[tuple[int, str, str, int | None]], reached: int) -> None:
        tables = {t: con.sql(f"SELECT * FROM {t}").to_arrow_table() for t in TABLES}
        sink(Batch(task.index, number[0], tables, files, reached))
        number[0] += 1
        _clear(con)

    convert_slice(config, task, emit, con)


def convert_group(config: RunConfig, group: Group, sink: Callable[[Batch], None]) -> None:
    """Convert the group's files in order, handing sink one Batch per commit point."""
    con = _stage_db()
    _clear(con)
    bounds = scale_limits.limits()
    solo = len(group.files) == 1
    settled: list[tuple[int, str, str, int | None]] = []
    state = {"number": 0, "reached": 0}

    def emit(partial: tuple[int, str] | None = None) -> None:
        files = list(settled)
        if partial is not None:
            files.append((partial[0], partial[1], "partial", None))
        sink(
            Batch(
                group.index,
                state["number"],
                {t: con.sql(f"SELECT * FROM {t}").to_arrow_table() for t in TABLES},
                files,
                state["reached"],
            )
        )
        state["number"] += 1
        settled.clear()
        _clear(con)

    writer: LedgerWriter | None = None
    staged = 0  # resources staged in the group since its last batch
    for work in group.files:
        start = state["reached"]
        handler = handler_for(work.format)
        ctx = file_context(config, work, group.index)
        if writer is None:
            writer = LedgerWriter(con, ctx, config.batch_size)
        writer.ctx = ctx
        emitted = state["number"]

        def on_progress(position: int, start: int = start) -> None:
            state["reached"] = start + position

        def checkpoint(writer: LedgerWriter = writer, work: FileWork = work) -> None:
            # A lone file commits at every checkpoint its converter asks for; in a group, the group's
            # resource bound decides, so small files keep sharing one transaction.
            writer.flush()
            writer.staged = 0
            if solo or _staged(con) >= bounds.group_resources:
                emit((work.seq, work.handler))

        kwargs = {"skip_through": work.resume, "checkpoint": checkpoint if handler.chunked else None}
        try:
            if isinstance(handler, BatchConverter):
                result = handler.convert_file(ctx, con, writer, on_progress, **kwargs)
            else:
                result = convert_units(handler, ctx, writer, on_progress, **kwargs)
            units, staged = result.units, staged + result.resources
        except (UnreadableFile, OSError) as exc:
            if work.resume or state["number"] != emitted:
                raise  # part of the file is in: an I/O fault is the run's problem, and a re-run resumes
            # Nothing of the file is kept: it is one bad unit.
            writer.discard(work.sha)
            _forget(con, work.sha)
            if isinstance(exc, UnreadableFile):
                reason, message = exc.reason, exc.message
            else:
                reason, message = "unreadable_file", f"I/O error ({type(exc).__name__})"
            writer.quarantine(Unit(0, "file", None, 0, work.size), reason, message)
            units = 1
        settled.append((work.seq, work.handler, "converted", units))
        state["reached"] = start + work.size
        if staged >= bounds.group_resources:
            writer.flush()
            emit()
            staged = 0
    if settled:
        assert writer is not None
        writer.flush()
        emit()


def _staged(con: duckdb.DuckDBPyConnection) -> int:
    return int(con.execute("SELECT count(*) FROM _stage").fetchall()[0][0])


def _clear(con: duckdb.DuckDBPyConnection) -> None:
    """Empty the stage for the next batch, and give its memory back: DuckDB keeps the memory of deleted
    rows (the stage grew by every batch a worker converted) until a temp table is replaced or an
    in-memory database checkpoints."""
    create_stage(con)
    for table in TABLES[1:]:
        con.execute(f"DELETE FROM {table}")
    con.execute("CHECKPOINT")


def _forget(con: duckdb.DuckDBPyConnection, sha: str) -> None:
    for table in TABLES:
        con.execute(f"DELETE FROM {table} WHERE file_sha256 = ?", [sha])

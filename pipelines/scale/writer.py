"""The one writer: each batch's rows, merge and file statuses commit in a single warehouse transaction."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pyarrow as pa

from pipelines.common import arrow
from pipelines.common.warehouse import transaction
from pipelines.load import merge_stage
from pipelines.scale import limits as scale_limits
from pipelines.scale.stage import TABLES, Batch


@contextmanager
def bounded_writer(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Have the writer's DuckDB hand freed memory back to the system after any statement whose peak
    passed writer_flush_mb (schemas/scale_limits.json), for as long as it merges batches.

    DuckDB's allocator otherwise keeps what a statement freed, up to 128 MB per thread, and each batch's
    merge peaks at a different place in that cache; the process grew with the number of batches.
    """
    previous = con.execute("SELECT current_setting('allocator_flush_threshold')").fetchall()[0][0]
    con.execute(f"SET allocator_flush_threshold = '{scale_limits.limits().writer_flush_mb}MB'")
    try:
        yield
    finally:
        con.execute("SET allocator_flush_threshold = ?", [str(previous)])


def apply_batch(
    con: duckdb.DuckDBPyConnection, run_id: str, batch: Batch, *, record: bool = False
) -> Counter[str]:
    """Insert a batch's rows, merge its staged resources into fhir.* and record its files' progress.

    record: also note the batch in ops.stage_batches, so a retried merge of a shared stage skips it.

    All in one transaction: a crash leaves the warehouse as it was before the batch, so every file is
    either wholly in, wholly out, or in up to its last committed checkpoint ('partial').
    """
    counts: Counter[str] = Counter()
    with transaction(con):
        for table in TABLES:
            rows = batch.tables.get(table)
            if isinstance(rows, Path):  # a spooled batch: DuckDB reads the Parquet file itself
                con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM read_parquet(?)", [str(rows)])
                continue
            if rows is None or not rows.num_rows:
                continue
            con.register("_ehrlift_rows", rows)
            try:
                con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _ehrlift_rows")
            finally:
                con.unregister("_ehrlift_rows")
        merged = merge_stage(con)
        counts["resources"] += sum(merged.resources_loaded.values())
        counts["replaced"] += merged.replaced
        counts["duplicates_identical"] += merged.duplicates_identical
        counts["superseded"] += merged.superseded
        counts["conflicts"] += merged.conflicts
        if batch.files:
            files = arrow.table(
                {
                    "seq": arrow.array([f[0] for f in batch.files], pa.int32()),
                    "handler": [f[1] for f in batch.files],
                    "status": [f[2] for f in batch.files],
                    "units": arrow.array([f[3] for f in batch.files], pa.int64()),
                }
            )
            con.register("_ehrlift_files", files)
            try:
                con.execute(
                    "UPDATE ops.run_files AS rf SET handler = b.handler, status = b.status, "
                    "units = coalesce(b.units, rf.units) FROM _ehrlift_files b "
                    "WHERE rf.run_id = ? AND rf.seq = b.seq",
                    [run_id],
                )
            finally:
                con.unregister("_ehrlift_files")
        if record:
            con.execute(
                "INSERT INTO ops.stage_batches VALUES (?, ?, ?, ?, now())",
                [run_id, batch.group, batch.number, batch.worker],
            )
    for _seq, _handler, status, units in batch.files:
        if status == "converted":
            counts["files"] += 1
            counts["units"] += units or 0
    return counts

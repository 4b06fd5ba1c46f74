"""The one writer's memory bounds: its allocator flush setting, and spooled batches read by DuckDB."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from pipelines.common.stages import StageClock, credit_cpu
from pipelines.load import create_stage
from pipelines.scale import limits as scale_limits
from pipelines.scale.spool import read_batch, write_batch
from pipelines.scale.stage import TABLES, Batch
from pipelines.scale.writer import bounded_writer


def _flush(con: duckdb.DuckDBPyConnection) -> str:
    return con.execute("SELECT current_setting('allocator_flush_threshold')").fetchall()[0][0]


def test_the_writer_flushes_its_allocator_at_the_shipped_bound_and_restores_the_setting_after():
    con = duckdb.connect()
    before = _flush(con)
    expected = duckdb.connect()
    expected.execute(f"SET allocator_flush_threshold = '{scale_limits.limits().writer_flush_mb}MB'")
    with bounded_writer(con):
        assert _flush(con) == _flush(expected) != before
    assert _flush(con) == before


def test_the_writer_restores_the_setting_when_a_batch_fails():
    con = duckdb.connect()
    before = _flush(con)
    with pytest.raises(RuntimeError), bounded_writer(con):
        raise RuntimeError("a batch failed")
    assert _flush(con) == before


def test_the_shipped_flush_bound_is_well_under_duckdbs_default_cache():
    assert 1 <= scale_limits.limits().writer_flush_mb <= 64  # DuckDB keeps up to 128 MB otherwise


def test_a_spooled_batch_reaches_the_writer_as_parquet_files_with_the_rows_written(tmp_path: Path):
    con = duckdb.connect()
    create_stage(con)
    con.execute(
        "INSERT INTO _stage (run_id, seq, file_sha256, unit_position, resource_index, resource_type, id, "
        "resource) VALUES ('r', 1, 'f', 1, 0, 'Patient', 'p1', '{}'), "
        "('r', 1, 'f', 2, 0, 'Patient', 'p2', '{}')"
    )
    stage = con.sql("SELECT * FROM _stage").to_arrow_table()
    batch = Batch(
        3, 0, {"_stage": stage, "ops.ledger": stage.slice(0, 0)}, [(1, "hl7v2", "partial", None)], 9
    )
    batch.cpu_seconds = 1.5
    write_batch(tmp_path, batch)
    back = read_batch(tmp_path / "g000003" / "b00000")
    # An empty table is not written; the other is a file the writer's DuckDB reads, never a Python table.
    assert set(back.tables) == {"_stage"} and set(back.tables) <= set(TABLES)
    assert isinstance(back.tables["_stage"], Path)
    assert (back.group, back.number, back.files, back.reached) == (3, 0, [(1, "hl7v2", "partial", None)], 9)
    assert back.cpu_seconds == 1.5  # what the worker spent converting it, credited to the convert stage
    read = con.execute("SELECT * FROM read_parquet(?) ORDER BY id", [str(back.tables["_stage"])]).fetchall()
    assert read == con.execute("SELECT * FROM _stage ORDER BY id").fetchall()


def test_a_stage_counts_the_cpu_workers_spent_for_it_and_a_later_stage_does_not():
    convert = StageClock("r", "convert")
    credit_cpu(5.0)
    credit_cpu(-1.0)  # never negative
    convert.stop()
    after = StageClock("r", "normalize")
    after.stop()
    assert 5.0 <= convert._cpu_seconds < 5.9  # this process's own CPU in between is a fraction of that
    assert after._cpu_seconds < 0.9

"""Conversion across a process pool: the same warehouse as one process, and commit groups by the limits."""

from __future__ import annotations

import dataclasses

from pipelines.common.config import RunConfig
from pipelines.common.warehouse import open_warehouse
from pipelines.demo import generate_demo_data
from pipelines.run import convert_stage, land_stage
from pipelines.scale import limits as scale_limits
from pipelines.scale.plan import FileWork, plan_groups

RUN_ID = "run-20260101T000000Z-5ca1e0"


def _narrow(monkeypatch, **changes) -> None:
    """Groups and slices small enough for a test's input (planning reads these in the writer only)."""
    shipped = scale_limits.limits()
    monkeypatch.setattr(scale_limits, "limits", lambda: dataclasses.replace(shipped, **changes))


def _hl7_archive(path, messages: int) -> None:
    """One file of ADT updates; each patient recurs with other dates and names, across slices."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(
        f"MSH|^~\\&|REG|HOSP|EHR|HOSP|{_when(i)}||ADT^A08^ADT_A01|C{i}|P|2.5.1\r"
        f"EVN|A08|{_when(i)}\r"
        f"PID|1||MRN{i % 150}^^^HOSP^MR||Person{i % 150}^Test{i % 3}||19700101|F\r"
        f"PV1|1|I|W^{i % 9}^1\r\n"
        for i in range(messages)
    )
    path.write_bytes(text.encode())


def _when(i: int) -> str:
    return f"2024{1 + i % 12:02d}{1 + i % 27:02d}0800"


def _contents(path) -> dict[str, list[tuple]]:
    """Everything the convert stage writes, in a stable order."""
    with open_warehouse(path, read_only=True) as con:
        types = [
            r[0]
            for r in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'fhir' ORDER BY 1"
            ).fetchall()
        ]
        out = {
            t: con.execute(
                "SELECT id, resource::VARCHAR, source_system, source_id, file_sha256, unit_position, "
                f'run_id, content_sha256, last_updated, reference_only FROM fhir."{t}" ORDER BY ALL'
            ).fetchall()
            for t in types
        }
        for table, columns in {
            "ops.ledger": "*",
            "ops.quarantine": "* EXCLUDE (quarantined_at)",
            "ops.unconsumed": "*",
            "ops.unit_items": "*",
            "ops.run_files": "run_id, seq, file_sha256, handler, status, units",
        }.items():
            out[table] = con.execute(f"SELECT {columns} FROM {table} ORDER BY ALL").fetchall()
    return out


def _convert(tmp_path, name: str, src, workers: int) -> tuple[dict, dict]:
    config = RunConfig(
        sources=(str(src),),
        warehouse=tmp_path / name / "warehouse.duckdb",
        progress=False,
        run_id=RUN_ID,
        workers=workers,
    )
    land_stage(config)
    totals = convert_stage(config)
    return totals, _contents(config.warehouse)


def test_a_pooled_run_writes_the_same_warehouse_as_one_process(tmp_path, monkeypatch):
    src = tmp_path / "src"
    generate_demo_data(src / "demo", patients=12, seed=5, hl7v2=True, ccda=True)
    _hl7_archive(src / "archive" / "adt.hl7", 400)  # ~60 kB: cut into slices of 40 messages
    (src / "broken.json").write_bytes(b'{"resourceType": "Patient", ')
    _narrow(
        monkeypatch,
        group_files=6,
        group_bytes=32 << 10,
        slice_bytes=32 << 10,
        slice_units=40,
        pool_min_bytes=0,
    )
    single_totals, single = _convert(tmp_path, "single", src, workers=1)
    pooled_totals, pooled = _convert(tmp_path, "pooled", src, workers=2)
    assert single_totals["worker_processes"] == 1
    assert pooled_totals["worker_processes"] == 2  # batches came from both pool processes
    assert {k: v for k, v in pooled_totals.items() if k != "worker_processes"} == {
        k: v for k, v in single_totals.items() if k != "worker_processes"
    }
    assert pooled == single
    # Nothing lost: every unit has one outcome, and the archive's recurring patients were settled.
    ledger = pooled["ops.ledger"]
    manifest_entries = sum(1 for row in ledger if row[3] == "manifest_output")  # accounted at landing
    assert single_totals["units"] + manifest_entries == len(ledger)
    assert {row[4] for row in ledger} >= {"converted", "quarantined", "skipped"}
    assert sum(1 for row in ledger if row[3] == "hl7_message") >= 400
    assert all(status == "converted" for *_, status, _units in pooled["ops.run_files"])


def _work(seq: int, size: int, chunked: bool = True) -> FileWork:
    return FileWork(seq, f"{seq:064x}", "hl7v2", None, size, None, "default", "hl7v2", 0, chunked)


def test_groups_close_at_the_file_and_byte_bounds_and_a_large_file_goes_alone():
    bounds = dataclasses.replace(scale_limits.limits(), group_files=3, group_bytes=100, slice_bytes=1000)
    files = [
        _work(1, 10),
        _work(2, 10),
        _work(3, 10),
        _work(4, 10),
        _work(5, 60),
        _work(6, 50),
        _work(7, 100),
    ]
    groups = plan_groups(files, bounds)
    assert [[f.seq for f in g.files] for g in groups] == [[1, 2, 3], [4, 5], [6], [7]]
    assert [g.index for g in groups] == [0, 1, 2, 3]


def test_a_chunked_file_of_slice_bytes_goes_alone_so_it_can_be_sliced():
    bounds = dataclasses.replace(scale_limits.limits(), group_files=10, group_bytes=100, slice_bytes=40)
    files = [_work(1, 10), _work(2, 45, chunked=False), _work(3, 45), _work(4, 10)]
    assert [[f.seq for f in g.files] for g in plan_groups(files, bounds)] == [[1, 2], [3], [4]]


def test_clearing_the_stage_between_batches_gives_its_memory_back():
    """DuckDB keeps the memory of deleted rows: a worker's stage grew by every batch it converted."""
    from pipelines.scale.stage import _clear, _stage_db

    con = _stage_db()
    _clear(con)

    def used() -> int:
        return con.execute("SELECT sum(memory_usage_bytes) FROM duckdb_memory()").fetchone()[0]

    for _ in range(4):
        con.execute("INSERT INTO _stage (resource) SELECT repeat('x', 400) || range FROM range(20000)")
        con.execute(
            "INSERT INTO ops.ledger SELECT 'r', 's', range, 'k', 'converted', NULL, 1, 0, 1 FROM range(20000)"
        )
        assert used() > 4 << 20
        _clear(con)
        assert used() < 1 << 20
        assert con.execute("SELECT count(*) FROM _stage").fetchone() == (0,)

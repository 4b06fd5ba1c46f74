"""A run interrupted mid-convert or mid-load, then re-run: no duplicates, no gaps."""

from __future__ import annotations

import dataclasses

import pytest

from pipelines import load as load_module
from pipelines.common.warehouse import open_warehouse
from pipelines.convert.fhir.ndjson import FhirNdjsonConverter
from pipelines.run import run_pipeline
from tests.conftest import ledger, resource, write_ndjson


def _export(tmp_path):
    for name, n in (("a.ndjson", 3), ("b.ndjson", 4), ("c.ndjson", 2)):
        write_ndjson(tmp_path / "src" / name, *[resource("Patient", f"{name[0]}{i}") for i in range(n)])
    return tmp_path / "src"


def _expected_ledger():
    return [
        (f"{f}.ndjson", i + 1, "ndjson_line", "converted", None, 1)
        for f, n in (("a", 3), ("b", 4), ("c", 2))
        for i in range(n)
    ]


def _bounds(monkeypatch, **changes) -> None:
    """Narrower commit groups than schemas/scale_limits.json, so a few tiny files make several groups."""
    from pipelines.scale import limits as scale_limits

    shipped = scale_limits.limits()
    monkeypatch.setattr(scale_limits, "limits", lambda: dataclasses.replace(shipped, **changes))


@pytest.mark.parametrize(("group_files", "committed_files"), [(1, 1), (1000, 0)], ids=["per-file", "grouped"])
def test_crash_in_the_middle_of_a_file_then_rerun(
    tmp_path, make_config, warehouse, monkeypatch, group_files, committed_files
):
    src = _export(tmp_path)
    _bounds(monkeypatch, group_files=group_files)
    original = FhirNdjsonConverter._convert_batch

    def crash_in_b(self, con, params, writer, preparer, ctx, result):
        original(self, con, params, writer, preparer, ctx, result)
        if ctx.seq == 2:
            raise KeyboardInterrupt  # stopped after b.ndjson's rows were written, before its commit

    monkeypatch.setattr(FhirNdjsonConverter, "_convert_batch", crash_in_b)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(make_config(src))
    monkeypatch.setattr(FhirNdjsonConverter, "_convert_batch", original)
    rerun = run_pipeline(make_config(src))
    con = warehouse()
    assert ledger(con) == _expected_ledger()
    assert con.execute('SELECT count(*), count(DISTINCT id) FROM fhir."Patient"').fetchone() == (9, 9)
    assert con.execute("SELECT status, exit_code FROM ops.runs ORDER BY started_at").fetchall() == [
        ("interrupted", 130),
        ("succeeded", 0),
    ]
    # Alone in its group a.ndjson was committed before the crash; sharing one, it rolled back with b.
    assert rerun.files_already_processed == committed_files


def test_crash_while_merging_a_file_then_rerun(tmp_path, make_config, warehouse, monkeypatch):
    src = _export(tmp_path)

    def boom(con):
        raise RuntimeError("disk full")

    monkeypatch.setattr(load_module, "_quarantine_conflicts", boom)
    with pytest.raises(RuntimeError):
        run_pipeline(make_config(src))
    monkeypatch.undo()
    run_pipeline(make_config(src))
    con = warehouse()
    assert ledger(con) == _expected_ledger()
    assert con.execute('SELECT count(*), count(DISTINCT id) FROM fhir."Patient"').fetchone() == (9, 9)
    assert con.execute("SELECT status, exit_code FROM ops.runs ORDER BY started_at").fetchall() == [
        ("failed", 70),
        ("succeeded", 0),
    ]


def _crash_on_third_ndjson_batch(tmp_path, make_config, monkeypatch, src) -> int:
    """Run with batches of a few lines (each a commit), killed in the third; the committed units."""
    from pipelines.convert.fhir import ndjson

    monkeypatch.setattr(ndjson, "CHUNK_BYTES", 200)  # about five lines a batch, each batch a commit
    original = FhirNdjsonConverter._convert_batch
    calls = {"n": 0}

    def crash_on_third_batch(self, *args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        original(self, *args)

    monkeypatch.setattr(FhirNdjsonConverter, "_convert_batch", crash_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(make_config(src))
    monkeypatch.setattr(FhirNdjsonConverter, "_convert_batch", original)
    with open_warehouse(tmp_path / "data" / "warehouse.duckdb") as con:
        assert con.execute("SELECT status FROM ops.run_files").fetchall() == [("partial",)]
        return con.execute("SELECT count(*) FROM ops.ledger").fetchone()[0]


def test_a_large_ndjson_file_commits_in_chunks_and_resumes_after_a_crash(
    tmp_path, make_config, warehouse, monkeypatch
):
    src = write_ndjson(tmp_path / "src" / "big.ndjson", *[resource("Patient", f"p{i}") for i in range(40)])
    committed = _crash_on_third_ndjson_batch(tmp_path, make_config, monkeypatch, src)
    assert 0 < committed < 40  # two batches survived the crash
    rerun = run_pipeline(make_config(src))
    con = warehouse()
    assert rerun.totals.units == 40 - committed
    assert ledger(con) == [("big.ndjson", i, "ndjson_line", "converted", None, 1) for i in range(1, 41)]
    assert con.execute('SELECT count(*), count(DISTINCT id) FROM fhir."Patient"').fetchone() == (40, 40)


def test_a_rerun_with_larger_batches_skips_the_committed_prefix_of_its_first_batch(
    tmp_path, make_config, warehouse, monkeypatch
):
    """A resumed NDJSON file whose committed lines end inside a batch: only the lines after them convert."""
    from pipelines.convert.fhir import ndjson

    src = write_ndjson(tmp_path / "src" / "big.ndjson", *[resource("Patient", f"p{i}") for i in range(30)])
    committed = _crash_on_third_ndjson_batch(tmp_path, make_config, monkeypatch, src)
    assert 0 < committed < 30
    # The re-run reads the whole file as one batch: its first `committed` lines are already in.
    monkeypatch.setattr(ndjson, "CHUNK_BYTES", 1 << 20)
    original = FhirNdjsonConverter._convert_batch
    seen: list[list[int]] = []

    def spy(self, con, *args):
        seen.append([p for (p,) in con.execute("SELECT pos FROM _lines ORDER BY pos").fetchall()])
        original(self, con, *args)

    monkeypatch.setattr(FhirNdjsonConverter, "_convert_batch", spy)
    rerun = run_pipeline(make_config(src))
    assert seen == [list(range(committed + 1, 31))]
    assert rerun.totals.units == 30 - committed
    con = warehouse()
    assert ledger(con) == [("big.ndjson", i, "ndjson_line", "converted", None, 1) for i in range(1, 31)]
    assert con.execute('SELECT count(*), count(DISTINCT id) FROM fhir."Patient"').fetchone() == (30, 30)


@pytest.mark.parametrize(("units", "resources"), [(4, 10**9), (10**9, 4)], ids=["by-units", "by-resources"])
def test_an_hl7_archive_commits_in_chunks_and_resumes_after_a_crash(
    tmp_path, make_config, warehouse, monkeypatch, units, resources
):
    from pipelines.common import unit as unit_module
    from pipelines.convert.hl7v2.converter import Hl7v2Converter

    messages = "".join(
        f"MSH|^~\\&|REG|HOSP|EHR|HOSP|2024010{1 + i % 9}0800||ADT^A04^ADT_A01|C{i}|P|2.5.1\r"
        f"PID|1||MRN{i}^^^HOSP^MR||Person{i}^Test\r\n"
        for i in range(12)
    )
    src = tmp_path / "src" / "adt.hl7"
    src.parent.mkdir()
    src.write_bytes(messages.encode())
    monkeypatch.setattr(unit_module, "CHECKPOINT_UNITS", units)
    monkeypatch.setattr(unit_module, "CHECKPOINT_RESOURCES", resources)
    original = Hl7v2Converter.convert

    def crash_at_ten(self, unit, ctx):
        if unit.position == 10:
            raise KeyboardInterrupt
        return original(self, unit, ctx)

    monkeypatch.setattr(Hl7v2Converter, "convert", crash_at_ten)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(make_config(src))
    monkeypatch.setattr(Hl7v2Converter, "convert", original)
    with open_warehouse(tmp_path / "data" / "warehouse.duckdb") as con:
        committed = con.execute("SELECT count(*) FROM ops.ledger").fetchone()[0]
    assert 0 < committed < 10  # at least one checkpoint committed before the crash at unit 10
    rerun = run_pipeline(make_config(src))
    con = warehouse()
    assert rerun.totals.units == 12 - committed
    assert [row[1:4] for row in ledger(con)] == [(i, "hl7_message", "converted") for i in range(1, 13)]
    assert con.execute('SELECT count(DISTINCT id), count(*) FROM fhir."Patient"').fetchone() == (12, 12)


def _one_message_files(folder, n):
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"m{i:03d}.hl7").write_bytes(
            f"MSH|^~\\&|REG|HOSP|EHR|HOSP|2024010{1 + i % 9}0800||ADT^A04^ADT_A01|C{i}|P|2.5.1\r"
            f"PID|1||MRN{i}^^^HOSP^MR||Person{i}^Test\r".encode()
        )
    return folder


def test_many_small_files_commit_in_groups_and_a_crash_keeps_whole_groups(
    tmp_path, make_config, warehouse, monkeypatch
):
    from pipelines.convert.hl7v2.converter import Hl7v2Converter

    src = _one_message_files(tmp_path / "src", 40)
    _bounds(monkeypatch, group_files=8)
    original = Hl7v2Converter.convert

    def crash_in_file_27(self, unit, ctx):
        if ctx.seq == 27:
            raise KeyboardInterrupt
        return original(self, unit, ctx)

    monkeypatch.setattr(Hl7v2Converter, "convert", crash_in_file_27)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(make_config(src))
    with open_warehouse(tmp_path / "data" / "warehouse.duckdb") as con:
        # Files 1-24 (three groups of eight) committed; the group of file 27 left nothing behind.
        assert con.execute(
            "SELECT status, count(*), min(seq), max(seq) FROM ops.run_files GROUP BY 1 ORDER BY 1"
        ).fetchall() == [("converted", 24, 1, 24), ("pending", 16, 25, 40)]
        assert con.execute("SELECT count(*), count(DISTINCT file_sha256) FROM ops.ledger").fetchone() == (
            24,
            24,
        )
        assert con.execute('SELECT count(*) FROM fhir."Patient"').fetchone() == (24,)
    monkeypatch.setattr(Hl7v2Converter, "convert", original)
    rerun = run_pipeline(make_config(src))
    assert (rerun.totals.units, rerun.files_already_processed) == (16, 24)
    con = warehouse()
    assert [row[:4] for row in ledger(con)] == [
        (f"m{i:03d}.hl7", 1, "hl7_message", "converted") for i in range(40)
    ]
    assert con.execute('SELECT count(*), count(DISTINCT id) FROM fhir."Patient"').fetchone() == (40, 40)


def test_a_crash_while_the_writer_merges_a_group_then_rerun(tmp_path, make_config, warehouse, monkeypatch):
    from pipelines.scale import writer

    src = _one_message_files(tmp_path / "src", 30)
    _bounds(monkeypatch, group_files=5)
    original = writer.merge_stage
    merges = {"n": 0}

    def crash_after_fourth_merge(con):
        merges["n"] += 1
        result = original(con)
        if merges["n"] == 4:
            raise KeyboardInterrupt  # merged into fhir.*, then died before the group's commit
        return result

    monkeypatch.setattr(writer, "merge_stage", crash_after_fourth_merge)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(make_config(src))
    with open_warehouse(tmp_path / "data" / "warehouse.duckdb") as con:
        assert con.execute("SELECT count(*) FROM ops.ledger").fetchone() == (15,)
        assert con.execute('SELECT count(*) FROM fhir."Patient"').fetchone() == (15,)
    monkeypatch.setattr(writer, "merge_stage", original)
    rerun = run_pipeline(make_config(src))
    assert (rerun.totals.units, rerun.files_already_processed) == (15, 15)
    con = warehouse()
    assert len(ledger(con)) == 30
    assert con.execute('SELECT count(*), count(DISTINCT id) FROM fhir."Patient"').fetchone() == (30, 30)


def test_a_large_archive_cut_into_slices_resumes_after_the_last_committed_slice(
    tmp_path, make_config, warehouse, monkeypatch
):
    from pipelines.convert.hl7v2.converter import Hl7v2Converter

    src = tmp_path / "src" / "adt.hl7"
    src.parent.mkdir()
    src.write_bytes(
        "".join(
            f"MSH|^~\\&|REG|HOSP|EHR|HOSP|2024010{1 + i % 9}0800||ADT^A04^ADT_A01|C{i}|P|2.5.1\r"
            f"PID|1||MRN{i}^^^HOSP^MR||Person{i}^Test\r\n"
            for i in range(31)
        ).encode()
    )
    _bounds(
        monkeypatch, group_bytes=512, slice_bytes=512, slice_units=5
    )  # the ~2.9 kB archive is cut into slices
    original = Hl7v2Converter.convert

    def crash_at_23(self, unit, ctx):
        if unit.position == 23:
            raise KeyboardInterrupt
        return original(self, unit, ctx)

    monkeypatch.setattr(Hl7v2Converter, "convert", crash_at_23)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(make_config(src, workers=1))
    with open_warehouse(tmp_path / "data" / "warehouse.duckdb") as con:
        assert con.execute("SELECT count(*), max(unit_position) FROM ops.ledger").fetchone() == (20, 20)
        assert con.execute("SELECT status FROM ops.run_files").fetchall() == [("partial",)]
    monkeypatch.setattr(Hl7v2Converter, "convert", original)
    rerun = run_pipeline(make_config(src, workers=1))
    assert rerun.totals.units == 11
    con = warehouse()
    assert [row[1:4] for row in ledger(con)] == [(i, "hl7_message", "converted") for i in range(1, 32)]
    assert con.execute('SELECT count(DISTINCT id), count(*) FROM fhir."Patient"').fetchone() == (31, 31)

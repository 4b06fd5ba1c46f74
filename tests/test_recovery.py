"""A run interrupted mid-convert or mid-load, then re-run: no duplicates, no gaps."""

from __future__ import annotations

import pytest

from pipelines import load as load_module
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


def test_crash_in_the_middle_of_a_file_then_rerun(tmp_path, make_config, warehouse, monkeypatch):
    src = _export(tmp_path)
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
        ("failed", 130),
        ("succeeded", 0),
    ]
    assert rerun.files_already_processed == 1  # a.ndjson was committed before the crash


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

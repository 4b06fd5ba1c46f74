"""A resumed NDJSON file whose committed lines end inside a batch: only the lines after them convert."""

from __future__ import annotations

import pytest

from pipelines.common.warehouse import open_warehouse
from pipelines.convert.fhir import ndjson
from pipelines.convert.fhir.ndjson import FhirNdjsonConverter
from pipelines.run import run_pipeline
from tests.conftest import ledger, resource, write_ndjson


def test_a_rerun_with_larger_batches_skips_the_committed_prefix_of_its_first_batch(
    tmp_path, make_config, warehouse, monkeypatch
):
    src = write_ndjson(tmp_path / "src" / "big.ndjson", *[resource("Patient", f"p{i}") for i in range(30)])
    monkeypatch.setattr(ndjson, "CHUNK_BYTES", 200)  # a few lines a batch, each batch a commit
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
    with open_warehouse(tmp_path / "data" / "warehouse.duckdb") as con:
        committed = con.execute("SELECT count(*) FROM ops.ledger").fetchone()[0]
    assert 0 < committed < 30
    # The re-run reads the whole file as one batch: its first `committed` lines are already in.
    monkeypatch.setattr(FhirNdjsonConverter, "_convert_batch", original)
    monkeypatch.setattr(ndjson, "CHUNK_BYTES", 1 << 20)
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

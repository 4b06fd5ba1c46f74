"""A large NDJSON file cut into byte ranges: the cuts, and a split file converting as an unsplit one."""

from __future__ import annotations

import orjson
import pytest

from pipelines.common.config import RunConfig
from pipelines.convert.fhir import ndjson
from pipelines.run import land_stage
from pipelines.scale import ranges
from tests.test_scale import RUN_ID, _contents, _convert


def _line(i: int) -> bytes:
    patient = {"resourceType": "Patient", "id": f"p{i % 23}", "name": [{"family": "x" * (i % 40)}]}
    if i % 5 == 0:
        patient["meta"] = {"lastUpdated": f"2024-01-{1 + i % 28:02d}T00:00:00Z"}  # later versions recur
    return orjson.dumps(patient)


def _export(path, n: int = 120, *, end: bytes = b"\n") -> None:
    """Lines of Patients whose ids recur (identical, newer and conflicting versions across ranges), with
    a BOM, blank lines, a bad line and a line longer than a converter chunk."""
    lines = [_line(i) for i in range(n)]
    lines[7] = b""
    lines[8] = b"   "
    lines[30] = b'{"resourceType": "Patient", '
    lines[50] = orjson.dumps({"resourceType": "Observation", "id": "long", "note": "y" * 900})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xef\xbb\xbf" + b"\n".join(lines) + end)


def _batch_ends(path) -> list[int]:
    """Where the one-process converter closes its batches."""
    return [end for _batch, end in ndjson._line_batches(path)]


@pytest.mark.parametrize("end", [b"\n", b"", b"\n\n"], ids=["newline", "unterminated", "blank-last"])
@pytest.mark.parametrize("read_bytes", [7, 1 << 20], ids=["small-reads", "one-read"])
def test_cuts_fall_where_the_converter_closes_its_batches(tmp_path, monkeypatch, end, read_bytes):
    path = tmp_path / "a.ndjson"
    _export(path, end=end)
    monkeypatch.setattr(ndjson, "CHUNK_BYTES", 256)
    monkeypatch.setattr(ranges, "READ_BYTES", read_bytes)  # a cut may fall in an earlier read
    cuts, lines = ranges._cuts(path, 256)
    assert cuts[1:] == _batch_ends(path)
    assert cuts[0] == 0 and cuts[-1] == path.stat().st_size
    data = path.read_bytes()
    assert lines[:-1] == [data[:c].count(b"\n") for c in cuts[:-1]]
    assert lines[-1] == sum(len(b.column("pos")) for b, _ in ndjson._line_batches(path))


def test_a_split_file_converts_exactly_as_an_unsplit_one_in_one_process_and_pooled(tmp_path, monkeypatch):
    src = tmp_path / "src"
    _export(src / "big.ndjson", 400, end=b"")
    (src / "small.ndjson").write_bytes(_line(3) + b"\n")
    monkeypatch.setattr(ndjson, "CHUNK_BYTES", 2048)  # ~20 batches: the planner cuts ~20 ranges
    cut = []
    monkeypatch.setattr(
        ranges, "cut_ranges", lambda *a, _real=ranges.cut_ranges: cut.append(r := _real(*a)) or r
    )
    monkeypatch.setattr("pipelines.scale.cut_ranges", ranges.cut_ranges)
    monkeypatch.setattr("pipelines.scale.limits.limits", _pool_from_zero())
    split_totals, split = _convert(tmp_path, "split", src, workers=1)
    assert cut and len(cut[0]) > 10
    pooled_totals, pooled = _convert(tmp_path, "pooled", src, workers=2)
    monkeypatch.setattr("pipelines.scale.rangeable", lambda work: False)
    whole_totals, whole = _convert(tmp_path, "whole", src, workers=1)
    assert split == whole
    assert pooled == whole
    assert pooled_totals["worker_processes"] == 2  # the ranges of the one file went to both workers
    for totals in (split_totals, pooled_totals):
        assert {k: v for k, v in totals.items() if k != "worker_processes"} == {
            k: v for k, v in whole_totals.items() if k != "worker_processes"
        }
    ledger = whole["ops.ledger"]
    assert len(ledger) == 401  # every line of the big file is one unit, and the small file's one
    assert {row[4] for row in ledger} == {"converted", "quarantined", "skipped"}
    assert whole_totals["units"] == 401


def _pool_from_zero():
    import dataclasses

    from pipelines.scale import limits as scale_limits

    shipped = scale_limits.limits()
    return lambda: dataclasses.replace(shipped, pool_min_bytes=0, group_bytes=1024)  # the big file goes alone


def test_ranges_after_a_crash_start_where_the_committed_lines_end(tmp_path, monkeypatch):
    from pipelines.common.config import RunConfig
    from pipelines.scale.plan import FileWork

    path = tmp_path / "data" / "landing" / "x"
    _export(path, 200)
    monkeypatch.setattr(ndjson, "CHUNK_BYTES", 512)
    monkeypatch.setattr("pipelines.scale.slices.landed_path", lambda config, sha: path)
    config = RunConfig(sources=(str(path),), warehouse=tmp_path / "data" / "w.duckdb", run_id=RUN_ID)
    size = path.stat().st_size
    fresh = ranges.cut_ranges(
        config, FileWork(1, "0" * 64, "fhir-ndjson", None, size, None, "s", "fhir-ndjson", 0, True), 3
    )
    assert [p.index for p in fresh] == list(range(3, 3 + len(fresh)))
    assert sum(p.bytes for p in fresh) == size
    assert fresh[-1].last and fresh[-1].total_units == 200
    # An interrupted run committed the lines of the first two ranges and part of the third.
    resume = fresh[2].byte_range[2] + 1
    work = FileWork(1, "0" * 64, "fhir-ndjson", None, size, None, "s", "fhir-ndjson", resume, True)
    again = ranges.cut_ranges(config, work, 0)
    assert [p.byte_range for p in again] == [p.byte_range for p in fresh[2:]]
    assert again[-1].total_units == 200 - resume
    assert sum(p.bytes for p in again) == size  # what committed counts as done on the progress bar


def test_the_dag_chunks_carry_the_ranges_and_merge_to_the_same_warehouse(tmp_path, monkeypatch):
    from pipelines.scale import chunks

    src = tmp_path / "src"
    _export(src / "big.ndjson", 300)
    monkeypatch.setattr(ndjson, "CHUNK_BYTES", 2048)
    monkeypatch.setattr("pipelines.scale.limits.limits", _pool_from_zero())
    _single_totals, single = _convert(tmp_path, "single", src, workers=1)
    config = RunConfig(
        sources=(str(src),), warehouse=tmp_path / "dag" / "warehouse.duckdb", progress=False, run_id=RUN_ID
    )
    land_stage(config)
    planned = chunks.plan(config, max_chunks=3)
    assert len(planned) == 3 and all("byte_range" in t["slice"] for c in planned for t in c["tasks"])
    for chunk in reversed(planned):  # converted anywhere, in any order
        chunks.convert(config, orjson.loads(orjson.dumps(chunk)))
    chunks.merge(config, planned)
    assert _contents(config.warehouse) == single

"""Converting NDJSON streams: Python's peak memory does not grow with the file (traced allocations)."""

from __future__ import annotations

import tracemalloc

import orjson

from pipelines.convert.fhir import ndjson
from pipelines.run import convert_stage, land_stage


def _file(path, lines: int):
    with path.open("wb") as fh:
        for i in range(lines):
            fh.write(
                orjson.dumps(
                    {
                        "resourceType": "Observation",
                        "id": f"o{i}",
                        "status": "final",
                        "subject": {"reference": f"Patient/p{i % 50}"},
                        "valueQuantity": {"value": i / 7, "unit": "mg/dL"},
                    }
                )
                + b"\n"
            )
    return path


def _peak_while_converting(tmp_path, make_config, lines: int) -> int:
    (tmp_path / f"in-{lines}").mkdir()
    src = _file(tmp_path / f"in-{lines}" / "Observation.ndjson", lines)
    config = make_config(src, warehouse=tmp_path / f"wh-{lines}" / "warehouse.duckdb")
    land_stage(config)
    tracemalloc.start()
    try:
        totals = convert_stage(config)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert totals["resources"] == lines
    return peak


def test_peak_memory_is_flat_as_the_file_grows_tenfold(tmp_path, make_config, monkeypatch):
    monkeypatch.setattr(ndjson, "CHUNK_BYTES", 256 * 1024)  # many batches even for a small test file
    _peak_while_converting(tmp_path, make_config, 100)  # first use imports modules: not the file's cost
    small = _peak_while_converting(tmp_path, make_config, 4_000)
    large = _peak_while_converting(tmp_path, make_config, 40_000)
    assert large < small * 1.5, (small, large)

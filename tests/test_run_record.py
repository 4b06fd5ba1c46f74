"""The run record: each stage's seconds, CPU seconds and peak RSS in ops.run_stages and the run JSON."""

from __future__ import annotations

import orjson

from pipelines.cli import main
from pipelines.common.stages import STAGES
from pipelines.common.warehouse import open_warehouse
from tests.conftest import resource, write_ndjson

PATIENT = resource(
    "Patient",
    "p1",
    gender="female",
    birthDate="1970-01-02",
    identifier=[{"system": "urn:mrn", "value": "MRN-1"}],
)


def _stages(wh) -> list[tuple]:
    with open_warehouse(wh, read_only=True) as con:
        return con.execute(
            "SELECT run_id, stage, seconds, cpu_seconds, peak_rss_mb FROM ops.run_stages ORDER BY started_at"
        ).fetchall()


def test_a_run_records_every_stage_in_the_warehouse_and_its_json(tmp_path, capsys):
    src = write_ndjson(tmp_path / "src" / "p.ndjson", PATIENT)
    wh = tmp_path / "data" / "warehouse.duckdb"
    assert main(["run", str(src), "--warehouse", str(wh), "--no-progress"]) == 0
    assert "stage seconds: land " in capsys.readouterr().out
    rows = _stages(wh)
    assert [r[1] for r in rows] == list(STAGES)
    (run_id,) = {r[0] for r in rows}
    for _, _, seconds, cpu, rss in rows:
        assert seconds >= 0 and cpu >= 0 and rss > 0
    # The process's peak only grows, stage after stage.
    assert [r[4] for r in rows] == sorted(r[4] for r in rows)
    report = orjson.loads((tmp_path / "data" / "runs" / f"{run_id}.json").read_bytes())
    assert set(report["summary"]["stages"]) == set(STAGES)  # the JSON's keys are sorted
    assert report["summary"]["stages"]["convert"]["seconds"] == rows[1][2]
    with open_warehouse(wh, read_only=True) as con:
        (summary,) = con.execute("SELECT summary FROM ops.runs").fetchone()
    assert orjson.loads(summary)["stages"] == report["summary"]["stages"]


def test_orchestrated_stages_record_themselves(tmp_path):
    from pipelines import tasks

    src = write_ndjson(tmp_path / "src" / "p.ndjson", PATIENT)
    config = tasks.configure([str(src)], warehouse=str(tmp_path / "wh" / "warehouse.duckdb"))
    for task in (tasks.land, tasks.convert, tasks.normalize, tasks.identify, tasks.load, tasks.validate):
        task(config)
    tasks.load(config)  # a retried task adds a row; the summary keeps its latest attempt
    rows = _stages(tmp_path / "wh" / "warehouse.duckdb")
    assert [r[1] for r in rows] == [*STAGES, "load"]

"""The orchestrator entry points: final errors fail at once, an absolute default warehouse, a report task
whose counts are the CLI's."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines import tasks
from pipelines.cli import main
from pipelines.common.errors import ConfigError, EhrliftError, ExitCode, InputNotFoundError
from pipelines.common.warehouse import open_warehouse
from pipelines.export.web import RemoteError
from pipelines.summary import build_summary
from tests.conftest import resource, write_ndjson

FailFast = pytest.importorskip("airflow.sdk.exceptions").AirflowFailException


class TerminologyError(EhrliftError):
    exit_code = ExitCode.TERMINOLOGY


@pytest.mark.parametrize(
    ("error", "status"),
    [(InputNotFoundError("x"), 3), (ConfigError("x"), 5), (TerminologyError("x"), 6)],
    ids=["input-not-found", "config", "terminology"],
)
def test_errors_a_retry_cannot_change_fail_the_task_at_once(error, status):
    @tasks.fail_fast
    def stage():
        raise error

    with pytest.raises(FailFast, match=f"exit status {status}: x") as caught:
        stage()
    assert caught.value.__cause__ is error


def test_other_errors_keep_their_retries():
    @tasks.fail_fast
    def stage():
        raise RemoteError("the server answered 503")

    with pytest.raises(RemoteError):  # a remote fault may pass: Airflow retries it
        stage()


def test_a_missing_source_fails_the_land_task_at_once(tmp_path):
    config = tasks.configure([str(tmp_path / "nowhere")], warehouse=str(tmp_path / "w.duckdb"))
    with pytest.raises(FailFast, match="exit status 3"):
        tasks.land(config)


def test_a_null_warehouse_is_absolute_under_airflow_home(tmp_path, monkeypatch):
    monkeypatch.delenv("EHRLIFT_WAREHOUSE", raising=False)
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "af"))
    monkeypatch.chdir(tmp_path)
    config = tasks.configure(["src"])
    assert config["warehouse"] == str((tmp_path / "af" / "ehrlift-data" / "warehouse.duckdb").resolve())
    monkeypatch.setenv("EHRLIFT_WAREHOUSE", "rel/w.duckdb")
    assert tasks.configure(["src"])["warehouse"] == str(tmp_path / "rel" / "w.duckdb")
    assert tasks.configure(["src"], warehouse="mine.duckdb")["warehouse"] == str(tmp_path / "mine.duckdb")


def test_the_report_task_returns_the_counts_the_cli_prints(tmp_path, capsys):
    patient = resource("Patient", "p1", gender="female")
    src = write_ndjson(tmp_path / "src" / "a.ndjson", patient, b"{broken", resource("Patient", "p2"))
    wh = tmp_path / "data" / "warehouse.duckdb"
    assert main(["run", str(src), "--warehouse", str(wh), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    with open_warehouse(wh, read_only=True) as con:
        (run_id,) = con.execute("SELECT run_id FROM ops.runs").fetchone()
        summary = build_summary(con, run_id)
    config = tasks.configure([str(src)], warehouse=str(wh))
    config["run_id"] = run_id
    out = tasks.report(config)
    assert out["units"] == {"in": 3, "converted": 2, "quarantined": 1, "skipped": 0}
    assert out["resources_loaded"] == {"total": 2, "by_type": {"Patient": 2}}
    assert out["quarantine_reasons"] == {"invalid_json": 1} == summary.quarantine_reasons
    assert out["status"] == "succeeded" and out["reconciles"] is True
    # The CLI's total row: files, units in, converted, quarantined, skipped.
    (row,) = [line for line in printed.splitlines() if line.strip("│ ").startswith("total")]
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    assert cells[1:] == ["1", *(str(out["units"][k]) for k in ("in", "converted", "quarantined", "skipped"))]
    assert Path(out["report"]).is_file() and Path(out["report_data"]).is_file()

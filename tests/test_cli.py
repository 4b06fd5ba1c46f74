"""The command line: clear one-line errors and documented exit statuses."""

from __future__ import annotations

import subprocess
import sys

import orjson

from pipelines.cli import main
from pipelines.common.errors import ExitCode
from tests.conftest import resource, write_ndjson


def test_missing_source_is_one_line_and_exit_3(tmp_path, capsys):
    code = main(["run", str(tmp_path / "nope"), "--warehouse", str(tmp_path / "w.duckdb"), "--no-progress"])
    assert code == ExitCode.INPUT_NOT_FOUND == 3
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: source not found:")
    assert len(err.splitlines()) <= 2  # rich may wrap a long path, never a traceback


def test_brackets_in_paths_print_as_written(tmp_path, capsys):
    # "[/x]" would be a closing markup tag to the terminal printer: it must be shown, not parsed.
    missing = tmp_path / "[2024]" / "[/x]"
    code = main(["run", str(missing), "--warehouse", str(tmp_path / "w.duckdb"), "--no-progress"])
    assert code == ExitCode.INPUT_NOT_FOUND
    assert "[2024]/[/x]" in capsys.readouterr().err.replace("\n", "")


def test_bad_source_system_is_a_config_error(tmp_path, capsys):
    src = write_ndjson(tmp_path / "a.ndjson", resource("Patient", "1"))
    code = main(["run", str(src), "--warehouse", str(tmp_path / "w.duckdb"), "--source-system", "bad name!"])
    assert code == ExitCode.CONFIG
    assert "source system name" in capsys.readouterr().err


def test_warehouse_locked_by_another_process_is_exit_4(tmp_path, capsys):
    src = write_ndjson(tmp_path / "a.ndjson", resource("Patient", "1"))
    wh = tmp_path / "w.duckdb"
    assert main(["run", str(src), "--warehouse", str(wh), "--no-progress"]) == 0
    capsys.readouterr()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, sys; c = duckdb.connect({str(wh)!r}); print('held', flush=True); "
            "sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        code = main(["run", str(src), "--warehouse", str(wh), "--no-progress"])
    finally:
        holder.communicate("")
    assert code == ExitCode.WAREHOUSE == 4
    err = capsys.readouterr().err
    assert "is open in another process" in err


def test_run_prints_summary_and_warehouse_path(tmp_path, capsys):
    src = write_ndjson(tmp_path / "a.ndjson", resource("Patient", "1"), b"{oops")
    code = main(["run", str(src), "--warehouse", str(tmp_path / "w.duckdb"), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "ledger reconciles (units = converted + quarantined + skipped): yes" in out
    assert f"warehouse: {(tmp_path / 'w.duckdb').resolve()}" in out
    assert "quarantined: invalid_json 1" in out
    reports = list((tmp_path / "runs").glob("run-*.json"))
    assert len(reports) == 1 and f"run report: {reports[0].resolve()}" in out
    report = orjson.loads(reports[0].read_bytes())
    assert report["summary"]["totals"] == {
        "files": 1,
        "units": 2,
        "converted": 1,
        "quarantined": 1,
        "skipped": 0,
    }
    assert report["config"]["source_system"] == "default"

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


def test_a_mistyped_source_records_no_run(tmp_path, capsys):
    src = write_ndjson(tmp_path / "a.ndjson", resource("Patient", "1"))
    wh = tmp_path / "w.duckdb"
    assert main(["run", str(tmp_path / "nope"), "--warehouse", str(wh), "--no-progress"]) == 3
    assert not wh.exists()  # nothing was opened, so nothing was recorded
    assert main(["run", str(src), "--warehouse", str(wh), "--no-progress"]) == 0
    assert main(["run", str(tmp_path / "nope"), "--warehouse", str(wh), "--no-progress"]) == 3
    capsys.readouterr()
    assert main(["runs", "--warehouse", str(wh)]) == 0
    listing = capsys.readouterr().out
    assert listing.count("run-") == 1 and "succeeded" in listing and "failed" not in listing


def test_runs_lists_newest_first_with_unit_counts(tmp_path, capsys):
    wh = tmp_path / "w.duckdb"
    first = write_ndjson(tmp_path / "a.ndjson", resource("Patient", "1"), b"{oops")
    second = write_ndjson(tmp_path / "b.ndjson", resource("Patient", "2"))
    assert main(["run", str(first), "--warehouse", str(wh), "--no-progress"]) == 0
    assert main(["run", str(second), "--warehouse", str(wh), "--no-progress"]) == 0
    # runs/<id>.json per run (the identity stage may write runs/<id>.identity-model.json beside it)
    reports = sorted((tmp_path / "runs").glob("run-*.json"), key=lambda p: p.stat().st_mtime)
    reports = [p for p in reports if "." not in p.stem]
    ids = [p.stem for p in reports]
    capsys.readouterr()
    assert main(["runs", "--warehouse", str(wh), "--limit", "5"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "run-" in line]
    assert all(row.split()[4] == "0" for row in rows)  # date, time, status, then the exit status
    assert [next(i for i in ids if i in row) for row in rows] == ids[::-1]
    # files, units in, converted, quarantined, skipped, resources of the first run
    assert rows[1].split()[-6:] == ["1", "2", "1", "1", "0", "1"]


def test_runs_on_a_warehouse_without_runs(tmp_path, capsys):
    from pipelines.common.warehouse import open_warehouse

    open_warehouse(tmp_path / "w.duckdb").close()
    assert main(["runs", "--warehouse", str(tmp_path / "w.duckdb")]) == 0
    assert "no run is recorded" in capsys.readouterr().out


def test_verbose_after_the_subcommand(tmp_path):
    src = write_ndjson(tmp_path / "a.ndjson", resource("Patient", "1"))
    wh = tmp_path / "w.duckdb"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "run",
            str(src),
            "--warehouse",
            str(wh),
            "--no-progress",
            "-v",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert " INFO pipelines." in proc.stderr
    quiet = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "runs", "--warehouse", str(wh)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert quiet.returncode == 0 and " INFO " not in quiet.stderr

"""Ctrl-C while ehrlift is still loading, and which `running` runs the next run may call interrupted."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

from pipelines.common.warehouse import open_warehouse
from pipelines.resume import mark_orphans, mark_stage, pending_runs
from pipelines.resume.owner import process_started

ROOT = Path(__file__).resolve().parents[1]

# SIGINT arrives while `rich` (imported by the CLI module) is being imported, as a Ctrl-C typed right
# after pressing Enter does.
_WHILE_IMPORTING = """
import os, signal, sys
class Hook:
    def find_spec(self, name, path=None, target=None):
        if name == "rich":
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, Hook())
from pipelines.entry import main
sys.exit(main())
"""


def test_ctrl_c_while_still_importing_exits_130_without_a_traceback():
    done = subprocess.run(
        [sys.executable, "-c", _WHILE_IMPORTING, "--version"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 130
    assert "Traceback" not in done.stderr
    assert "interrupted" in done.stderr


def test_the_console_script_is_the_entry_that_catches_it():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["ehrlift"] == "pipelines.entry:main"


def test_only_runs_whose_process_is_gone_are_marked_interrupted(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    me, host = os.getpid(), socket.gethostname()
    owners = {
        "live": (host, me, process_started(me)),
        "killed": (host, gone.pid, "1"),
        "pid-reused": (host, me, "1"),  # same pid, a different (younger) process now
        "other-host": ("elsewhere.invalid", gone.pid, "1"),  # cannot be checked from here: left alone
    }
    with open_warehouse(tmp_path / "w.duckdb") as con:
        for run in [*owners, "orchestrated"]:  # an Airflow run records no owner: its tasks come and go
            con.execute(
                "INSERT INTO ops.runs VALUES (?, now(), NULL, 'running', NULL, 'x', '{}', NULL)", [run]
            )
        for run, (h, pid, started) in owners.items():
            con.execute("INSERT INTO ops.run_owners VALUES (?, ?, ?, ?, now())", [run, h, pid, started])
        assert sorted(mark_orphans(con, "next")) == ["killed", "pid-reused"]
        status = dict(con.execute("SELECT run_id, status FROM ops.runs").fetchall())
    assert status == {
        "live": "running",
        "killed": "interrupted",
        "pid-reused": "interrupted",
        "other-host": "running",
        "orchestrated": "running",
    }


def test_upgrading_marks_earlier_runs_covered_and_later_unfinished_runs_are_pending(tmp_path):
    path = tmp_path / "w.duckdb"
    with open_warehouse(path) as con:  # made to look like a contract-12 warehouse with a failed run
        con.execute("DROP TABLE ops.stage_marks; DROP TABLE ops.run_owners")
        con.execute("DELETE FROM ops.schema_version; INSERT INTO ops.schema_version VALUES (12, now())")
        con.execute("INSERT INTO ops.runs VALUES ('old', now(), now(), 'failed', 70, 'x', '{}', NULL)")
    with open_warehouse(path) as con:
        # Runs from before the upgrade count as covered: their decisions are not logged twice.
        assert pending_runs(con, "normalize", "next") == ["next"]
        con.execute(
            "INSERT INTO ops.runs VALUES ('killed', now(), now(), 'interrupted', NULL, 'x', '{}', NULL)"
        )
        con.execute("INSERT INTO ops.runs VALUES ('live', now(), NULL, 'running', NULL, 'x', '{}', NULL)")
        assert pending_runs(con, "normalize", "next") == ["killed", "next"]
        mark_stage(con, "normalize", ["killed", "next"], "next")
        assert pending_runs(con, "normalize", "later") == ["later"]
        assert pending_runs(con, "load", "later") == ["killed", "later"]

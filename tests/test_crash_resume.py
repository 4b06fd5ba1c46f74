"""kill -9 at points of a demo run, then a re-run: the ledger, resources, views and audit of a clean run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from pipelines.demo import generate_demo_data

ROOT = Path(__file__).resolve().parents[1]


def ehrlift(sources: Path, warehouse: Path, point: str | None = None, sig: str = "KILL"):
    """`ehrlift run` in a child process, signalled at `point` (tests/crash_points.py)."""
    argv = ["run", str(sources), "--warehouse", str(warehouse), "--no-progress", "--source-system", "demo"]
    cmd = [sys.executable, "-m", "tests.crash_points", point or "none", sig, "--", *argv]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=os.environ.copy())


def snapshot(path: Path) -> dict[str, list[tuple]]:
    """What a run leaves that must not depend on kills: ledger, stored resources, views, audit totals."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        out = {
            "ledger": con.execute(
                "SELECT f.original_name, l.unit_position, l.unit_kind, l.outcome, l.reason, l.resource_count "
                "FROM ops.ledger l JOIN ops.files f USING (file_sha256) ORDER BY ALL"
            ).fetchall(),
            "quarantine": con.execute(
                "SELECT file_sha256, unit_position, reason_code, message FROM ops.quarantine ORDER BY ALL"
            ).fetchall(),
            # Every decision and how often it applied, over all runs: the audit of the whole warehouse.
            "mapping_log": con.execute(
                "SELECT source_system, source_code, source_display, target_system, target_code, "
                "target_display, method, reason, data_source, kind, sum(occurrences)::BIGINT "
                "FROM ops.mapping_log GROUP BY ALL ORDER BY ALL"
            ).fetchall(),
        }
        for schema in ("fhir", "views"):
            tables = con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE schema_name = ? ORDER BY 1", [schema]
            ).fetchall()
            for (table,) in tables:
                columns = [
                    c
                    for (c,) in con.execute(
                        "SELECT column_name FROM duckdb_columns() WHERE schema_name = ? AND table_name = ? "
                        "AND column_name <> 'run_id' ORDER BY column_index",
                        [schema, table],
                    ).fetchall()
                ]
                select = ", ".join(f'"{c}"::VARCHAR' for c in columns)
                out[f"{schema}.{table}"] = con.execute(
                    f'SELECT {select} FROM {schema}."{table}" ORDER BY ALL'
                ).fetchall()
        return out
    finally:
        con.close()


def runs(path: Path) -> list[tuple]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute("SELECT status, exit_code FROM ops.runs ORDER BY started_at").fetchall()
    finally:
        con.close()


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, dict[str, list[tuple]]]:
    """The demo's sources (every format, a few patients) and a clean run's snapshot."""
    root = tmp_path_factory.mktemp("crash_demo")
    generate_demo_data(root / "demo", patients=3, seed=5, ccda=True)
    sources = root / "demo" / "sources"
    done = ehrlift(sources, root / "clean" / "warehouse.duckdb")
    assert done.returncode == 0, done.stderr
    return sources, snapshot(root / "clean" / "warehouse.duckdb")


def assert_same(got: dict[str, list[tuple]], want: dict[str, list[tuple]]) -> None:
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key] == want[key], key


@pytest.mark.parametrize(
    "points",
    [
        ["before:normalize"],
        ["normalize:3"],
        # several kill-and-resume cycles on one warehouse, each killed at a later point
        ["convert:2", "before:normalize", "normalize:2", "before:identify", "before:load", "before:validate"],
    ],
    ids=lambda p: "+".join(p),
)
def test_kill_then_rerun_leaves_what_a_clean_run_leaves(tmp_path, demo, points):
    sources, clean = demo
    wh = tmp_path / "warehouse.duckdb"
    for point in points:
        killed = ehrlift(sources, wh, point)
        assert killed.returncode == -9, (point, killed.returncode, killed.stderr[-2000:])
    resumed = ehrlift(sources, wh)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # Every killed run is marked interrupted by the run after it; none stays `running`.
    assert runs(wh) == [("interrupted", None)] * len(points) + [("succeeded", 0)]
    assert_same(snapshot(wh), clean)


@pytest.mark.parametrize("point", ["convert:2", "duckdb:normalize"])
def test_ctrl_c_exits_130_records_interrupted_and_the_rerun_resumes(tmp_path, demo, point):
    sources, clean = demo
    wh = tmp_path / "warehouse.duckdb"
    stopped = ehrlift(sources, wh, point, "INT")
    # DuckDB ends an interrupted query with an ordinary error: still 130 and "re-run", never a bug (70).
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    assert "re-run the same command to resume" in stopped.stderr
    assert "Traceback" not in stopped.stderr and "internal error" not in stopped.stderr
    assert runs(wh) == [("interrupted", 130)]
    assert ehrlift(sources, wh).returncode == 0
    assert runs(wh) == [("interrupted", 130), ("succeeded", 0)]
    assert_same(snapshot(wh), clean)


def test_a_second_run_on_the_same_warehouse_exits_4_and_corrupts_nothing(tmp_path, demo):
    sources, clean = demo
    wh = tmp_path / "warehouse.duckdb"
    env = {**os.environ, "CRASH_POINT_DIR": str(tmp_path)}
    argv = ["run", str(sources), "--warehouse", str(wh), "--no-progress", "--source-system", "demo"]
    first = subprocess.Popen(
        [sys.executable, "-m", "tests.crash_points", "before:normalize", "WAIT", "--", *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(1200):  # converted, holding before normalize (the warehouse held open)
            if (tmp_path / "paused").exists() or first.poll() is not None:
                break
            time.sleep(0.1)
        assert (tmp_path / "paused").exists(), first.communicate()[1][-2000:]
        second = ehrlift(sources, wh)
        assert second.returncode == 4
        assert "in use by another run" in second.stderr and "Traceback" not in second.stderr
        # The live first run is neither marked interrupted nor disturbed: it holds the warehouse for its
        # whole length, and the refused run stopped at the run lock before opening it.
        (tmp_path / "go").touch()
        _, err = first.communicate(timeout=300)
        assert first.returncode == 0, err[-2000:]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert runs(wh) == [("succeeded", 0)]  # the refused run recorded nothing
    assert_same(snapshot(wh), clean)

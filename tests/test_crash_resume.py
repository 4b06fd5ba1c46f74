"""kill -9 at points of a demo run, then a re-run: the ledger, resources, views and audit of a clean run."""

from __future__ import annotations

import os
import subprocess
import sys
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
        ["before:load"],
        ["before:validate"],
        # several kill-and-resume cycles on one warehouse, each killed at a later point
        ["convert:2", "before:normalize", "normalize:2", "before:identify", "before:load"],
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

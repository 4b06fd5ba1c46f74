"""Stage watermarks: which runs' converted resources each later stage has covered (ops.stage_marks).

A stage that finishes writes one mark per run whose resources it covered, in the same transaction as
its own results. A run killed between convert and normalize (or any later stage) has no mark for the
stages it missed, so the next run's stages take its resources too: the watermark is "what no run has
finished", never "what this run wrote". Identity needs no mark: it relinks the whole warehouse.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb

# The run-scoped stages after convert; each covers the runs pending_runs() names, then marks them.
RESUMED_STAGES = ("normalize", "load", "validate")
# A run in one of these states will not finish its own stages: the next run takes them over.
_ENDED_UNFINISHED = ("interrupted", "failed")


def pending_runs(con: duckdb.DuckDBPyConnection, stage: str, run_id: str) -> list[str]:
    """This run and every ended, unfinished run whose resources `stage` has not covered, oldest first."""
    _check(stage)
    rows = con.execute(
        """
        SELECT r.run_id FROM ops.runs r
        WHERE r.run_id <> ? AND list_contains(?, r.status)
          AND NOT EXISTS (SELECT 1 FROM ops.stage_marks m WHERE m.run_id = r.run_id AND m.stage = ?)
        ORDER BY r.started_at, r.run_id
        """,
        [run_id, list(_ENDED_UNFINISHED), stage],
    ).fetchall()
    return [r[0] for r in rows] + [run_id]


def mark_stage(con: duckdb.DuckDBPyConnection, stage: str, run_ids: Sequence[str], by_run: str) -> None:
    """Record that `stage` covered these runs' resources (call inside the stage's last transaction)."""
    _check(stage)
    con.execute(
        "INSERT OR IGNORE INTO ops.stage_marks SELECT unnest(?::VARCHAR[]), ?, ?, now()",
        [list(run_ids), stage, by_run],
    )


def run_filter(run_ids: Sequence[str], column: str = "run_id") -> tuple[str, list[Any]]:
    """A WHERE fragment and its parameters selecting rows of these runs (`run_id = ?` for one run, which
    lets DuckDB prune by zone maps as before)."""
    if len(run_ids) == 1:
        return f"{column} = ?", [run_ids[0]]
    return f"{column} IN ({', '.join('?' * len(run_ids))})", list(run_ids)


def mark_existing_runs(con: duckdb.DuckDBPyConnection) -> None:
    """Migration: runs recorded before watermarks existed count as covered by every stage, so upgrading
    does not re-normalize history (which would log its decisions twice)."""
    con.execute(
        "INSERT OR IGNORE INTO ops.stage_marks SELECT r.run_id, s.stage, r.run_id, now() "
        "FROM ops.runs r, (SELECT unnest(?::VARCHAR[]) AS stage) s",
        [list(RESUMED_STAGES)],
    )


def _check(stage: str) -> None:
    if stage not in RESUMED_STAGES:
        raise ValueError(f"not a resumed stage: {stage}")

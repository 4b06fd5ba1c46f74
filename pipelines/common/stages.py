"""Each stage's wall and CPU seconds and the process's peak RSS, kept in ops.run_stages for profiling."""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import duckdb

STAGES = ("land", "convert", "normalize", "identify", "load", "validate")


# CPU seconds that other processes (the conversion pool's workers) spent on this process's behalf;
# a stage's clock adds what was credited while it ran, so a pooled stage's CPU is not just the writer's.
_credited = [0.0]


def credit_cpu(seconds: float) -> None:
    """Count CPU seconds another process spent for the stage running now into that stage's CPU."""
    _credited[0] += max(0.0, seconds)


def peak_rss_mb() -> float:
    """The process's peak resident set so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


class StageClock:
    """Started when a stage starts; `record` writes its row (the validate stage does so before finishing)."""

    def __init__(self, run_id: str, stage: str) -> None:
        self.run_id = run_id
        self.stage = stage
        self._wall = time.perf_counter()
        self._cpu = time.process_time() + _credited[0]
        self._started = time.time()

    def stop(self) -> None:
        """Freeze the stage's times now, to be written later (by `record`)."""
        self._seconds = round(time.perf_counter() - self._wall, 3)
        self._cpu_seconds = round(time.process_time() + _credited[0] - self._cpu, 3)
        self._peak = peak_rss_mb()

    def record(self, con: duckdb.DuckDBPyConnection) -> None:
        if not hasattr(self, "_seconds"):
            self.stop()
        con.execute(
            "INSERT INTO ops.run_stages VALUES (?, ?, to_timestamp(?), ?, ?, ?, ?)",
            [
                self.run_id,
                self.stage,
                self._started,
                self._seconds,
                self._cpu_seconds,
                self._peak,
                os.getpid(),
            ],
        )


@contextmanager
def timed_stage(config: Any, stage: str, pending: list[StageClock] | None = None) -> Iterator[StageClock]:
    """Time a stage that finished normally; a failed stage leaves no row (the run is marked failed).

    With `pending`, the stopped clock is kept there for a later stage to write with its own connection
    (a one-file run would otherwise spend a good share of its time opening the warehouse).
    """
    clock = StageClock(config.run_id, stage)
    yield clock
    clock.stop()
    if pending is not None:
        pending.append(clock)
        return
    from pipelines.common.warehouse import open_warehouse

    with open_warehouse(config.warehouse) as con:
        clock.record(con)


def stage_times(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, dict[str, float]]:
    """The run's stages in order: seconds, cpu_seconds, peak_rss_mb (the last attempt of each)."""
    rows = con.execute(
        """
        SELECT stage, seconds, cpu_seconds, peak_rss_mb FROM ops.run_stages WHERE run_id = ?
        QUALIFY row_number() OVER (PARTITION BY stage ORDER BY started_at DESC) = 1
        ORDER BY started_at
        """,
        [run_id],
    ).fetchall()
    return {s: {"seconds": w, "cpu_seconds": c, "peak_rss_mb": m} for s, w, c, m in rows}

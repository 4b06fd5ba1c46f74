"""Validation results into ops.validation_results, and the back-load gate they decide."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import duckdb
import orjson

from pipelines.common.errors import EhrliftError, ExitCode


class GateBlocked(EhrliftError):
    """A critical expectation failed: the run's data must not be back-loaded."""

    exit_code = ExitCode.GATE_BLOCKED


@dataclass(frozen=True)
class ResultRow:
    suite: str
    expectation: str
    severity: str
    success: bool
    observed_value: str
    unexpected_count: int
    record_pointers: list[str]
    detail: Any = field(default=None, compare=False)  # the Outcome behind a GX row, for Data Docs


@dataclass
class Gate:
    run_id: str
    evaluated: int = 0
    critical_failed: list[str] = field(default_factory=list)
    warnings_failed: list[str] = field(default_factory=list)

    @property
    def blocked(self) -> bool:
        return bool(self.critical_failed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "evaluated": self.evaluated,
            "blocked": self.blocked,
            "critical_failed": self.critical_failed,
            "warnings_failed": self.warnings_failed,
        }

    def error(self) -> GateBlocked:
        names = ", ".join(self.critical_failed[:10])
        more = f" and {len(self.critical_failed) - 10} more" if len(self.critical_failed) > 10 else ""
        return GateBlocked(
            f"back-load blocked for run {self.run_id}: {len(self.critical_failed)} critical "
            f"expectation(s) failed: {names}{more}",
            hint="see ops.validation_results and the Data Docs for the failing records' pointers",
        )


def write_results(con: duckdb.DuckDBPyConnection, run_id: str, rows: list[ResultRow]) -> None:
    """Replace the run's results (a retried validation leaves one row per expectation)."""
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("DELETE FROM ops.validation_results WHERE run_id = ?", [run_id])
        con.execute("DELETE FROM ops.validation_counts WHERE run_id = ?", [run_id])
        counted = [r for r in rows if r.detail is not None]
        if counted:
            con.executemany(
                "INSERT INTO ops.validation_counts VALUES (?, ?, ?, ?)",
                [(run_id, r.expectation, r.detail.element_count, r.detail.missing_count) for r in counted],
            )
        con.executemany(
            "INSERT INTO ops.validation_results VALUES (?, ?, ?, ?, ?, ?, ?, ?, now())",
            [
                (
                    run_id,
                    r.suite,
                    r.expectation,
                    r.severity,
                    r.success,
                    r.observed_value,
                    r.unexpected_count,
                    orjson.dumps(r.record_pointers).decode(),
                )
                for r in rows
            ],
        )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def read_gate(con: duckdb.DuckDBPyConnection, run_id: str) -> Gate:
    gate = Gate(run_id)
    for expectation, severity, success in con.execute(
        "SELECT expectation, severity, success FROM ops.validation_results WHERE run_id = ? ORDER BY 1",
        [run_id],
    ).fetchall():
        gate.evaluated += 1
        if not success:
            (gate.critical_failed if severity == "critical" else gate.warnings_failed).append(expectation)
    return gate

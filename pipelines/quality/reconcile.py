"""Reconciliation per source file and per format, as tables a report can render, and its identity check.

For every file a run converted: units in = converted + quarantined + skipped, the ledger holds exactly
the units the converter reported, every quarantined unit has its quarantine row and every skipped unit
its reason. Duplicates removed, resources stored per type and items no mapper consumed are counted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import duckdb

from pipelines.common.errors import EhrliftError, ExitCode
from pipelines.common.warehouse import resource_tables

DUPLICATE_REASONS = ("duplicate_identical", "superseded", "reference_only_present")


class ReconciliationError(EhrliftError):
    """The ledger does not add up: a bug, never a data problem (bad data is quarantined, not lost)."""

    exit_code = ExitCode.INTERNAL


@dataclass
class FileReconciliation:
    file_sha256: str
    format: str
    handler: str | None
    status: str
    units_reported: int | None  # units the converter handled in this run (a resumed file: the rest)
    units: int = 0  # ledger rows of this file (all runs: a resumed file's first part is in earlier runs)
    units_this_run: int = 0
    converted: int = 0
    quarantined: int = 0
    skipped: int = 0
    quarantined_without_row: int = 0
    skipped_without_reason: int = 0
    duplicates_removed: int = 0
    unconsumed: int = 0
    resources: dict[str, int] = field(default_factory=dict)

    def problems(self) -> list[str]:
        if self.status != "converted":
            return []
        out = []
        if self.units != self.converted + self.quarantined + self.skipped:
            out.append(f"units {self.units} != converted + quarantined + skipped")
        if self.units_reported is not None and self.units_this_run != self.units_reported:
            out.append(
                f"ledger has {self.units_this_run} units from this run, "
                f"the converter reported {self.units_reported}"
            )
        if self.quarantined_without_row:
            out.append(f"{self.quarantined_without_row} quarantined units have no quarantine row")
        if self.skipped_without_reason:
            out.append(f"{self.skipped_without_reason} skipped units have no reason")
        return out


@dataclass
class Reconciliation:
    run_id: str
    files: list[FileReconciliation]

    def by_format(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for f in self.files:
            row = out.setdefault(
                f.format,
                {
                    "files": 0,
                    "units": 0,
                    "converted": 0,
                    "quarantined": 0,
                    "skipped": 0,
                    "duplicates_removed": 0,
                    "unconsumed": 0,
                    "resources": {},
                },
            )
            row["files"] += 1
            for key in ("units", "converted", "quarantined", "skipped", "duplicates_removed", "unconsumed"):
                row[key] += getattr(f, key)
            for rtype, n in f.resources.items():
                row["resources"][rtype] = row["resources"].get(rtype, 0) + n
        return dict(sorted(out.items()))

    def problems(self) -> list[str]:
        return [f"file {f.file_sha256[:12]} ({f.format}): {p}" for f in self.files for p in f.problems()]

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "files": [asdict(f) for f in self.files],
            "by_format": self.by_format(),
            "reconciles": not self.problems(),
        }


def reconcile(con: duckdb.DuckDBPyConnection, run_id: str) -> Reconciliation:
    """Per-file counts for every file of the run (record values never appear: ids, counts, reasons)."""
    files: dict[str, FileReconciliation] = {}
    for sha, fmt, handler, status, units in con.execute(
        """
        SELECT rf.file_sha256, f.format, rf.handler, rf.status, rf.units
        FROM ops.run_files rf JOIN ops.files f USING (file_sha256) WHERE rf.run_id = ? ORDER BY rf.seq
        """,
        [run_id],
    ).fetchall():
        files[sha] = FileReconciliation(sha, fmt, handler, status, units)
    for sha, n, this_run, conv, quar, skip, no_row, no_reason, dups in con.execute(
        f"""
        SELECT l.file_sha256, count(*), count(*) FILTER (WHERE l.run_id = $run),
               count(*) FILTER (WHERE l.outcome = 'converted'),
               count(*) FILTER (WHERE l.outcome = 'quarantined'),
               count(*) FILTER (WHERE l.outcome = 'skipped'),
               count(*) FILTER (WHERE l.outcome = 'quarantined' AND NOT EXISTS (
                   SELECT 1 FROM ops.quarantine q WHERE q.run_id = l.run_id
                   AND q.file_sha256 = l.file_sha256 AND q.unit_position = l.unit_position)),
               count(*) FILTER (WHERE l.outcome = 'skipped' AND l.reason IS NULL),
               count(*) FILTER (WHERE l.outcome = 'skipped' AND l.reason IN {DUPLICATE_REASONS!r})
        FROM ops.ledger l
        WHERE l.file_sha256 IN (SELECT file_sha256 FROM ops.run_files WHERE run_id = $run)
        GROUP BY 1
        """,
        {"run": run_id},
    ).fetchall():
        f = files[sha]
        f.units_this_run = this_run
        f.units, f.converted, f.quarantined, f.skipped = n, conv, quar, skip
        f.quarantined_without_row, f.skipped_without_reason, f.duplicates_removed = no_row, no_reason, dups
    for sha, n in con.execute(
        "SELECT file_sha256, sum(count) FROM ops.unconsumed "
        "WHERE file_sha256 IN (SELECT file_sha256 FROM ops.run_files WHERE run_id = ?) GROUP BY 1",
        [run_id],
    ).fetchall():
        files[sha].unconsumed = int(n)
    for rtype in resource_tables(con):
        for sha, n in con.execute(
            f'SELECT file_sha256, count(*) FROM fhir."{rtype}" WHERE file_sha256 IN '
            "(SELECT file_sha256 FROM ops.run_files WHERE run_id = ?) GROUP BY 1",
            [run_id],
        ).fetchall():
            files[sha].resources[rtype] = n
    return Reconciliation(run_id, list(files.values()))


def check_reconciliation(recon: Reconciliation) -> None:
    """Fail loudly when a file does not add up: the run must not be reported as complete."""
    problems = recon.problems()
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ReconciliationError(
            f"reconciliation failed for run {recon.run_id}: {shown}",
            hint="this is a bug in ehrlift: keep the warehouse and report it with the run id",
        )

"""`ehrlift retract`: a bad batch leaves the warehouse so that later runs are no longer blocked by it.

What leaves: every fhir.* row the run wrote (--run) or that came from the file (--file). What stays: the
ledger, quarantine and run rows (the history), the landed file, and one ops.retractions row per file with
the operator's reason. Where the batch had replaced an earlier version of a resource, that version is
not restored (the warehouse keeps one version; the count is reported). Afterwards person links and
duplicate facts are recomputed (a retracted Patient or survivor must not stay linked) and every view is
rebuilt. A retracted file stays processed: running the same sources again does not load it again; a
corrected file (another sha256) loads as new.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines.common.config import new_run_id
from pipelines.common.errors import ConfigError
from pipelines.common.warehouse import open_warehouse, resource_tables, transaction

_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass
class RetractResult:
    retraction_id: str
    files: int = 0
    resources: dict[str, int] = field(default_factory=dict)
    # Units of the batch that replaced an earlier version of a resource: ehrlift keeps one version, so
    # the earlier one is not restored by a retraction (re-land its corrected source to bring it back).
    replaced_units: int = 0
    rebuilt: int = 0  # merged people and organizations rebuilt from the versions other files gave
    views: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "retraction_id": self.retraction_id,
            "files": self.files,
            "resources": dict(sorted(self.resources.items())),
            "replaced_units": self.replaced_units,
            "rebuilt": self.rebuilt,
        }


def retract(
    warehouse: Path, *, reason: str, run_id: str | None = None, file_sha256: str | None = None
) -> RetractResult:
    """Take a run's (or a file's) resources out of the warehouse; see the module docstring."""
    from pipelines.deid.audit import os_user, record_access
    from pipelines.identity.stage import identify, refresh_views
    from pipelines.normalize import renormalize
    from pipelines.parties.merge import recompute_parties
    from terminology.normalize import iter_pairs

    if not (reason or "").strip():
        raise ConfigError("a retraction needs --reason TEXT (it is recorded with the retraction)")
    if (run_id is None) == (file_sha256 is None):
        raise ConfigError("retract either --run ID or --file SHA256")
    if file_sha256 is not None and not _SHA256.fullmatch(file_sha256):
        raise ConfigError("--file takes the file's sha256 (64 lowercase hex digits, as in ops.files)")
    result = RetractResult(f"retract-{new_run_id().removeprefix('run-')}")
    with open_warehouse(warehouse) as con:
        files = _files(con, run_id, file_sha256)
        where, args = ("run_id = ?", [run_id]) if run_id else ("file_sha256 = ?", [file_sha256])
        done = con.execute(f"SELECT count(*) FROM ops.retractions WHERE {where}", args).fetchall()[0][0]
        if done:
            raise ConfigError("already retracted", hint="see ops.retractions")
        per_file: dict[str, int] = dict.fromkeys(files, 0)
        result.replaced_units = con.execute(
            f"SELECT count(*) FROM ops.ledger WHERE {where} AND reason = 'newer_version'", args
        ).fetchall()[0][0]
        now = datetime.now(UTC)
        with transaction(con):
            for rtype in resource_tables(con):
                table = f'fhir."{rtype}"'
                rows = con.execute(
                    f"SELECT file_sha256, count(*) FROM {table} WHERE {where} GROUP BY 1", args
                ).fetchall()
                if not rows:
                    continue
                con.execute(f"DELETE FROM {table} WHERE {where}", args)
                result.resources[rtype] = sum(n for _, n in rows)
                for sha, n in rows:
                    per_file[sha] = per_file.get(sha, 0) + n
            # People and organizations merged across documents: rebuilt from the versions that remain.
            rebuilt = recompute_parties(con, where, args)
            result.rebuilt = len(rebuilt)
            con.executemany(
                "INSERT INTO ops.retractions VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (result.retraction_id, run_id, sha, n, reason.strip(), os_user(), now)
                    for sha, n in sorted(per_file.items())
                ],
            )
            record_access(
                con,
                "retract",
                "write",
                {f"fhir.{t}": n for t, n in result.resources.items()},
                run_id,
                detail=f"retraction {result.retraction_id}",
            )
        result.files = len(per_file)
        if rebuilt:  # normalized again like every resource (their versions are stored as they arrived)
            codes = {pair for resource in rebuilt for pair in iter_pairs(resource) if all(pair)}
            renormalize(con, codes, run_id=result.retraction_id, warehouse=warehouse)
        if "Patient" in resource_tables(con):
            identify(con, result.retraction_id)  # links and duplicate facts without what left
        result.views = refresh_views(con)
    return result


def _files(con: Any, run_id: str | None, file_sha256: str | None) -> list[str]:
    if file_sha256 is not None:
        if not con.execute("SELECT count(*) FROM ops.files WHERE file_sha256 = ?", [file_sha256]).fetchall()[
            0
        ][0]:
            raise ConfigError("no landed file with that sha256", hint="see ops.files")
        return [file_sha256]
    if not con.execute("SELECT count(*) FROM ops.runs WHERE run_id = ?", [run_id]).fetchall()[0][0]:
        raise ConfigError("no such run", hint="`ehrlift runs` lists them")
    return [
        r[0]
        for r in con.execute(
            "SELECT DISTINCT file_sha256 FROM ops.ledger WHERE run_id = ? ORDER BY 1", [run_id]
        ).fetchall()
    ]

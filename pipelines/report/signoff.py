"""Sign-off of a compliance report: reviewer, role, decision and date, hashed with the data digest."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson

from pipelines.common.config import ehrlift_version
from pipelines.common.errors import ConfigError
from pipelines.common.warehouse import open_warehouse
from pipelines.report.cli import DECISIONS

SIGNOFF_NAME = "compliance-report.signoff.json"
_TEXT = re.compile(r"[^\x00-\x1f\x7f]{1,200}")


def _clean(label: str, value: str | None, required: bool = True) -> str | None:
    if value is None or not value.strip():
        if required:
            raise ConfigError(f"--{label} is required to sign")
        return None
    value = value.strip()
    if not _TEXT.fullmatch(value):
        raise ConfigError(f"--{label} must be 1 to 200 printable characters")
    return value


def signed_copy(run_id: str, data_sha256: str, fields: dict[str, Any]) -> bytes:
    """The bytes the sign-off hash covers: the report's data digest with who signed what, canonical JSON."""
    return orjson.dumps({"run_id": run_id, "data_sha256": data_sha256, **fields}, option=orjson.OPT_SORT_KEYS)


def sign_report(
    warehouse: Path,
    *,
    reviewer: str,
    role: str,
    decision: str,
    note: str | None = None,
    run_id: str | None = None,
    digest: str | None = None,
    out_dir: Path | None = None,
) -> dict[str, Any]:
    """Re-render the run's report, refuse if it differs from the digest read, record the sign-off.

    The sign-off is a row in ops.report_signoffs and a signed copy beside the report; the report is written
    again with its sign-off block filled in.
    """
    from pipelines.report.render import write_report

    if decision not in DECISIONS:
        raise ConfigError(f"--decision must be one of {', '.join(DECISIONS)}")
    fields = {
        "reviewer": _clean("reviewer", reviewer),
        "role": _clean("role", role),
        "decision": decision,
        "note": _clean("note", note, required=False),
    }
    files = write_report(warehouse, out_dir, run_id)
    if digest is not None and digest.strip().lower() != files.digest:
        raise ConfigError(
            "the report's data changed since the digest given: nothing signed",
            hint=f"read the current report (data sha256 {files.digest}) and sign that",
        )
    fields["signed_at"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    payload = signed_copy(files.run_id, files.digest, fields)
    sha = hashlib.sha256(payload).hexdigest()
    with open_warehouse(warehouse) as con:
        con.execute(
            "INSERT INTO ops.report_signoffs VALUES (?, ?, ?, ?, ?, ?, ?, ?::TIMESTAMPTZ, ?)",
            [
                sha,
                files.run_id,
                files.digest,
                fields["reviewer"],
                fields["role"],
                decision,
                fields["note"],
                fields["signed_at"],
                ehrlift_version(),
            ],
        )
    (files.html.parent / SIGNOFF_NAME).write_bytes(payload)
    files = write_report(warehouse, out_dir, files.run_id)  # now with the sign-off block filled in
    return {"run_id": files.run_id, "data_sha256": files.digest, "signoff_sha256": sha, "html": files.html}


def signoffs(con: duckdb.DuckDBPyConnection, run_id: str, digest: str) -> list[dict[str, Any]]:
    """The run's sign-offs, newest first; each says whether it signed the data the page now shows."""
    exists = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'ops' "
        "AND table_name = 'report_signoffs'"
    ).fetchone()
    if not exists or not exists[0]:
        return []
    out = []
    for sha, data_sha, reviewer, role, decision, note, signed_at in con.execute(
        "SELECT signoff_sha256, data_sha256, reviewer, role, decision, note, "
        "strftime(signed_at AT TIME ZONE 'UTC', '%Y-%m-%dT%H:%M:%SZ') FROM ops.report_signoffs "
        "WHERE run_id = ? ORDER BY signed_at DESC, signoff_sha256",
        [run_id],
    ).fetchall():
        fields = {
            "reviewer": reviewer,
            "role": role,
            "decision": decision,
            "note": note,
            "signed_at": signed_at,
        }
        intact = hashlib.sha256(signed_copy(run_id, data_sha, fields)).hexdigest() == sha
        out.append(
            {
                **fields,
                "signoff_sha256": sha,
                "data_sha256": data_sha,
                "current": data_sha == digest,
                "intact": intact,
            }
        )
    return out

"""`ehrlift report sign`: re-render the report, check the digest the reviewer read, record the sign-off."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines.common.config import ehrlift_version
from pipelines.common.errors import ConfigError
from pipelines.common.warehouse import open_warehouse
from pipelines.report.render import write_report
from pipelines.report.signoff import DECISIONS, SIGNOFF_NAME, clean_field, signed_copy


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
    if decision not in DECISIONS:
        raise ConfigError(f"--decision must be one of {', '.join(DECISIONS)}")
    fields = {
        "reviewer": clean_field("reviewer", reviewer),
        "role": clean_field("role", role),
        "decision": decision,
        "note": clean_field("note", note, required=False),
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

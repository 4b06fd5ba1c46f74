"""Sign-off of a compliance report: reviewer, role, decision and date, hashed with the data digest."""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING, Any

import orjson

from pipelines.common.errors import ConfigError

if TYPE_CHECKING:
    import duckdb

SIGNOFF_NAME = "compliance-report.signoff.json"
DECISIONS = ("approved", "approved-with-conditions", "rejected")  # as ops.report_signoffs' CHECK
_TEXT = re.compile(r"[^\x00-\x1f\x7f]{1,200}")


def clean_field(label: str, value: str | None, required: bool = True) -> str | None:
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

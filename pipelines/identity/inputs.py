"""What a linking decision depended on, as one digest: when nothing changed, the last decision stands."""

from __future__ import annotations

import hashlib

import duckdb

from pipelines.identity.config import IdentityConfig
from pipelines.identity.features import patient_table

# Changes whenever the linking itself changes, so that a new ehrlift re-decides on the same inputs.
LINKING_VERSION = "2"


def input_digest(con: duckdb.DuckDBPyConnection, cfg: IdentityConfig) -> tuple[str, int]:
    """(digest, source Patients): every Patient's content, source and format, the reviewers' decisions,
    the identity data files and the linking version. Order-independent sums of row hashes: no PHI kept."""
    table = patient_table(con)
    patients, patient_sum, present = con.execute(
        f"""
        SELECT count(*), coalesce(sum(hash(p.id, CAST(p.resource AS VARCHAR), p.source_system,
                coalesce(f.format, 'unknown'), p.last_updated, p.reference_only)::HUGEINT), 0),
            count(*) FILTER (WHERE NOT p.reference_only)
        FROM {table} p LEFT JOIN ops.files f USING (file_sha256)
        """
    ).fetchall()[0]
    decisions, decision_sum = con.execute(
        "SELECT count(*), coalesce(sum(hash(left_patient_id, right_patient_id, decision, reviewer, "
        "decided_at)::HUGEINT), 0) FROM ops.identity_decisions"
    ).fetchall()[0]
    text = f"{LINKING_VERSION}|{cfg.version()}|{patients}|{patient_sum}|{decisions}|{decision_sum}"
    return hashlib.sha256(text.encode()).hexdigest(), int(present)


def standing_decision(con: duckdb.DuckDBPyConnection, digest: str, present: int) -> str | None:
    """The run whose decisions still stand when the inputs are what it decided on, else None.

    The person map must still cover every source Patient (nothing emptied the tables since).
    """
    last = con.execute(
        "SELECT input_digest, decided_by FROM ops.identity_runs "
        "ORDER BY recorded_at DESC, run_id DESC LIMIT 1"
    ).fetchall()
    if not last or last[0][0] != digest:
        return None
    mapped = con.execute("SELECT count(*) FROM ops.person_map").fetchall()[0][0]
    return last[0][1] if mapped == present else None


def record_inputs(
    con: duckdb.DuckDBPyConnection, run_id: str, digest: str, patients: int, decided_by: str
) -> None:
    con.execute("DELETE FROM ops.identity_runs WHERE run_id = ?", [run_id])
    con.execute(
        "INSERT INTO ops.identity_runs VALUES (?, ?, ?, ?, now())", [run_id, digest, patients, decided_by]
    )

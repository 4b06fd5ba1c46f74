"""Digests of the linking's decisions and person map, to compare runs without keeping record ids."""

from __future__ import annotations

import hashlib

import duckdb


def _sha(rows: list[tuple]) -> str:
    return hashlib.sha256("\n".join("|".join(map(str, r)) for r in rows).encode()).hexdigest()


def linking_digest(con: duckdb.DuckDBPyConnection) -> dict[str, int | str]:
    """Counts and digests of ops.identity_links (scores to 6 places) and ops.person_map, sorted."""
    links = con.execute(
        "SELECT left_patient_id, right_patient_id, method, coalesce(rule, ''), decision, "
        "coalesce(round(score, 6), -1) FROM ops.identity_links ORDER BY ALL"
    ).fetchall()
    mapped = con.execute("SELECT patient_id, person_id, survivor FROM ops.person_map ORDER BY ALL").fetchall()
    return {
        "links": len(links),
        "links_sha256": _sha(links),
        "patients": len(mapped),
        "persons": len({r[1] for r in mapped}),
        "person_map_sha256": _sha(mapped),
    }

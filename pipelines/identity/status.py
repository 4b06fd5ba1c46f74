"""Identity counts for the CLI and the compliance report: aggregates only, never a record's values."""

from __future__ import annotations

from typing import Any

import duckdb


def _table_exists(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    rows = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_catalog = current_database() "
        "AND table_schema = 'ops' AND table_name = ?",
        [name],
    ).fetchall()
    return bool(rows[0][0])


def identity_status(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """Pairs by decision and method, persons, source patients, reviewer decisions, duplicate facts by type."""
    if not _table_exists(con, "identity_links"):
        return {}
    one = lambda sql: con.execute(sql).fetchall()[0][0]  # noqa: E731
    model = con.execute(
        "SELECT model_version, trained, records, pairs_scored FROM ops.identity_models "
        "ORDER BY created_at DESC LIMIT 1"
    ).fetchall()
    return {
        "source_patients": one("SELECT count(*) FROM ops.person_map"),
        "persons": one("SELECT count(DISTINCT person_id) FROM ops.person_map"),
        "pairs": dict(
            con.execute("SELECT decision, count(*) FROM ops.identity_links GROUP BY 1 ORDER BY 1").fetchall()
        ),
        "links_by_method": dict(
            con.execute(
                "SELECT method, count(*) FROM ops.identity_links WHERE decision = 'link' "
                "GROUP BY 1 ORDER BY 1"
            ).fetchall()
        ),
        "awaiting_review": one("SELECT count(*) FROM ops.identity_links WHERE decision = 'review'"),
        "reviewer_decisions": one("SELECT count(*) FROM ops.identity_decisions"),
        "duplicate_facts": dict(
            con.execute(
                "SELECT resource_type, count(*) FROM ops.fact_duplicates GROUP BY 1 ORDER BY 1"
            ).fetchall()
        ),
        "model": {
            "version": model[0][0],
            "trained": model[0][1],
            "records": model[0][2],
            "pairs_scored": model[0][3],
        }
        if model
        else None,
    }

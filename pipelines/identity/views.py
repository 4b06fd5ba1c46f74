"""Person-resolved analyst views: views.patient one row per person, views.patient_source, person ids."""

from __future__ import annotations

from pathlib import Path

import duckdb
import orjson

from pipelines.views.compiler import compile_view
from pipelines.views.sqlval import quote_ident

_PERSONS = "(SELECT person_id AS id, resource FROM ops.person_records)"


def _tables_with(con: duckdb.DuckDBPyConnection, column: str) -> list[str]:
    rows = con.execute(
        "SELECT table_name FROM information_schema.columns WHERE table_catalog = current_database() "
        "AND table_schema = 'views' AND column_name = ? ORDER BY table_name",
        [column],
    ).fetchall()
    return [r[0] for r in rows]


def resolve_person_views(con: duckdb.DuckDBPyConnection, views_dir: Path) -> dict[str, int]:
    """After the views are materialized from fhir.*: re-point them at persons when linking has run.

    views.patient_source keeps one row per source Patient with its person_id; views.patient becomes
    the patient ViewDefinition over the person records; every other view's patient_id names the person.
    Without a person map (the identity stage never ran) the views stay as materialized.
    """
    mapped = con.execute("SELECT count(*) FROM ops.person_map").fetchall()[0][0]
    if not mapped or "patient" not in _tables_with(con, "id"):
        return {}
    con.execute(
        "CREATE OR REPLACE TABLE views.patient_source AS "
        "SELECT v.*, coalesce(m.person_id, v.id) AS person_id "
        "FROM views.patient v LEFT JOIN ops.person_map m ON m.patient_id = v.id"
    )
    view = orjson.loads((views_dir / "patient.json").read_bytes())
    compiled = compile_view(view, lambda _rtype: _PERSONS)
    con.execute(f"CREATE OR REPLACE TABLE views.patient AS {compiled.sql}")
    counts = {"patient": int(con.execute("SELECT count(*) FROM views.patient").fetchall()[0][0])}
    for table in _tables_with(con, "patient_id"):
        if table == "patient_source":
            continue
        target = f"views.{quote_ident(table)}"
        con.execute(
            f"UPDATE {target} SET patient_id = m.person_id FROM ops.person_map m "
            f"WHERE {target}.patient_id = m.patient_id AND m.patient_id <> m.person_id"
        )
        counts[table] = int(con.execute(f"SELECT count(*) FROM {target}").fetchall()[0][0])
    counts["patient_source"] = int(con.execute("SELECT count(*) FROM views.patient_source").fetchall()[0][0])
    return counts

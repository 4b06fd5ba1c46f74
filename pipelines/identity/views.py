"""Person-resolved analyst views: views.patient one row per person, views.patient_source, person ids."""

from __future__ import annotations

from pathlib import Path

import duckdb
import orjson

from pipelines.views.sqlval import quote_ident
from pipelines.views.table import create_view_table

_PERSONS = "(SELECT person_id AS id, resource FROM ops.person_records)"


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _tables_with(con: duckdb.DuckDBPyConnection, column: str) -> list[str]:
    rows = con.execute(
        "SELECT table_name FROM information_schema.columns WHERE table_catalog = current_database() "
        "AND table_schema = 'views' AND column_name = ? ORDER BY table_name",
        [column],
    ).fetchall()
    return [r[0] for r in rows]


def person_map_exists(con: duckdb.DuckDBPyConnection) -> bool:
    """Has linking run, so that the views are to be re-pointed at persons?"""
    return bool(con.execute("SELECT count(*) FROM ops.person_map").fetchall()[0][0])


def resolve_person_views(
    con: duckdb.DuckDBPyConnection,
    views_dir: Path,
    rebuilt: set[str] | None = None,
    persons_changed: bool = True,
) -> dict[str, int]:
    """After the views are materialized from fhir.*: re-point them at persons when linking has run.

    views.patient_source keeps one row per source Patient with its person_id; views.patient becomes
    the patient ViewDefinition over the person records; every other view's patient_id names the person.
    `rebuilt` names the views just rebuilt from fhir.* (None: all of them): views.patient_source is
    taken anew from a source-level views.patient, else only its person ids are brought up to date.
    Without a person map (the identity stage never ran) the views stay as materialized.
    With persons_changed False (no person record was written since views.patient was built from them)
    and the source-level view not rebuilt, the person-level views.patient is kept as it is.
    """
    if not person_map_exists(con) or "patient" not in _tables_with(con, "id"):
        return {}
    fresh = rebuilt is None or "patient" in rebuilt or "patient_source" not in _tables_with(con, "person_id")
    if fresh:
        con.execute(
            "CREATE OR REPLACE TABLE views.patient_source AS "
            "SELECT v.*, coalesce(m.person_id, v.id) AS person_id "
            "FROM views.patient v LEFT JOIN ops.person_map m ON m.patient_id = v.id"
        )
    else:
        con.execute(
            "UPDATE views.patient_source SET person_id = coalesce("
            "(SELECT m.person_id FROM ops.person_map m WHERE m.patient_id = views.patient_source.id), id)"
        )
    counts = {}
    if fresh or persons_changed:  # counted only when written (the run's audit row lists what it wrote)
        _person_patient_view(con, views_dir)
        counts["patient"] = int(con.execute("SELECT count(*) FROM views.patient").fetchall()[0][0])
    for table in _tables_with(con, "patient_id"):
        if table == "patient_source":
            continue
        target = f"views.{quote_ident(table)}"
        (updated,) = con.execute(
            f"UPDATE {target} SET patient_id = m.person_id FROM ops.person_map m "
            f"WHERE {target}.patient_id = m.patient_id AND m.patient_id <> m.person_id"
        ).fetchall()[0]
        if updated:  # only views whose rows changed count as written (the run's audit row lists them)
            counts[table] = int(con.execute(f"SELECT count(*) FROM {target}").fetchall()[0][0])
    counts["patient_source"] = int(con.execute("SELECT count(*) FROM views.patient_source").fetchall()[0][0])
    return counts


def _person_patient_view(con: duckdb.DuckDBPyConnection, views_dir: Path) -> None:
    # The person-level views.patient keeps the stamp of the source-level view it replaces, so the next
    # run sees which ViewDefinition version and run its rows come from.
    (stamp,) = con.execute(
        "SELECT comment FROM duckdb_tables() WHERE database_name = current_database() "
        "AND schema_name = 'views' AND table_name = 'patient'"
    ).fetchall()[0]
    view = orjson.loads((views_dir / "patient.json").read_bytes())
    # Typed and with standard codes like every view (its *_coding view stays per source Patient).
    create_view_table(con, view, "views.patient", lambda _rtype: _PERSONS, coding_view=False)
    if stamp:
        con.execute("COMMENT ON TABLE views.patient IS " + _sql_string(stamp))

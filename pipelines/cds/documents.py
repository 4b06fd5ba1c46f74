"""Per-person review documents, computed set-based in the snapshot: what a patient-view call reads."""

from __future__ import annotations

from typing import Any

import duckdb

from pipelines.common.warehouse import RESOURCE_TYPE

STANDARD_METHODS = ("exact", "crosswalk", "remap", "suggestion-approved")


REVIEWED_TYPES = ("Condition", "AllergyIntolerance", "MedicationRequest", "MedicationStatement")
_TYPE_WORDS = (
    ("Condition", "problem"),
    ("AllergyIntolerance", "allergy"),
    ("MedicationRequest", "medication order"),
    ("MedicationStatement", "medication"),
)


def summarize(con: duckdb.DuckDBPyConnection, rules: dict[str, Any]) -> int:
    """Per person, what a patient-view shows, computed set-based once so a call is one indexed lookup.

    summary: record counts, sources, date range and latest run per resource type; items: each thing that
    needs a clinician's eye, with its card type. The chart table is dropped afterwards.
    """
    words = "CASE " + " ".join(f"WHEN resource_type = '{t}' THEN '{w}'" for t, w in _TYPE_WORDS) + " END"
    remapped = [m for m in rules.get("remapped_methods", []) if m.replace("-", "").isalpha()]
    remapped_sql = "(" + ", ".join(f"'{m}'" for m in remapped) + ")" if remapped else "(NULL)"
    ignored = [t for t in rules.get("quarantine_ignored_types", []) if RESOURCE_TYPE.fullmatch(t)]
    ignored_sql = "(" + ", ".join(f"'{t}'" for t in ignored) + ")" if ignored else "('')"
    con.execute("""
        CREATE TABLE summary AS
        SELECT person_id, resource_type, count(*) AS n,
               list(DISTINCT source_system ORDER BY source_system) AS sources,
               min(day)::VARCHAR AS first_day, max(day)::VARCHAR AS last_day, max(run_id) AS run_id
        FROM chart GROUP BY person_id, resource_type ORDER BY person_id, resource_type
    """)
    con.execute(f"""
        CREATE TABLE items AS
        WITH coded_items AS (
            SELECT person_id, resource_type, id,
                   any_value(label ORDER BY method NULLS LAST) AS label,
                   bool_or(method = 'unmapped') AS unmapped,
                   bool_or(method IN {STANDARD_METHODS}) AS standard,
                   list(DISTINCT method ORDER BY method) FILTER (WHERE method IN {remapped_sql}) AS remapped
            FROM coded WHERE active AND resource_type IN {REVIEWED_TYPES} GROUP BY ALL
        )
        SELECT person_id, 'unmapped_code' AS card_type, resource_type,
               coalesce(label, '(' || {words} || ' without a display)') AS label,
               'active ' || {words} AS detail
        FROM coded_items WHERE unmapped AND NOT standard
        UNION ALL
        SELECT person_id, 'remapped_code', resource_type,
               coalesce(label, '(' || {words} || ' without a display)'),
               'active ' || {words} || '; ' || array_to_string(remapped, ', ')
        FROM coded_items WHERE NOT (unmapped AND NOT standard) AND len(remapped) > 0
        UNION ALL
        SELECT person_id, CASE WHEN reason_code = 'conflicting_duplicate' THEN 'conflicting_duplicate'
                               ELSE 'quarantined' END,
               resource_type, coalesce(resource_type, 'record') || ': ' || reason_code, pointer
        FROM quarantine WHERE coalesce(resource_type, '') NOT IN {ignored_sql}
        UNION ALL
        SELECT person_id, 'identity_review', 'Patient', 'another source patient may be this person',
               coalesce(method, 'match') || coalesce(', score ' || printf('%.2f', score), '')
        FROM identity_review
        UNION ALL
        SELECT person_id, 'duplicate_fact', resource_type, resource_type || ' recorded twice',
               coalesce(rule, '')
        FROM duplicates
        ORDER BY ALL
    """)
    # One JSON document per person: the snapshot keeps them in a dictionary, so a call is one lookup.
    con.execute("""
        CREATE TABLE docs AS
        SELECT person_id, to_json({'summary': s.summary, 'items': coalesce(i.items, [])})::VARCHAR AS doc
        FROM (SELECT person_id, list({'t': resource_type, 'n': n, 's': sources, 'f': first_day, 'l': last_day,
                                      'r': run_id} ORDER BY resource_type) AS summary
              FROM summary GROUP BY person_id) s
        LEFT JOIN (SELECT person_id,
                          list({'c': card_type, 't': resource_type, 'label': label, 'detail': detail}
                               ORDER BY card_type, label, detail) AS items
                   FROM items GROUP BY person_id) i USING (person_id)
        ORDER BY person_id
    """)
    records = con.execute("SELECT coalesce(sum(n), 0) FROM summary").fetchone()[0]
    con.execute("DROP TABLE summary; DROP TABLE items; DROP TABLE chart")
    return int(records)

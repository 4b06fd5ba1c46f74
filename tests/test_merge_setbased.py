"""The writer's set-based duplicate decision (all staged types in one statement) against a per-type oracle."""

from __future__ import annotations

from pathlib import Path

import duckdb
import orjson

from pipelines.common.ledger import pointer
from pipelines.common.warehouse import ensure_resource_table, open_warehouse
from pipelines.load import create_stage, merge_stage
from pipelines.result_versions import rank_sql

# The decision as it was taken one type at a time (the previous writer), kept as the oracle.
_ORACLE_DECIDE = """
CREATE OR REPLACE TEMP TABLE _oracle AS
WITH staged AS (
    SELECT run_id, seq, file_sha256, unit_position, resource_index, id, content_sha256,
           TRY_CAST(last_updated AS TIMESTAMPTZ) AS lu, reference_only, FALSE AS existing, {rank} AS vrank
    FROM _stage WHERE resource_type = $rtype
), current AS (
    SELECT NULL AS run_id, 0 AS seq, file_sha256, unit_position, 0 AS resource_index, id, content_sha256,
           TRY_CAST(last_updated AS TIMESTAMPTZ) AS lu, reference_only, TRUE AS existing, {rank} AS vrank
    FROM {table} WHERE id IN (SELECT id FROM staged)
), grouped AS (
    SELECT *,
        first_value(content_sha256) OVER best AS best_hash,
        first_value(lu) OVER best AS best_lu,
        first_value(vrank) OVER best AS best_rank,
        bool_or(existing) OVER (PARTITION BY id) AS id_exists,
        row_number() OVER (PARTITION BY id, content_sha256
                           ORDER BY existing DESC, run_id, seq, unit_position, resource_index) AS hash_rank
    FROM (SELECT * FROM staged UNION ALL SELECT * FROM current)
    WINDOW best AS (PARTITION BY id ORDER BY reference_only, lu DESC NULLS LAST, vrank DESC, existing DESC,
                    run_id, seq, unit_position, resource_index
                    ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
)
SELECT run_id, file_sha256, unit_position, resource_index, $rtype AS resource_type, id,
    CASE
        WHEN content_sha256 = best_hash AND hash_rank = 1 THEN 'accepted'
        WHEN content_sha256 = best_hash THEN 'duplicate_identical'
        WHEN reference_only THEN 'reference_only_present'
        WHEN lu IS NOT NULL AND best_lu IS NOT NULL AND lu < best_lu THEN 'superseded'
        WHEN lu IS NOT DISTINCT FROM best_lu AND vrank < best_rank THEN 'superseded'
        ELSE 'conflicting_duplicate'
    END AS decision, id_exists
FROM grouped WHERE NOT existing
"""


def _oracle_decisions(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    out: list[tuple] = []
    for (rtype,) in con.execute("SELECT DISTINCT resource_type FROM _stage ORDER BY 1").fetchall():
        table = ensure_resource_table(con, rtype)
        con.execute(_ORACLE_DECIDE.format(table=table, rank=rank_sql("resource", rtype)), {"rtype": rtype})
        out += con.execute("SELECT * FROM _oracle").fetchall()
    return sorted(out)


def _row(unit: int, index: int, rtype: str, rid: str, body: str, lu=None, ref=False, status=None, sha="f1"):
    resource = {"resourceType": rtype, "id": rid, "note": body}
    if status:
        resource["status"] = status
    return (
        "r1",
        1,
        sha,
        unit,
        index,
        rtype,
        rid,
        "src",
        None,
        body,
        lu,
        orjson.dumps(resource).decode(),
        ref,
    )


# Two batches covering every decision: new, identical in the batch and against the warehouse, newer and
# older meta.lastUpdated, preliminary before final at one time, conflicts, stand-ins and their
# replacement, the same id under two types.
_BATCHES = [
    [
        _row(1, 0, "Patient", "p1", "A", "2020-01-01T00:00:00Z"),
        _row(1, 1, "Observation", "o1", "B", status="final"),
        _row(2, 0, "Patient", "p1", "A", "2020-01-01T00:00:00Z"),
        _row(2, 1, "Encounter", "e1", "C"),
        _row(3, 0, "Patient", "p2", "D", "2020-01-01T00:00:00Z"),
        _row(4, 0, "Patient", "p2", "E", "2021-01-01T00:00:00Z"),
        _row(5, 0, "Observation", "o2", "F", "2020-01-01T00:00:00Z", status="preliminary"),
        _row(6, 0, "Observation", "o2", "G", "2020-01-01T00:00:00Z", status="final"),
        _row(7, 0, "Encounter", "e2", "H"),
        _row(8, 0, "Encounter", "e2", "I"),
        _row(9, 0, "Patient", "p3", "J", ref=True),
        _row(10, 0, "Encounter", "p1", "N"),  # the same id under another type is another resource
    ],
    [
        _row(1, 0, "Patient", "p1", "K", "2022-01-01T00:00:00Z", sha="f2"),
        _row(2, 0, "Observation", "o1", "B", status="final", sha="f2"),
        _row(3, 0, "Patient", "p3", "L", sha="f2"),
        _row(4, 0, "Encounter", "e1", "M", sha="f2"),
        _row(5, 0, "Patient", "p4", "P", ref=True, sha="f2"),
        _row(6, 0, "Patient", "p2", "D", "2020-01-01T00:00:00Z", sha="f2"),
        _row(6, 1, "Procedure", "x1", "Q", sha="f2"),
    ],
]


def _stage(con: duckdb.DuckDBPyConnection, rows: list[tuple]) -> None:
    create_stage(con)
    con.executemany("INSERT INTO _stage VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    units = sorted({(r[2], r[3]) for r in rows})
    con.executemany(
        "INSERT INTO ops.ledger VALUES ('r1', ?, ?, 'resource', 'converted', NULL, ?, 0, 1)",
        [(sha, pos, sum(1 for r in rows if (r[2], r[3]) == (sha, pos))) for sha, pos in units],
    )


def _state(con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple]]:
    tables = [
        r[0]
        for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE schema_name = 'fhir'").fetchall()
    ]
    out = {
        t: con.execute(f'SELECT * EXCLUDE (resource) FROM fhir."{t}" ORDER BY ALL').fetchall() for t in tables
    }
    out["ledger"] = con.execute("SELECT * FROM ops.ledger ORDER BY ALL").fetchall()
    out["quarantine"] = con.execute(
        "SELECT * EXCLUDE (quarantined_at) FROM ops.quarantine ORDER BY ALL"
    ).fetchall()
    return out


_CONFLICT = "%s has the same id as another with different content and no later meta.lastUpdated"


def test_set_based_decision_equals_the_per_type_oracle_batch_after_batch(tmp_path: Path):
    con = open_warehouse(tmp_path / "w.duckdb")
    try:
        for rows in _BATCHES:
            _stage(con, rows)
            oracle = _oracle_decisions(con)
            merge_stage(con)
            got = sorted(con.execute("SELECT * FROM _all_decided").fetchall())
            assert got == oracle
    finally:
        con.close()


def test_merge_outcomes_of_the_two_batches(tmp_path: Path):
    con = open_warehouse(tmp_path / "w.duckdb")
    try:
        results = []
        for rows in _BATCHES:
            _stage(con, rows)
            results.append(merge_stage(con))
        first, second = results
        assert first.resources_loaded == {"Encounter": 3, "Observation": 2, "Patient": 3}
        assert (first.duplicates_identical, first.superseded, first.conflicts, first.replaced) == (1, 2, 1, 0)
        assert second.resources_loaded == {"Patient": 3, "Procedure": 1}
        assert (second.duplicates_identical, second.superseded, second.conflicts, second.replaced) == (
            1,
            1,
            1,
            2,
        )
        state = _state(con)
        assert [(r[0], r[8]) for r in state["Patient"]] == [
            ("p1", False),
            ("p2", False),
            ("p3", False),
            ("p4", True),
        ]
        assert [r[0] for r in state["Encounter"]] == ["e1", "e2", "p1"]
        outcomes = {(r[1], r[2]): (r[4], r[5]) for r in state["ledger"]}
        assert outcomes[("f2", 1)] == ("converted", "newer_version")
        assert outcomes[("f2", 2)] == ("skipped", "duplicate_identical")
        assert outcomes[("f2", 4)] == ("quarantined", "conflicting_duplicate")
        assert outcomes[("f2", 6)] == ("converted", None)  # its Patient is older, its Procedure new
        assert outcomes[("f1", 3)] == ("skipped", "superseded")
        assert outcomes[("f1", 5)] == ("skipped", "superseded")  # preliminary before final
        assert sorted(state["quarantine"]) == [
            (
                "r1",
                "f1",
                8,
                "conflicting_duplicate",
                pointer("f1", "resource", 8, 0, 1),
                _CONFLICT % "Encounter",
                "Encounter",
            ),
            (
                "r1",
                "f2",
                4,
                "conflicting_duplicate",
                pointer("f2", "resource", 4, 0, 1),
                _CONFLICT % "Encounter",
                "Encounter",
            ),
        ]
    finally:
        con.close()

"""Merging one file's staged resources into fhir.<Type> tables, deciding duplicates set-based in SQL."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import duckdb

from pipelines.common.ledger import pointer
from pipelines.common.warehouse import ensure_resource_table
from pipelines.parties import merge_staged_parties
from pipelines.result_versions import rank_sql

# Which row of a (type, id) group wins: a full resource over a reference-only one; then the latest
# meta.lastUpdated; on a tie, the later result version by status (preliminary < final < corrected, from
# schemas/result_status_rank.json); then what the warehouse already holds, then what came first (run,
# file, unit, position in unit).
_DECIDE = """
CREATE OR REPLACE TEMP TABLE _decided AS
WITH staged AS (
    SELECT run_id, seq, file_sha256, unit_position, resource_index, id, content_sha256,
           TRY_CAST(last_updated AS TIMESTAMPTZ) AS lu, reference_only, FALSE AS existing,
           {staged_rank} AS vrank  -- result versions: see pipelines/result_versions.py
    FROM _stage WHERE resource_type = $rtype
), current AS (
    SELECT NULL AS run_id, 0 AS seq, file_sha256, unit_position, 0 AS resource_index, id, content_sha256,
           TRY_CAST(last_updated AS TIMESTAMPTZ) AS lu, reference_only, TRUE AS existing,
           {current_rank} AS vrank
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
SELECT run_id, seq, file_sha256, unit_position, resource_index, id,
    CASE
        WHEN content_sha256 = best_hash AND hash_rank = 1 THEN 'accepted'
        WHEN content_sha256 = best_hash THEN 'duplicate_identical'
        WHEN reference_only THEN 'reference_only_present'  -- a stand-in never overrides or conflicts
        WHEN lu IS NOT NULL AND best_lu IS NOT NULL AND lu < best_lu THEN 'superseded'
        WHEN lu IS NOT DISTINCT FROM best_lu AND vrank < best_rank THEN 'superseded'  -- P before F, one MSH-7
        ELSE 'conflicting_duplicate'
    END AS decision,
    id_exists
FROM grouped WHERE NOT existing
"""

_INSERT = """
INSERT INTO {table}
SELECT s.id, s.resource::JSON, s.source_system, s.source_id, s.file_sha256, s.unit_position, s.run_id,
       s.content_sha256, s.last_updated, s.reference_only
FROM _stage s JOIN _decided d USING (run_id, file_sha256, unit_position, resource_index)
WHERE s.resource_type = $rtype AND d.decision = 'accepted'
"""

# A unit all of whose resources were turned away takes the outcome of the weightiest reason.
_LEDGER_UPDATE = """
UPDATE ops.ledger AS l SET
    outcome = CASE WHEN x.accepted > 0 THEN 'converted'
                   WHEN x.conflicts > 0 THEN 'quarantined' ELSE 'skipped' END,
    reason = CASE WHEN x.accepted > 0 THEN (CASE WHEN x.replaced > 0 THEN 'newer_version' END)
                  WHEN x.conflicts > 0 THEN 'conflicting_duplicate'
                  WHEN x.superseded > 0 THEN 'superseded'
                  WHEN x.reference_only > 0 THEN 'reference_only_present' ELSE 'duplicate_identical' END,
    resource_count = x.accepted
FROM (
    SELECT run_id, file_sha256, unit_position,
        count(*) FILTER (WHERE decision = 'accepted') AS accepted,
        count(*) FILTER (WHERE decision = 'accepted' AND id_exists) AS replaced,
        count(*) FILTER (WHERE decision = 'conflicting_duplicate') AS conflicts,
        count(*) FILTER (WHERE decision = 'superseded') AS superseded,
        count(*) FILTER (WHERE decision = 'reference_only_present') AS reference_only,
        count(*) AS total
    FROM _all_decided GROUP BY ALL
    HAVING count(*) FILTER (WHERE decision = 'accepted' AND NOT id_exists) < count(*)
) AS x
WHERE l.run_id = x.run_id AND l.file_sha256 = x.file_sha256 AND l.unit_position = x.unit_position
  AND l.outcome = 'converted'
"""


@dataclass
class LoadResult:
    resources_loaded: dict[str, int] = field(default_factory=dict)
    replaced: int = 0
    duplicates_identical: int = 0
    superseded: int = 0
    reference_only: int = 0
    conflicts: int = 0


STAGE_DDL = """
CREATE OR REPLACE TEMP TABLE _stage (
    run_id VARCHAR, seq INTEGER, file_sha256 VARCHAR, unit_position BIGINT, resource_index INTEGER,
    resource_type VARCHAR, id VARCHAR, source_system VARCHAR, source_id VARCHAR, content_sha256 VARCHAR,
    last_updated VARCHAR, resource VARCHAR, reference_only BOOLEAN
)
"""


def create_stage(con: duckdb.DuckDBPyConnection) -> None:
    """An empty per-connection stage: a file's resources wait here until its transaction merges them."""
    con.execute(STAGE_DDL)


def merge_stage(con: duckdb.DuckDBPyConnection) -> LoadResult:
    """Merge the staged resources into fhir.* and settle duplicates; the caller owns the transaction."""
    result = LoadResult()
    types = [r[0] for r in con.execute("SELECT DISTINCT resource_type FROM _stage ORDER BY 1").fetchall()]
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _all_decided (run_id VARCHAR, file_sha256 VARCHAR, "
        "unit_position BIGINT, resource_index INTEGER, resource_type VARCHAR, decision VARCHAR, "
        "id_exists BOOLEAN)"
    )
    merge_staged_parties(con, partial(ensure_resource_table, con))  # authors seen by several documents
    for rtype in types:
        table = ensure_resource_table(con, rtype)
        ranks = {"staged_rank": rank_sql("resource", rtype), "current_rank": rank_sql("resource", rtype)}
        con.execute(_DECIDE.format(table=table, **ranks), {"rtype": rtype})
        con.execute(
            f"DELETE FROM {table} WHERE id IN "
            "(SELECT id FROM _decided WHERE decision = 'accepted' AND id_exists)"
        )
        con.execute(_INSERT.format(table=table), {"rtype": rtype})
        con.execute(
            "INSERT INTO _all_decided SELECT run_id, file_sha256, unit_position, resource_index, "
            "$rtype, decision, id_exists FROM _decided",
            {"rtype": rtype},
        )
    for decision, replaced, rtype, count in con.execute(
        "SELECT decision, id_exists, resource_type, count(*) FROM _all_decided GROUP BY ALL"
    ).fetchall():
        if decision == "accepted":
            result.resources_loaded[rtype] = result.resources_loaded.get(rtype, 0) + count
            result.replaced += count if replaced else 0
        elif decision == "duplicate_identical":
            result.duplicates_identical += count
        elif decision == "superseded":
            result.superseded += count
        elif decision == "reference_only_present":
            result.reference_only += count
        else:
            result.conflicts += count
    con.execute(_LEDGER_UPDATE)
    _quarantine_conflicts(con)
    con.execute("DELETE FROM _stage")
    return result


def _quarantine_conflicts(con: duckdb.DuckDBPyConnection) -> None:
    rows = con.execute("""
        SELECT d.run_id, d.file_sha256, d.unit_position, d.resource_type, l.unit_kind, l.byte_offset,
               l.byte_length
        FROM _all_decided d JOIN ops.ledger l USING (run_id, file_sha256, unit_position)
        WHERE d.decision = 'conflicting_duplicate'
        ORDER BY d.run_id, d.file_sha256, d.unit_position, d.resource_index
    """).fetchall()
    if not rows:
        return
    con.executemany(
        "INSERT INTO ops.quarantine VALUES (?, ?, ?, 'conflicting_duplicate', ?, ?, ?, now())",
        [
            (
                run_id,
                sha,
                pos,
                pointer(sha, kind, pos, off, length),
                f"{rtype} has the same id as another with different content and no later meta.lastUpdated",
                rtype,
            )
            for run_id, sha, pos, rtype, kind, off, length in rows
        ],
    )

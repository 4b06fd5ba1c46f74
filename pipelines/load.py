"""Merging one file's staged resources into fhir.<Type> tables, deciding duplicates set-based in SQL."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import duckdb

from pipelines.common.warehouse import RESOURCE_TYPE, ensure_resource_table
from pipelines.parties import merge_staged_parties, settle_party_lineage
from pipelines.result_versions import is_result, rank_sql, version_time_sql

# Which row of a (type, id) group wins: a full resource over a reference-only one; then the latest
# meta.lastUpdated; on a tie, the later result version by status (preliminary < final < corrected, from
# schemas/result_status_rank.json), then by its version times (issued, analysis time); then what the
# warehouse already holds, then what came first (run, file, unit, position in unit). One statement
# decides every staged type at once: the rows the warehouse already holds come from each type's table
# ({current}, one branch per staged type).
_DECIDE = """
CREATE OR REPLACE TEMP TABLE _all_decided AS
WITH staged AS (
    SELECT run_id, seq, file_sha256, unit_position, resource_index, resource_type, id, content_sha256,
           TRY_CAST(last_updated AS TIMESTAMPTZ) AS lu, reference_only, FALSE AS existing,
           {staged_rank} AS vrank,  -- result versions: see pipelines/result_versions.py
           {staged_issued} AS vt1, {staged_analysed} AS vt2
    FROM _stage
), current AS (
    {current}
), candidates AS (
    {timed}
), grouped AS (
    SELECT *,
        first_value(content_sha256) OVER best AS best_hash,
        first_value(lu) OVER best AS best_lu,
        first_value(vrank) OVER best AS best_rank,
        first_value(vt1) OVER best AS best_vt1,
        first_value(vt2) OVER best AS best_vt2,
        bool_or(existing) OVER (PARTITION BY resource_type, id) AS id_exists,
        row_number() OVER (PARTITION BY resource_type, id, content_sha256
                           ORDER BY existing DESC, run_id, seq, unit_position, resource_index) AS hash_rank
    FROM candidates
    WINDOW best AS (PARTITION BY resource_type, id
                    ORDER BY reference_only, lu DESC NULLS LAST, vrank DESC,
                             vt1 DESC NULLS LAST, vt2 DESC NULLS LAST, existing DESC,
                    run_id, seq, unit_position, resource_index
                    ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
)
SELECT run_id, file_sha256, unit_position, resource_index, resource_type, id,
    CASE
        WHEN content_sha256 = best_hash AND hash_rank = 1 THEN 'accepted'
        WHEN content_sha256 = best_hash THEN 'duplicate_identical'
        WHEN reference_only THEN 'reference_only_present'  -- a stand-in never overrides or conflicts
        WHEN lu IS NOT NULL AND best_lu IS NOT NULL AND lu < best_lu THEN 'superseded'
        WHEN lu IS NOT DISTINCT FROM best_lu AND vrank < best_rank THEN 'superseded'  -- P before F, one MSH-7
        -- at one status, an earlier OBR-22, then an earlier OBX-19 (see _TIMED: a time only orders
        -- versions that all carry it; otherwise they stay a conflict)
        WHEN lu IS NOT DISTINCT FROM best_lu AND vrank = best_rank AND vt1 < best_vt1 THEN 'superseded'
        WHEN lu IS NOT DISTINCT FROM best_lu AND vrank = best_rank AND vt1 IS NOT DISTINCT FROM best_vt1
             AND vt2 < best_vt2 THEN 'superseded'
        ELSE 'conflicting_duplicate'
    END AS decision,
    id_exists
FROM grouped WHERE NOT existing
"""

_UNTIMED = "SELECT * FROM staged UNION ALL SELECT * FROM current"
# A version time orders the versions tied before it only when every one of them carries it: a version
# without OBR-22 is not "older" than one with it, so such a tie cannot be ordered and stays a conflict,
# whichever arrived first.
_TIMED = """
    SELECT * REPLACE (CASE WHEN count(vt2) OVER t2 = count(*) OVER t2 THEN vt2 END AS vt2)
    FROM (
        SELECT * REPLACE (CASE WHEN count(vt1) OVER t1 = count(*) OVER t1 THEN vt1 END AS vt1)
        FROM (SELECT * FROM staged UNION ALL SELECT * FROM current)
        WINDOW t1 AS (PARTITION BY resource_type, id, reference_only, lu, vrank)
    )
    WINDOW t2 AS (PARTITION BY resource_type, id, reference_only, lu, vrank, vt1)
"""

# The rows a type's table already holds under the staged ids, shaped as the staged rows.
_CURRENT = """
    SELECT NULL AS run_id, 0 AS seq, file_sha256, unit_position, 0 AS resource_index,
           '{rtype}' AS resource_type, id, content_sha256, TRY_CAST(last_updated AS TIMESTAMPTZ) AS lu,
           reference_only, TRUE AS existing, {rank} AS vrank, {issued} AS vt1, {analysed} AS vt2
    FROM {table} WHERE id IN (SELECT id FROM _stage WHERE resource_type = '{rtype}')
"""

_INSERT = """
INSERT INTO {table}
SELECT s.id, s.resource::JSON, s.source_system, s.source_id, s.file_sha256, s.unit_position, s.run_id,
       s.content_sha256, s.last_updated, s.reference_only
FROM _stage s JOIN _all_decided d USING (run_id, file_sha256, unit_position, resource_index)
WHERE s.resource_type = $rtype AND d.resource_type = $rtype AND d.decision = 'accepted'
"""

# A unit all of whose resources were turned away takes the outcome of the weightiest reason. A merged
# party (pipelines/parties) counts for every unit whose version went into it, accepted or identical after
# the merge: which unit's copy is stored depends on how files fell into batches, the credit must not.
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
        count(*) FILTER (WHERE decision = 'accepted'
                         OR (decision = 'duplicate_identical' AND m.id IS NOT NULL)) AS accepted,
        count(*) FILTER (WHERE decision = 'accepted' AND id_exists) AS replaced,
        count(*) FILTER (WHERE decision = 'conflicting_duplicate') AS conflicts,
        count(*) FILTER (WHERE decision = 'superseded') AS superseded,
        count(*) FILTER (WHERE decision = 'reference_only_present') AS reference_only,
        count(*) AS total
    FROM _all_decided d LEFT JOIN _party_merged_ids m USING (resource_type, id) GROUP BY ALL
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
    """Merge the staged resources into fhir.* and settle duplicates; the caller owns the transaction.

    Set-based: one statement decides every staged resource of every type, then each type's table gets
    one INSERT of what was accepted (and one DELETE only where an accepted resource replaces a stored
    one), so a batch of many types costs a few statements, not a few per type.
    """
    result = LoadResult()
    types = [r[0] for r in con.execute("SELECT DISTINCT resource_type FROM _stage ORDER BY 1").fetchall()]
    if not types:
        con.execute(_EMPTY_DECIDED)
        return result
    merge_staged_parties(con, partial(ensure_resource_table, con))  # authors seen by several documents
    tables = _resource_tables(con, types)
    current = " UNION ALL ".join(
        _CURRENT.format(
            rtype=t,
            table=tables[t],
            rank=rank_sql("resource", t),
            issued=version_time_sql("resource", t)[0],
            analysed=version_time_sql("resource", t)[1],
        )
        for t in types
    )
    issued, analysed = _staged_times(types)
    con.execute(
        _DECIDE.format(
            staged_rank=_staged_rank(types),
            staged_issued=issued,
            staged_analysed=analysed,
            current=current,
            # only results have version times: other batches skip the windows that weigh them
            timed=_TIMED if any(is_result(t) for t in types) else _UNTIMED,
        )
    )
    delete, insert = set(), set()
    for decision, replaced, rtype, count in con.execute(
        "SELECT decision, id_exists, resource_type, count(*) FROM _all_decided GROUP BY ALL ORDER BY ALL"
    ).fetchall():
        if decision == "accepted":
            result.resources_loaded[rtype] = result.resources_loaded.get(rtype, 0) + count
            result.replaced += count if replaced else 0
            insert.add(rtype)
            if replaced:
                delete.add(rtype)
        elif decision == "duplicate_identical":
            result.duplicates_identical += count
        elif decision == "superseded":
            result.superseded += count
        elif decision == "reference_only_present":
            result.reference_only += count
        else:
            result.conflicts += count
    for rtype in types:
        if rtype in delete:
            con.execute(
                f"DELETE FROM {tables[rtype]} WHERE id IN (SELECT d.id FROM _all_decided d "
                "WHERE d.resource_type = $rtype AND d.decision = 'accepted' AND d.id_exists)",
                {"rtype": rtype},
            )
        if rtype in insert:
            con.execute(_INSERT.format(table=tables[rtype]), {"rtype": rtype})
    settle_party_lineage(con, tables)
    con.execute(_LEDGER_UPDATE)
    _quarantine_conflicts(con)
    create_stage(con)  # emptied by replacing it: DuckDB keeps the memory of rows deleted from a temp table
    return result


_EMPTY_DECIDED = (
    "CREATE OR REPLACE TEMP TABLE _all_decided (run_id VARCHAR, file_sha256 VARCHAR, "
    "unit_position BIGINT, resource_index INTEGER, resource_type VARCHAR, id VARCHAR, decision VARCHAR, "
    "id_exists BOOLEAN)"
)


def _resource_tables(con: duckdb.DuckDBPyConnection, types: list[str]) -> dict[str, str]:
    """Each staged type's quoted table name, creating only the tables not there yet (one lookup)."""
    present = {
        r[0]
        for r in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
            "AND schema_name = 'fhir'"
        ).fetchall()
    }
    out = {}
    for rtype in types:
        if rtype in present and RESOURCE_TYPE.fullmatch(rtype):
            out[rtype] = f'fhir."{rtype}"'
        else:
            out[rtype] = ensure_resource_table(con, rtype)  # validates the name before creating
    return out


def _staged_rank(types: list[str]) -> str:
    """The version rank of a staged row, by its type (rank_sql gives '0' for unranked types)."""
    ranked = [(t, rank_sql("resource", t)) for t in types]
    cases = " ".join(f"WHEN '{t}' THEN {expr}" for t, expr in ranked if expr != "0")
    return f"CASE resource_type {cases} ELSE 0 END" if cases else "0"


def _staged_times(types: list[str]) -> tuple[str, str]:
    """The version times (issued, analysis time) of a staged row, by its type; NULL for other types."""
    results = [t for t in types if is_result(t)]
    if not results:
        return "CAST(NULL AS TIMESTAMPTZ)", "CAST(NULL AS TIMESTAMPTZ)"
    listed = ", ".join(f"'{t}'" for t in results)
    # The expressions are the same for every result type (schemas/result_status_rank.json).
    issued, analysed = version_time_sql("resource", results[0])
    return (
        f"CASE WHEN resource_type IN ({listed}) THEN {issued} END",
        f"CASE WHEN resource_type IN ({listed}) THEN {analysed} END",
    )


# One quarantine row per conflicting resource, its pointer as pipelines.common.ledger.pointer writes it;
# the ledger is read only for the run's units in question.
_QUARANTINE_CONFLICTS = """
INSERT INTO ops.quarantine
SELECT d.run_id, d.file_sha256, d.unit_position, 'conflicting_duplicate',
       'landing/' || d.file_sha256 || '#' || l.unit_kind || '=' || d.unit_position
           || CASE WHEN l.byte_offset IS NULL THEN ''
                ELSE '@' || l.byte_offset || '+' || coalesce(l.byte_length::VARCHAR, 'None') END,
       d.resource_type || ' has the same id as another with different content and no later meta.lastUpdated',
       d.resource_type, now()
FROM _all_decided d JOIN ops.ledger l
  ON l.run_id = d.run_id AND l.file_sha256 = d.file_sha256 AND l.unit_position = d.unit_position
WHERE d.decision = 'conflicting_duplicate'
  AND l.run_id IN (SELECT DISTINCT run_id FROM _all_decided WHERE decision = 'conflicting_duplicate')
ORDER BY d.run_id, d.file_sha256, d.unit_position, d.resource_index
"""


def _quarantine_conflicts(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(_QUARANTINE_CONFLICTS)

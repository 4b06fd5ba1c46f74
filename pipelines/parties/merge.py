"""Versions of one Practitioner, Organization, PractitionerRole or Location merged instead of conflicting.

A C-CDA author or custodian is repeated on every document, an HL7 ordering provider on every message;
the converters give the same identifiers the same id, but one document may add a phone number, another
a second name. Without meta.lastUpdated nothing says which version is newer, so instead of quarantining
all but one as conflicting_duplicate the versions are merged (rules in schemas/party_merge.json).
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from pipelines.common import arrow
from terminology.normalize import strip_added

_RULES = Path(__file__).resolve().parents[2] / "schemas" / "party_merge.json"


@cache
def merge_rules() -> dict[str, Any]:
    """{"types": resource type -> its rule (the alias list a losing name goes to), "formats": [...]}."""
    return orjson.loads(_RULES.read_bytes())


def _canon(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def merge_resources(resources: list[dict[str, Any]], alias: str | None = None) -> dict[str, Any]:
    """One resource holding every version's content; the same whatever the order of `resources`.

    Lists are unioned (each element once, ordered by its canonical JSON); a single value that differs
    keeps the smallest canonical JSON; with `alias`, the names that lost become aliases.
    """
    keys = sorted({k for r in resources for k in r} - {"resourceType", "id", "meta"})
    out: dict[str, Any] = {k: resources[0][k] for k in ("resourceType", "id") if k in resources[0]}
    metas = [r["meta"] for r in resources if isinstance(r.get("meta"), dict)]
    if metas:
        stamps = [m["lastUpdated"] for m in metas if isinstance(m.get("lastUpdated"), str)]
        rest = merge_resources([{k: v for k, v in m.items() if k != "lastUpdated"} for m in metas])
        # The latest instant; one instant written in two zones: the larger text, so the order never matters.
        meta = {"lastUpdated": max(stamps, key=lambda t: (*_instant(t), t))} if stamps else {}
        meta.update(rest)
        if meta:
            out["meta"] = meta
    for key in keys:
        values = [r[key] for r in resources if key in r]
        if all(isinstance(v, list) for v in values):
            union = {_canon(item): item for v in values for item in v}
            out[key] = [union[c] for c in sorted(union)]
        else:
            out[key] = min(values, key=_canon)
    if alias and isinstance(out.get("name"), str):
        names = {r["name"] for r in resources if isinstance(r.get("name"), str)}
        names |= {a for a in out.get(alias, []) if isinstance(a, str)}
        others = sorted(names - {out["name"]})
        if others:
            out[alias] = others
    return out


def _instant(text: str) -> tuple[int, datetime | str]:
    try:
        return 1, datetime.fromisoformat(text)
    except ValueError:
        return 0, text  # not an instant: never later than one


# Versions that take part: full (not reference-only) versions of the merged types from files of the
# formats that merge. Each statement covers every type at once, so a batch costs a fixed handful of
# statements however many types it stages.
_STAGED = (
    "FROM _stage s JOIN ops.files f USING (file_sha256) WHERE list_contains($types, s.resource_type) "
    "AND NOT s.reference_only AND list_contains($formats, f.format)"
)
_HELD = (
    "FROM {table} t JOIN ops.files f USING (file_sha256) WHERE NOT t.reference_only "
    "AND list_contains($formats, f.format)"
)
# Each version as it arrived, once per file: what a retraction recomputes the merged resource from.
_RECORD = f"""
INSERT INTO ops.party_versions
SELECT DISTINCT s.resource_type, s.id, s.content_sha256, s.file_sha256, s.unit_position, s.run_id,
       s.source_system, s.source_id, s.last_updated, s.resource
{_STAGED} AND NOT EXISTS (
    SELECT 1 FROM ops.party_versions v WHERE v.resource_type = s.resource_type AND v.id = s.id
    AND v.content_sha256 = s.content_sha256 AND v.file_sha256 = s.file_sha256)
"""
# One branch per type: its warehouse table's versions of the ids listed (by type) in `{among}`.
_HELD_BRANCH = (
    "SELECT '{rtype}' AS resource_type, t.id, {column} {held} "
    "AND t.id IN (SELECT id FROM {among} WHERE resource_type = '{rtype}')"
)
_MERGED = pa.schema([(c, pa.string()) for c in ("resource_type", "id", "resource", "sha", "lu")])


def _held(tables: dict[str, str], column: str, among: str) -> str:
    return " UNION ALL ".join(
        _HELD_BRANCH.format(rtype=rtype, column=column, held=_HELD.format(table=table), among=among)
        for rtype, table in tables.items()
    )


def merge_staged_parties(con: duckdb.DuckDBPyConnection, table_for: Any) -> int:
    """Merge, in the stage and the warehouse, every party whose versions differ; returns how many ids.

    Afterwards every staged version of such an id holds the merged resource, so the duplicate decision
    accepts one and counts the rest as identical; a differing warehouse version is removed, as the merged
    one replaces it. `table_for(rtype)` gives (creating it if needed) the resource table's quoted name.
    """
    rules = merge_rules()
    # Which ids were merged in this batch: the ledger credits every unit whose version went into one.
    con.execute("CREATE OR REPLACE TEMP TABLE _party_merged_ids (resource_type VARCHAR, id VARCHAR)")
    staged_types = {r[0] for r in con.execute("SELECT DISTINCT resource_type FROM _stage").fetchall()}
    types = sorted(t for t in rules["types"] if t in staged_types)
    if not types:
        return 0
    tables = {rtype: table_for(rtype) for rtype in types}
    args = {"types": types, "formats": rules["formats"]}
    con.execute(_RECORD, args)
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _party_staged AS "
        f"SELECT s.resource_type, s.id, s.content_sha256, s.resource {_STAGED}",
        args,
    )
    formats = {"formats": rules["formats"]}
    con.execute(
        "INSERT INTO _party_merged_ids SELECT resource_type, id FROM ("
        "SELECT resource_type, id, content_sha256 FROM _party_staged "
        f"UNION ALL {_held(tables, 't.content_sha256', '_party_staged')}) "
        "GROUP BY resource_type, id HAVING count(DISTINCT content_sha256) > 1",
        formats,
    )
    versions: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for rtype, rid, text in con.execute(
        "SELECT resource_type, id, resource FROM _party_staged JOIN _party_merged_ids "
        f"USING (resource_type, id) UNION ALL {_held(tables, 't.resource::VARCHAR', '_party_merged_ids')}",
        formats,
    ).fetchall():
        versions.setdefault((rtype, rid), []).append(strip_added(orjson.loads(text)))
    con.execute("DROP TABLE _party_staged")
    if not versions:
        return 0
    rows = []
    for (rtype, rid), found in versions.items():
        merged = merge_resources(found, rules["types"][rtype].get("alias"))
        body = orjson.dumps(merged)
        stamp = merged.get("meta", {}).get("lastUpdated")
        rows.append((rtype, rid, body.decode("utf-8"), hashlib.sha256(body).hexdigest(), stamp))
    merged_table = pa.Table.from_arrays(
        [arrow.array(col, pa.string()) for col in zip(*rows, strict=True)], schema=_MERGED
    )
    con.register("_party_merged", merged_table)
    try:
        con.execute(
            "UPDATE _stage SET resource = m.resource, content_sha256 = m.sha, last_updated = m.lu "
            "FROM _party_merged m, ops.files f WHERE _stage.id = m.id "
            "AND _stage.resource_type = m.resource_type AND NOT _stage.reference_only "
            "AND f.file_sha256 = _stage.file_sha256 AND list_contains($formats, f.format)",
            formats,
        )
        for rtype in sorted({r[0] for r in rows}):
            con.execute(
                f"DELETE FROM {tables[rtype]} t USING _party_merged m, ops.files f "
                "WHERE m.resource_type = $rtype AND t.id = m.id AND t.content_sha256 <> m.sha "
                "AND NOT t.reference_only AND f.file_sha256 = t.file_sha256 "
                "AND list_contains($formats, f.format)",
                {**formats, "rtype": rtype},
            )
    finally:
        con.unregister("_party_merged")
    return len(rows)


# A merged party's stored row names one source however files fell into batches: the least file sha256 and
# unit position among all its versions (a one-process run and a resumed one store the same row).
_LINEAGE = """
UPDATE {table} AS t SET file_sha256 = c.file_sha256, unit_position = c.unit_position,
    source_system = c.source_system, source_id = c.source_id
FROM (
    SELECT DISTINCT ON (id) id, file_sha256, unit_position, source_system, source_id
    FROM ops.party_versions
    WHERE resource_type = $rtype AND id IN (SELECT id FROM _party_merged_ids WHERE resource_type = $rtype)
    ORDER BY id, file_sha256, unit_position
) AS c
WHERE t.id = c.id AND NOT t.reference_only
"""


def settle_party_lineage(con: duckdb.DuckDBPyConnection, tables: dict[str, str]) -> None:
    """After the merge's inserts: give every party merged in this batch its order-independent lineage."""
    for (rtype,) in con.execute("SELECT DISTINCT resource_type FROM _party_merged_ids ORDER BY 1").fetchall():
        con.execute(_LINEAGE.format(table=tables[rtype]), {"rtype": rtype})


def recompute_parties(con: duckdb.DuckDBPyConnection, where: str, args: list[Any]) -> list[dict[str, Any]]:
    """After a retraction: drop the versions matching `where` (over ops.party_versions) and rebuild each
    affected resource from the versions that remain (one distinct version stands as it arrived; several
    are merged). Returns the rebuilt resources; resources with no version left are deleted."""
    rules = merge_rules()
    gone = con.execute(
        f"SELECT DISTINCT resource_type, id FROM ops.party_versions WHERE {where}", args
    ).fetchall()
    con.execute(f"DELETE FROM ops.party_versions WHERE {where}", args)
    rebuilt = []
    for rtype, rid in sorted(gone):
        table = f'fhir."{rtype}"'
        con.execute(f"DELETE FROM {table} WHERE id = ?", [rid])
        rows = con.execute(
            "SELECT content_sha256, resource, file_sha256, unit_position, run_id, source_system, source_id "
            "FROM ops.party_versions WHERE resource_type = ? AND id = ? ORDER BY run_id, file_sha256",
            [rtype, rid],
        ).fetchall()
        if not rows:
            continue
        distinct = {sha: text for sha, text, *_ in rows}
        if len(distinct) == 1:
            body = next(iter(distinct.values())).encode()
        else:
            alias = rules["types"][rtype].get("alias")
            body = orjson.dumps(merge_resources([orjson.loads(t) for t in distinct.values()], alias))
        resource = orjson.loads(body)
        _, _, file_sha, position, run_id, system, source_id = rows[-1]  # the latest contributor
        con.execute(
            f"INSERT INTO {table} VALUES (?, ?::JSON, ?, ?, ?, ?, ?, ?, ?, FALSE)",
            [
                rid,
                body.decode(),
                system,
                source_id,
                file_sha,
                position,
                run_id,
                hashlib.sha256(body).hexdigest(),
                resource.get("meta", {}).get("lastUpdated"),
            ],
        )
        rebuilt.append(resource)
    return rebuilt

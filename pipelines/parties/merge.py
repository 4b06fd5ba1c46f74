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


# Versions that take part: full (not reference-only) versions from files of the formats that merge.
_STAGED = (
    "FROM _stage s JOIN ops.files f USING (file_sha256) WHERE s.resource_type = $rtype "
    "AND NOT s.reference_only AND list_contains($formats, f.format)"
)
_HELD = (
    "FROM {table} t JOIN ops.files f USING (file_sha256) WHERE NOT t.reference_only "
    "AND list_contains($formats, f.format)"
)
# Each version as it arrived, once per file: what a retraction recomputes the merged resource from.
_RECORD = """
INSERT INTO ops.party_versions
SELECT DISTINCT s.resource_type, s.id, s.content_sha256, s.file_sha256, s.unit_position, s.run_id,
       s.source_system, s.source_id, s.last_updated, s.resource
{staged} AND NOT EXISTS (
    SELECT 1 FROM ops.party_versions v WHERE v.resource_type = s.resource_type AND v.id = s.id
    AND v.content_sha256 = s.content_sha256 AND v.file_sha256 = s.file_sha256)
"""
_CANDIDATES = f"""
WITH s AS (SELECT s.id, s.content_sha256 {_STAGED}),
e AS (SELECT t.id, t.content_sha256 {_HELD} AND t.id IN (SELECT id FROM s))
SELECT id FROM (SELECT * FROM s UNION ALL SELECT * FROM e)
GROUP BY id HAVING count(DISTINCT content_sha256) > 1
"""


def merge_staged_parties(con: duckdb.DuckDBPyConnection, table_for: Any) -> int:
    """Merge, in the stage and the warehouse, every party whose versions differ; returns how many ids.

    Afterwards every staged version of such an id holds the merged resource, so the duplicate decision
    accepts one and counts the rest as identical; a differing warehouse version is removed, as the merged
    one replaces it. `table_for(rtype)` gives (creating it if needed) the resource table's quoted name.
    """
    merged_ids = 0
    rules = merge_rules()
    # Which ids were merged in this batch: the ledger credits every unit whose version went into one.
    con.execute("CREATE OR REPLACE TEMP TABLE _party_merged_ids (resource_type VARCHAR, id VARCHAR)")
    staged_types = {r[0] for r in con.execute("SELECT DISTINCT resource_type FROM _stage").fetchall()}
    for rtype, rule in sorted(rules["types"].items()):
        if rtype not in staged_types:
            continue
        table = table_for(rtype)
        args = {"rtype": rtype, "formats": rules["formats"]}
        con.execute(_RECORD.format(staged=_STAGED), args)
        ids = [r[0] for r in con.execute(_CANDIDATES.format(table=table), args).fetchall()]
        if not ids:
            continue
        versions: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
        for rid, text in con.execute(
            f"SELECT s.id, s.resource {_STAGED} AND list_contains($ids, s.id) "
            f"UNION ALL SELECT t.id, t.resource::VARCHAR {_HELD.format(table=table)} "
            "AND list_contains($ids, t.id)",
            {**args, "ids": ids},
        ).fetchall():
            versions[rid].append(strip_added(orjson.loads(text)))
        rows = []
        for rid in ids:
            merged = merge_resources(versions[rid], rule.get("alias"))
            body = orjson.dumps(merged)
            stamp = merged.get("meta", {}).get("lastUpdated")
            rows.append((rid, body.decode("utf-8"), hashlib.sha256(body).hexdigest(), stamp))
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _party_merged "
            "(id VARCHAR, resource VARCHAR, sha VARCHAR, lu VARCHAR)"
        )
        con.executemany("INSERT INTO _party_merged VALUES (?, ?, ?, ?)", rows)
        con.execute(
            "UPDATE _stage SET resource = m.resource, content_sha256 = m.sha, last_updated = m.lu "
            "FROM _party_merged m, ops.files f WHERE _stage.id = m.id AND _stage.resource_type = $rtype "
            "AND NOT _stage.reference_only AND f.file_sha256 = _stage.file_sha256 "
            "AND list_contains($formats, f.format)",
            args,
        )
        con.execute(
            f"DELETE FROM {table} t USING _party_merged m, ops.files f "
            "WHERE t.id = m.id AND t.content_sha256 <> m.sha AND NOT t.reference_only "
            "AND f.file_sha256 = t.file_sha256 AND list_contains($formats, f.format)",
            {"formats": rules["formats"]},
        )
        con.execute("INSERT INTO _party_merged_ids SELECT $rtype, id FROM _party_merged", {"rtype": rtype})
        con.execute("DROP TABLE _party_merged")
        merged_ids += len(ids)
    return merged_ids


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

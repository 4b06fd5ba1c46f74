"""Fact de-duplication: the same fact arriving by several paths, matched on keys as data, one survivor."""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from pipelines.common import arrow
from pipelines.common.warehouse import resource_tables
from pipelines.identity.config import IdentityConfig

log = logging.getLogger(__name__)


def _get(resource: Any, path: str) -> Any:
    value = resource
    for part in path.split("."):
        if isinstance(value, list):
            value = value[int(part)] if part.isdigit() and int(part) < len(value) else None
        elif isinstance(value, dict):
            value = value.get(part)
        else:
            return None
        if value is None:
            return None
    return value


def _minutes(text: Any) -> int | None:
    """A FHIR date or dateTime as epoch minutes (UTC); a bare date counts as its midnight in UTC."""
    if not isinstance(text, str) or len(text) < 4:
        return None
    padded = {4: "-01-01", 7: "-01"}.get(len(text), "")
    try:
        parsed = datetime.fromisoformat((text + padded).replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() // 60)


def _code(resource: dict[str, Any], rule: dict[str, Any]) -> str | None:
    codings = [c for c in (_get(resource, rule["code"]) or {}).get("coding", []) or [] if c.get("code")]
    for system in rule.get("code_systems", []):
        for c in codings:
            if c.get("system") == system:
                return f"{system}|{c['code']}"
    return f"{codings[0].get('system')}|{codings[0]['code']}" if codings else None


def _value(resource: dict[str, Any], rule: dict[str, Any]) -> str:
    for path in rule.get("value", []):
        v = _get(resource, path)
        if isinstance(v, bool) or v is None:
            if v is not None:
                return str(v)
            continue
        if isinstance(v, int | float):
            return f"{round(float(v), int(rule.get('value_decimals', 2))):g}"
        return str(v)
    return ""


def _json_path(path: str) -> str:
    """A dotted path of facts.json ("subject", "a.0.b") as a JSON path ($.subject, $.a[0].b)."""
    out = "$"
    for part in path.split("."):
        out += f"[{int(part)}]" if part.isdigit() else "." + '"' + part.replace('"', "") + '"'
    return out


def _person_sql(rule: dict[str, Any]) -> str:
    """SQL for the fact's person: its first Patient reference (of the rule's paths), through
    ops.person_map (m) to the person when linking has mapped it, else the source Patient itself."""
    refs = [f"r.resource ->> '{_json_path(p + '.reference')}'" for p in rule.get("patient", [])]
    ids = [
        f"CASE WHEN contains({ref}, 'Patient/') THEN regexp_extract({ref}, '.*Patient/(.*)$', 1) END"
        for ref in refs
    ]
    return f"coalesce({', '.join(ids)})" if ids else "CAST(NULL AS VARCHAR)"


_FETCH = 5_000  # facts read at once; whole persons are grouped, so memory does not grow with the facts


def _facts_by_person(
    con: duckdb.DuckDBPyConnection, rtype: str, rule: dict[str, Any]
) -> Iterator[tuple[str | None, list[tuple[str, str, str]]]]:
    """(person, [(id, resource JSON, format)]) for every fact of the type, one person at a time.

    The person map is joined in DuckDB (never read into Python); facts without a Patient reference
    come last, under None.
    """
    patient = _person_sql(rule)
    cur = con.cursor()
    try:
        cur.execute(
            f"""
            WITH f AS (
                SELECT r.id, CAST(r.resource AS VARCHAR) AS text, coalesce(o.format, 'unknown') AS format,
                    {patient} AS patient
                FROM fhir."{rtype}" r LEFT JOIN ops.files o USING (file_sha256)
                WHERE NOT r.reference_only
            )
            SELECT coalesce(m.person_id, f.patient) AS person, f.id, f.text, f.format
            FROM f LEFT JOIN ops.person_map m ON m.patient_id = f.patient
            ORDER BY person NULLS LAST, f.id
            """
        )
        person: str | None = None
        group: list[tuple[str, str, str]] = []
        while rows := cur.fetchmany(_FETCH):
            for who, rid, text, fmt in rows:
                if group and who != person:
                    yield person, group
                    group = []
                person = who
                group.append((rid, text, fmt))
        if group:
            yield person, group
    finally:
        cur.close()


def find_duplicates(
    con: duckdb.DuckDBPyConnection, cfg: IdentityConfig
) -> Iterator[tuple[str, list[tuple[str, str, str, str, str]], dict[str, int]]]:
    """Per type and person: (type, [(type, duplicate id, survivor id, key digest, rule)], counts so far).

    Facts are keyed by person (ops.person_map, joined in SQL), code and value; within a key, times
    within the type's tolerance of the previous one chain into one fact.
    """
    ranks = cfg.survivorship.get("source_rank", {})
    default_rank = int(cfg.survivorship.get("default_rank", 9))
    tables = set(resource_tables(con))
    for rtype, rule in sorted(cfg.facts.get("types", {}).items()):
        if rtype not in tables:
            continue
        tolerance = int(rule.get("time_tolerance_minutes", 0))
        name = f"{rtype}:person+code+time±{tolerance}min+value"
        counts = {"facts": 0, "keyed": 0, "duplicates": 0}
        for person, facts in _facts_by_person(con, rtype, rule):
            counts["facts"] += len(facts)
            groups: dict[tuple[str, str], list[tuple[int | None, tuple[int, str]]]] = defaultdict(list)
            for rid, text, fmt in facts:
                res = orjson.loads(text)
                code = _code(res, rule)
                if person is None or code is None:
                    continue  # nothing to match on: the fact stands alone
                when = next(
                    (m for p in rule.get("time", []) if (m := _minutes(_get(res, p))) is not None), None
                )
                groups[(code, _value(res, rule))].append((when, (int(ranks.get(fmt, default_rank)), rid)))
            counts["keyed"] += sum(len(v) for v in groups.values())
            found = []
            for (code, value), items in groups.items():
                key = (person, code, value)
                for chain in _chains(items, tolerance):
                    best = min(chain, key=lambda x: x[1])[1][1]
                    digest = hashlib.sha256(f"{rtype}|{key}|{chain[0][0]}".encode()).hexdigest()[:24]
                    found += [(rtype, rid, best, digest, name) for _, (_, rid) in chain if rid != best]
            counts["duplicates"] += len(found)
            yield rtype, found, counts
        yield rtype, [], counts


def _chains(
    items: list[tuple[int | None, tuple[int, str]]], tolerance: int
) -> list[list[tuple[int | None, tuple[int, str]]]]:
    """Items of one key in time order, chained while each is within `tolerance` of the previous; only
    chains of two or more (a fact and its duplicates) are returned."""
    items.sort(key=lambda x: (x[0] is not None, x[0] or 0, x[1]))
    chains: list[list[tuple[int | None, tuple[int, str]]]] = []
    for item in items:
        last = chains[-1][-1][0] if chains else None
        same = chains and (
            (item[0] is None and last is None)
            or (item[0] is not None and last is not None and item[0] - last <= tolerance)
        )
        chains.append([item]) if not same else chains[-1].append(item)
    return [c for c in chains if len(c) >= 2]


def mark_duplicates(
    con: duckdb.DuckDBPyConnection, cfg: IdentityConfig, run_id: str
) -> dict[str, dict[str, int]]:
    """Replace ops.fact_duplicates with this run's finding; fhir.* is never changed."""
    counts: dict[str, dict[str, int]] = {}
    pending: list[tuple[str, str, str, str, str]] = []
    total = 0

    def flush() -> None:
        table = arrow.table(
            {
                k: arrow.array([r[i] for r in pending], pa.string())
                for i, k in enumerate(("t", "id", "s", "k", "rule"))
            }
        )
        con.register("id_dupes_new", table)
        try:
            con.execute(
                "INSERT INTO ops.fact_duplicates SELECT t, id, s, k, rule, ? FROM id_dupes_new", [run_id]
            )
        finally:
            con.unregister("id_dupes_new")
        pending.clear()

    try:
        con.execute("BEGIN TRANSACTION")
        con.execute("DELETE FROM ops.fact_duplicates")
        for rtype, found, so_far in find_duplicates(con, cfg):
            counts[rtype] = so_far
            pending += found
            total += len(found)
            if len(pending) >= _FETCH:
                flush()
        if pending:
            flush()
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    log.info("fact de-duplication: %d duplicates marked", total)
    return {k: dict(v) for k, v in counts.items()}

"""Fact de-duplication: the same fact arriving by several paths, matched on keys as data, one survivor."""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import duckdb
import orjson
import pyarrow as pa

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


def _patient(resource: dict[str, Any], rule: dict[str, Any]) -> str | None:
    for path in rule.get("patient", []):
        ref = _get(resource, f"{path}.reference")
        if isinstance(ref, str) and "Patient/" in ref:
            return ref.rsplit("Patient/", 1)[1]
    return None


def find_duplicates(
    con: duckdb.DuckDBPyConnection, cfg: IdentityConfig, person_of: dict[str, str]
) -> tuple[list[tuple[str, str, str, str, str]], dict[str, dict[str, int]]]:
    """([(type, duplicate id, survivor id, key digest, rule)], {type: {facts, keyed, duplicates}})."""
    ranks = cfg.survivorship.get("source_rank", {})
    default_rank = int(cfg.survivorship.get("default_rank", 9))
    tables = set(resource_tables(con))
    out: list[tuple[str, str, str, str, str]] = []
    counts: dict[str, dict[str, int]] = {}
    for rtype, rule in sorted(cfg.facts.get("types", {}).items()):
        if rtype not in tables:
            continue
        tolerance = int(rule.get("time_tolerance_minutes", 0))
        name = f"{rtype}:person+code+time±{tolerance}min+value"
        rows = con.execute(
            f"""
            SELECT r.id, CAST(r.resource AS VARCHAR), coalesce(f.format, 'unknown')
            FROM fhir."{rtype}" r LEFT JOIN ops.files f USING (file_sha256)
            WHERE NOT r.reference_only ORDER BY r.id
            """
        ).fetchall()
        groups: dict[tuple[str, str, str], list[tuple[int | None, tuple[int, str]]]] = defaultdict(list)
        for rid, text, fmt in rows:
            res = orjson.loads(text)
            patient, code = _patient(res, rule), _code(res, rule)
            if patient is None or code is None:
                continue  # nothing to match on: the fact stands alone
            when = next((m for p in rule.get("time", []) if (m := _minutes(_get(res, p))) is not None), None)
            key = (person_of.get(patient, patient), code, _value(res, rule))
            groups[key].append((when, (int(ranks.get(fmt, default_rank)), rid)))
        dupes = 0
        for key, items in groups.items():
            items.sort(key=lambda x: (x[0] is not None, x[0] or 0, x[1]))
            chains: list[list[tuple[int | None, tuple[int, str]]]] = []
            for item in items:
                last = chains[-1][-1][0] if chains else None
                same = chains and (
                    (item[0] is None and last is None)
                    or (item[0] is not None and last is not None and item[0] - last <= tolerance)
                )
                chains.append([item]) if not same else chains[-1].append(item)
            for chain in chains:
                if len(chain) < 2:
                    continue
                best = min(chain, key=lambda x: x[1])[1][1]
                digest = hashlib.sha256(f"{rtype}|{key}|{chain[0][0]}".encode()).hexdigest()[:24]
                for _, (_, rid) in chain:
                    if rid != best:
                        out.append((rtype, rid, best, digest, name))
                        dupes += 1
        counts[rtype] = {
            "facts": len(rows),
            "keyed": sum(len(v) for v in groups.values()),
            "duplicates": dupes,
        }
    return out, counts


def mark_duplicates(
    con: duckdb.DuckDBPyConnection, cfg: IdentityConfig, run_id: str
) -> dict[str, dict[str, int]]:
    """Replace ops.fact_duplicates with this run's finding; fhir.* is never changed."""
    person_of = dict(con.execute("SELECT patient_id, person_id FROM ops.person_map").fetchall())
    found, counts = find_duplicates(con, cfg, person_of)
    table = pa.table({k: [r[i] for r in found] for i, k in enumerate(("t", "id", "s", "k", "rule"))})
    con.register("id_dupes_new", table)
    try:
        con.execute("BEGIN TRANSACTION")
        con.execute("DELETE FROM ops.fact_duplicates")
        con.execute("INSERT INTO ops.fact_duplicates SELECT t, id, s, k, rule, ? FROM id_dupes_new", [run_id])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    finally:
        con.unregister("id_dupes_new")
    log.info("fact de-duplication: %d duplicates marked", len(found))
    return counts

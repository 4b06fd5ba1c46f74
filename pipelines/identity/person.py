"""The person record: one surviving Patient per person, assembled from its sources by rules as data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import duckdb
import orjson

from pipelines.identity.decide import PairDecision


@dataclass(slots=True)
class Member:
    id: str
    format: str
    updated: float  # epoch seconds of meta.lastUpdated (0 when absent)
    resource: dict[str, Any] | None = None  # read only while its person record is built


_CHUNK = 5_000  # persons whose source Patients are read at once: memory stays bounded


def load_members(con: duckdb.DuckDBPyConnection) -> dict[str, Member]:
    rows = con.execute(
        "SELECT id, format, coalesce(epoch(TRY_CAST(last_updated AS TIMESTAMPTZ)), 0) "
        "FROM id_source ORDER BY id"
    ).fetchall()
    return {i: Member(i, fmt, float(t)) for i, fmt, t in rows}


def _read_resources(con: duckdb.DuckDBPyConnection, members: list[Member]) -> None:
    by_id = {m.id: m for m in members}
    rows = con.execute(
        "SELECT id, CAST(r AS VARCHAR) FROM id_source WHERE id IN (SELECT unnest(?))", [list(by_id)]
    ).fetchall()
    for i, text in rows:
        by_id[i].resource = orjson.loads(text)


def _rank(rules: dict[str, Any], m: Member) -> tuple[int, float, str]:
    ranks = rules.get("source_rank", {})
    return (int(ranks.get(m.format, rules.get("default_rank", 9))), -m.updated, m.id)


def survivor(rules: dict[str, Any], members: list[Member]) -> Member:
    """Best-ranked source, then the most recently updated, then the smallest id."""
    return min(members, key=lambda m: _rank(rules, m))


def person_record(rules: dict[str, Any], members: list[Member], see_also: list[str]) -> dict[str, Any]:
    """The survivor's Patient with the best source's demographics, the newest address and every identifier."""
    ranked = sorted(members, key=lambda m: _rank(rules, m))
    chosen = ranked[0]
    res: dict[str, Any] = {k: v for k, v in chosen.resource.items() if k not in ("link", "identifier")}
    res["id"] = chosen.id
    for field in rules.get("demographic_fields", []):
        source = next((m for m in ranked if m.resource.get(field) not in (None, [], "")), None)
        res.pop(field, None)
        if source is not None:
            res[field] = source.resource[field]
    if rules.get("address_from") == "most_recent":
        newest = sorted((m for m in members if m.resource.get("address")), key=lambda m: (-m.updated, m.id))
        res.pop("address", None)
        if newest:
            res["address"] = newest[0].resource["address"]
    identifiers: list[dict[str, Any]] = []
    seen: set[tuple[str | None, str | None]] = set()
    for m in ranked:
        for ident in m.resource.get("identifier", []) or []:
            key = (ident.get("system"), ident.get("value"))
            if key not in seen:
                seen.add(key)
                identifiers.append(ident)
    if identifiers:
        res["identifier"] = identifiers
    links = [
        {"other": {"reference": f"Patient/{m.id}"}, "type": rules.get("link_type_members", "replaces")}
        for m in sorted(members, key=lambda m: m.id)
        if m.id != chosen.id
    ]
    links += [
        {"other": {"reference": f"Patient/{other}"}, "type": rules.get("link_type_review", "seealso")}
        for other in sorted(set(see_also))
    ]
    if links:
        res["link"] = links
    return res


def build_persons(
    con: duckdb.DuckDBPyConnection,
    rules: dict[str, Any],
    members: dict[str, Member],
    clusters: dict[str, list[str]],
    decisions: list[PairDecision],
) -> tuple[list[tuple[str, str, bool]], list[tuple[str, str, int]]]:
    """(person_map rows, person_records rows): every source Patient maps to exactly one person."""
    person_of: dict[str, str] = {}
    chosen: dict[str, list[Member]] = {}
    for ids in clusters.values():
        group = [members[i] for i in ids]
        head = survivor(rules, group).id
        chosen[head] = group
        for i in ids:
            person_of[i] = head
    review: dict[str, list[str]] = {}
    for d in decisions:
        both = d.left in person_of and d.right in person_of
        if d.decision == "review" and both and person_of[d.left] != person_of[d.right]:
            review.setdefault(person_of[d.left], []).append(d.right)
            review.setdefault(person_of[d.right], []).append(d.left)
    mapping = [(i, p, i == p) for i, p in sorted(person_of.items())]
    records: list[tuple[str, str, int]] = []
    heads = sorted(chosen)
    for start in range(0, len(heads), _CHUNK):
        batch = heads[start : start + _CHUNK]
        _read_resources(con, [m for head in batch for m in chosen[head]])
        for head in batch:
            group = chosen[head]
            records.append(
                (head, orjson.dumps(person_record(rules, group, review.get(head, []))).decode(), len(group))
            )
            for m in group:
                m.resource = None
    return mapping, records

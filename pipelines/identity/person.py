"""The person record: one surviving Patient per person, assembled from its sources by rules as data."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import duckdb
import orjson


@dataclass(slots=True)
class Member:
    id: str
    format: str
    updated: float  # epoch seconds of meta.lastUpdated (0 when absent)
    resource: dict[str, Any] | None = None  # read only while its person record is built


_CHUNK = 5_000  # persons whose source Patients are read and assembled at once: memory stays bounded


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


def map_persons(con: duckdb.DuckDBPyConnection, rules: dict[str, Any]) -> int:
    """TEMP id_person_map (patient_id, person_id, survivor, person_no) from id_cluster; returns persons.

    Each cluster's survivor is its best-ranked source, then the most recently updated, then the smallest
    id (as survivor() orders them); the survivor's id is the person id.
    """
    con.execute("CREATE OR REPLACE TEMP TABLE id_rank (format VARCHAR, rank INTEGER)")
    ranks = [(k, int(v)) for k, v in rules.get("source_rank", {}).items()]
    if ranks:
        con.executemany("INSERT INTO id_rank VALUES (?, ?)", ranks)
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE id_person_map AS
        WITH ranked AS (
            SELECT c.patient_id, c.comp, coalesce(k.rank, ?) AS rank,
                coalesce(epoch(TRY_CAST(s.last_updated AS TIMESTAMPTZ)), 0) AS updated
            FROM id_cluster c JOIN id_source s ON s.id = c.patient_id LEFT JOIN id_rank k USING (format)
        ),
        heads AS (
            SELECT comp, arg_min(patient_id, (rank, -updated, patient_id)) AS person_id
            FROM ranked GROUP BY comp
        )
        SELECT r.patient_id, h.person_id, r.patient_id = h.person_id AS survivor,
            dense_rank() OVER (ORDER BY h.person_id) AS person_no
        FROM ranked r JOIN heads h USING (comp)
        """,
        [int(rules.get("default_rank", 9))],
    )
    return int(con.execute("SELECT count(DISTINCT person_id) FROM id_person_map").fetchall()[0][0])


def _see_also(con: duckdb.DuckDBPyConnection, first: int, last: int) -> dict[str, list[str]]:
    """Review pairs between two persons: each person's record points at the other's source Patient."""
    rows = con.execute(
        """
        WITH pairs AS (
            SELECT a.person_id AS pa, b.person_id AS pb, a.person_no AS na, b.person_no AS nb, d.l, d.r
            FROM id_decisions d
            JOIN id_person_map a ON a.patient_id = d.l JOIN id_person_map b ON b.patient_id = d.r
            WHERE d.decision = 'review' AND a.person_id <> b.person_id
        )
        SELECT pa, r FROM pairs WHERE na BETWEEN $first AND $last
        UNION ALL SELECT pb, l FROM pairs WHERE nb BETWEEN $first AND $last
        """,
        {"first": first, "last": last},
    ).fetchall()
    out: dict[str, list[str]] = {}
    for person, other in rows:
        out.setdefault(person, []).append(other)
    return out


def iter_person_records(
    con: duckdb.DuckDBPyConnection, rules: dict[str, Any], persons: int
) -> Iterator[list[tuple[str, str, int]]]:
    """(person id, record JSON, member count) in batches of _CHUNK persons, from id_person_map."""
    for first in range(1, persons + 1, _CHUNK):
        last = first + _CHUNK - 1
        rows = con.execute(
            """
            SELECT m.person_id, s.id, s.format, coalesce(epoch(TRY_CAST(s.last_updated AS TIMESTAMPTZ)), 0),
                CAST(s.r AS VARCHAR)
            FROM id_person_map m JOIN id_source s ON s.id = m.patient_id
            WHERE m.person_no BETWEEN ? AND ? ORDER BY m.person_id, s.id
            """,
            [first, last],
        ).fetchall()
        see_also = _see_also(con, first, last)
        groups: dict[str, list[Member]] = {}
        for person, pid, fmt, updated, text in rows:
            groups.setdefault(person, []).append(Member(pid, fmt, float(updated), orjson.loads(text)))
        yield [
            (head, orjson.dumps(person_record(rules, group, see_also.get(head, []))).decode(), len(group))
            for head, group in groups.items()
        ]

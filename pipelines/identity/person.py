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


_BATCH = 1_000  # source Patients read and assembled at once (whole persons): memory stays bounded


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
    """TEMP id_person_map (patient_id, person_id, survivor, n, person_n) from id_cluster; returns persons.

    `batch` numbers groups of whole persons of about _BATCH source Patients, the unit that
    iter_person_records reads at once.

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
            SELECT s.id AS patient_id, c.patient_id AS n, c.comp, coalesce(k.rank, ?) AS rank,
                coalesce(epoch(TRY_CAST(s.last_updated AS TIMESTAMPTZ)), 0) AS updated
            FROM id_cluster c JOIN id_nodes d ON d.n = c.patient_id JOIN id_source s ON s.id = d.id
            LEFT JOIN id_rank k USING (format)
        ),
        heads AS (
            SELECT comp, arg_min(patient_id, (rank, -updated, patient_id)) AS person_id,
                arg_min(n, (rank, -updated, patient_id)) AS person_n
            FROM ranked GROUP BY comp
        )
        SELECT r.patient_id, h.person_id, r.patient_id = h.person_id AS survivor, r.n, h.person_n
        FROM ranked r JOIN heads h USING (comp)
        """,
        [int(rules.get("default_rank", 9))],
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE id_person_batch AS
        WITH sizes AS (SELECT person_id, count(*) AS n FROM id_person_map GROUP BY person_id)
        SELECT person_id, (sum(n) OVER (ORDER BY person_id) - n) // {_BATCH} AS batch FROM sizes
        """
    )
    return int(con.execute("SELECT count(DISTINCT person_id) FROM id_person_map").fetchall()[0][0])


def _see_also(con: duckdb.DuckDBPyConnection) -> None:
    """TEMP id_see_also (person_id, other, batch): a review pair between two persons points each person's
    record at the other's source Patient."""
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE id_see_also AS
        WITH pairs AS (
            -- on node numbers: the joins' tables hold integers, not the ids' strings
            SELECT a.person_n AS pa, b.person_n AS pb, d.l, d.r
            FROM (SELECT l, r FROM id_decisions WHERE decision = 'review') d
            JOIN id_person_map a ON a.n = d.l JOIN id_person_map b ON b.n = d.r
            WHERE a.person_n <> b.person_n
        ),
        both_ways AS (SELECT pa AS p, r AS other FROM pairs UNION ALL SELECT pb, l FROM pairs)
        SELECT p.id AS person_id, o.id AS other, b.batch FROM both_ways w
        JOIN id_nodes p ON p.n = w.p JOIN id_nodes o ON o.n = w.other
        JOIN id_person_batch b ON b.person_id = p.id
        """
    )


def iter_person_records(
    con: duckdb.DuckDBPyConnection, rules: dict[str, Any]
) -> Iterator[list[tuple[str, str, int]]]:
    """(person id, record JSON, member count) for whole persons, about _BATCH source Patients at a time."""
    _see_also(con)
    batches = con.execute("SELECT coalesce(max(batch), -1) FROM id_person_batch").fetchall()[0][0]
    for batch in range(int(batches) + 1):
        rows = con.execute(
            """
            SELECT m.person_id, s.id, s.format, coalesce(epoch(TRY_CAST(s.last_updated AS TIMESTAMPTZ)), 0),
                CAST(s.r AS VARCHAR)
            FROM id_person_map m JOIN id_person_batch b USING (person_id)
            JOIN id_source s ON s.id = m.patient_id
            WHERE b.batch = ? ORDER BY m.person_id, s.id
            """,
            [batch],
        ).fetchall()
        see_also: dict[str, list[str]] = {}
        for person, other in con.execute(
            "SELECT person_id, other FROM id_see_also WHERE batch = ?", [batch]
        ).fetchall():
            see_also.setdefault(person, []).append(other)
        groups: dict[str, list[Member]] = {}
        for person, pid, fmt, updated, text in rows:
            groups.setdefault(person, []).append(Member(pid, fmt, float(updated), orjson.loads(text)))
        yield [
            (head, orjson.dumps(person_record(rules, group, see_also.get(head, []))).decode(), len(group))
            for head, group in groups.items()
        ]

"""A plan in parts of whole patients: whom each message is for, read without the resources themselves, and the
parts that cuts the plan into, so that a back-load holds one part's resources (and texts) at a time."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import duckdb
import orjson
import pyarrow as pa

from pipelines.common import arrow
from pipelines.common.warehouse import resource_tables

# Where each message resource names its patient (a JSON path).
SUBJECT = {"DiagnosticReport": "subject", "Immunization": "patient", "DocumentReference": "subject"}
# Messages per part: a part's resources, built rows and texts are held until its send ends (some tens of kB a
# message); each part costs a builder start, a plan insert and a fold (tens of milliseconds).
PART_MESSAGES = 20_000
# A reference as the builders look it up: "Type/id", whole (a versioned or absolute one is never found).
_REFERENCE = re.compile(r'"reference"\s*:\s*"([A-Z][A-Za-z]+)/([^"/\\]+)"')


def chain(key: str, step: Callable[[str], str | None]) -> list[str]:
    """The records a chain of merges passes, from key to where it ends: `step` gives the record a key was
    merged into, or None (a cycle stops where it would come round)."""
    path, seen = [key], {key}
    while True:
        nxt = step(path[-1])
        if nxt is None or nxt in seen:
            return path
        seen.add(nxt)
        path.append(nxt)


def follow(key: str, step: Callable[[str], str | None]) -> str:
    """Where a chain of merges ends (chain's last record)."""
    return chain(key, step)[-1]


def replaced_by(links: object, present: Callable[[str], bool]) -> str | None:
    """The first Patient.link of type replaced-by whose record is present."""
    for lk in links if isinstance(links, list) else ():
        if isinstance(lk, dict) and lk.get("type") == "replaced-by" and isinstance(lk.get("other"), dict):
            ref = lk["other"].get("reference")
            if isinstance(ref, str) and present(ref):
                return ref
    return None


def person_survivors(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """Identity resolution's merges (ops.person_map, where that stage has run): "Patient/id" -> its person's
    surviving record."""
    has_map = con.execute(
        "SELECT count(*) FROM information_schema.tables "
        "WHERE table_schema = 'ops' AND table_name = 'person_map'"
    ).fetchone()
    out: dict[str, str] = {}
    if has_map and has_map[0]:
        rows = con.execute(
            "SELECT m.patient_id, s.patient_id FROM ops.person_map m JOIN ops.person_map s "
            "ON s.person_id = m.person_id AND s.survivor WHERE m.patient_id <> s.patient_id ORDER BY ALL"
        ).fetchall()
        for patient_id, survivor in rows:
            out.setdefault(f"Patient/{patient_id}", f"Patient/{survivor}")
    return out


def references(texts: Iterable[str], types: set[str]) -> dict[str, set[str]]:
    """Ids per type of the "Type/id" references in resources' JSON texts, of the given types."""
    out: dict[str, set[str]] = {}
    for text in texts:
        for rtype, rid in _REFERENCE.findall(text):
            if rtype in types:
                out.setdefault(rtype, set()).add(rid)
    return out


@dataclass(frozen=True)
class Part:
    """One part of a plan: the ids of its message resources per message type (every type the plan has, a part
    with none of one included), and the Patient records it reads: those its messages are for, every record
    merged into them, and the records between. Other resources are read as these refer to them."""

    number: int
    of: int
    ids: dict[str, list[str]]
    patients: list[str]


def cut(
    con: duckdb.DuckDBPyConnection, message_types: Iterable[str], size: int = PART_MESSAGES
) -> list[Part]:
    """The plan's parts in plan order: whole patients, in the order the plan sorts them, about `size`
    messages each; messages with no known patient (refused at planning) in the last. No parts (an empty
    list) when the plan has at most `size` messages: it is planned whole."""
    tables = set(resource_tables(con))
    types = [t for t in sorted(set(message_types)) if t in tables]
    live = "WHERE NOT coalesce(reference_only, false)"  # a stand-in is no message
    total = sum(con.execute(f'SELECT count(*) FROM fhir."{t}" {live}').fetchone()[0] for t in types)
    if total <= size:
        return []
    chains = _chains(con) if "Patient" in tables else {}
    merged = arrow.table(  # noqa: F841 (read by name below): each record's survivor
        {
            "record": arrow.array([k.partition("/")[2] for k in chains], pa.string()),
            "survivor": arrow.array([c[-1].partition("/")[2] for c in chains.values()], pa.string()),
        }
    )
    # Every record a part must read for a survivor's records to be followed to it as the plan made whole
    # follows them: the records on each chain that ends there.
    passed = [(c[-1].partition("/")[2], k.partition("/")[2]) for c in chains.values() for k in c]
    needs = arrow.table(  # noqa: F841 (read by name below)
        {
            "survivor": arrow.array([a for a, _ in passed], pa.string()),
            "record": arrow.array([b for _, b in passed], pa.string()),
        }
    )
    selects = []
    for t in types:
        if t == "Patient":
            selects.append(
                "SELECT 'Patient' AS rtype, id AS rid, id AS subject FROM fhir.\"Patient\" "
                "WHERE NOT coalesce(reference_only, false)"
            )
        else:
            # Only a Patient reference finds a patient (anything else is refused at planning).
            selects.append(
                f"SELECT '{t}' AS rtype, id AS rid, "
                f"CASE WHEN starts_with(ref, 'Patient/') THEN ref[9:] END AS subject "
                f"FROM (SELECT id, json_extract_string(resource, '$.{SUBJECT[t]}.reference') AS ref "
                f'FROM fhir."{t}" WHERE NOT coalesce(reference_only, false))'
            )
    # Per surviving patient, the part its messages go to: a running count of messages, in the plan's patient
    # order, cut every `size` (a patient is never split). Messages without a known patient go last.
    placed_messages = con.sql(  # noqa: F841 (read by name below)
        f"""
        WITH messages AS ({" UNION ALL ".join(selects)}),
        owned AS (
            SELECT m.rtype, m.rid, s.survivor FROM messages m LEFT JOIN merged s ON s.record = m.subject
        ),
        per AS (SELECT survivor, count(*) AS n FROM owned WHERE survivor IS NOT NULL GROUP BY survivor),
        placed AS (
            SELECT survivor, (sum(n) OVER (ORDER BY survivor ROWS UNBOUNDED PRECEDING) - n) // $1 AS part
            FROM per
        )
        SELECT o.rtype, o.rid, o.survivor,
            coalesce(p.part, (SELECT coalesce(max(part), 0) FROM placed)) AS part
        FROM owned o LEFT JOIN placed p USING (survivor)
        """,
        params=[size],
    ).to_arrow_table()
    numbers = [r[0] for r in con.execute("SELECT DISTINCT part FROM placed_messages ORDER BY 1").fetchall()]
    parts = []
    for k, number in enumerate(numbers, start=1):
        rows = con.execute(
            "SELECT rtype, list(rid ORDER BY rid) FROM placed_messages WHERE part = $1 GROUP BY rtype",
            [number],
        ).fetchall()
        # Every message type named, empty or not: a part never reads another part's messages by reference.
        ids: dict[str, list[str]] = {t: [] for t in types} | {rtype: rids for rtype, rids in rows}
        # Every record of the part's patients: the survivors', those merged into them, and the records
        # between.
        patients = con.execute(
            "SELECT list(DISTINCT record ORDER BY record) FROM needs WHERE survivor IN "
            "(SELECT survivor FROM placed_messages WHERE part = $1)",
            [number],
        ).fetchone()[0]
        parts.append(Part(k, len(numbers), ids, patients or []))
    return parts


def _chains(con: duckdb.DuckDBPyConnection) -> dict[str, list[str]]:
    """Every Patient record's chain of merges to its surviving record, as the plan's Store.survivor follows
    it: replaced-by links first, then identity resolution's merges."""
    links = {
        f"Patient/{rid}": orjson.loads(link) if link else None
        for rid, link in con.execute(
            "SELECT id, json_extract(resource, '$.link') FROM fhir.\"Patient\" ORDER BY id"
        ).fetchall()
    }
    persons = person_survivors(con)

    def step(key: str) -> str | None:
        nxt = replaced_by(links.get(key), links.__contains__)
        if nxt is None and persons.get(key) in links:
            nxt = persons[key]
        return nxt

    return {key: chain(key, step) for key in links}

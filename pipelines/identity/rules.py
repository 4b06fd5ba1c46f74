"""Deterministic links (shared trusted identifiers, HL7 A40 merges, Patient.link) and known conflicts."""

from __future__ import annotations

from collections import defaultdict

import duckdb

from pipelines.identity.config import IdentityConfig

Pair = tuple[str, str]


def pair(a: str, b: str) -> Pair:
    return (a, b) if a < b else (b, a)


def rule_pairs(con: duckdb.DuckDBPyConnection, cfg: IdentityConfig) -> dict[Pair, tuple[str, str]]:
    """{pair: (rule, outcome)} from identifiers and source links; outcome is 'link' or 'review'."""
    found: dict[Pair, tuple[str, str]] = {}
    systems = list(cfg.rules.get("link_on_identifier", []))
    if systems:
        rows = con.execute(
            """
            SELECT a.patient_id, b.patient_id FROM id_identifiers a
            JOIN id_identifiers b ON a.system = b.system AND a.value = b.value AND a.patient_id < b.patient_id
            WHERE list_contains(?, a.system)
            """,
            [systems],
        ).fetchall()
        for a, b in rows:
            found[pair(a, b)] = ("same_identifier", "link")
    outcomes = cfg.rules.get("patient_link_types", {})
    rows = con.execute(
        """
        SELECT l.patient_id, l.other_id, l.link_type, l.format FROM id_links l
        JOIN id_features f ON f.unique_id = l.other_id WHERE l.patient_id <> l.other_id
        """
    ).fetchall()
    for a, b, link_type, fmt in rows:
        outcome = outcomes.get(link_type)
        if outcome is None:
            continue
        merge = fmt == "hl7v2" and link_type in ("replaces", "replaced-by")
        rule = "hl7_merge" if merge else f"patient_link_{link_type}"
        key = pair(a, b)
        if key not in found or (found[key][1] == "review" and outcome == "link"):
            found[key] = (rule, outcome)
    return found


def trusted_identifiers(
    con: duckdb.DuckDBPyConnection, cfg: IdentityConfig
) -> dict[str, dict[str, set[str]]]:
    """{patient id: {trusted system: values}}: two patients with disjoint values of one system conflict."""
    out: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    systems = list(cfg.rules.get("trusted_identifiers", []))
    if not systems:
        return out
    rows = con.execute(
        "SELECT patient_id, system, value FROM id_identifiers WHERE list_contains(?, system)", [systems]
    ).fetchall()
    for patient, system, value in rows:
        out[patient][system].add(value)
    return out


def conflicts(left: dict[str, set[str]], right: dict[str, set[str]]) -> bool:
    """True when both sides carry a trusted system and share none of its values."""
    return any(system in right and not (values & right[system]) for system, values in left.items())

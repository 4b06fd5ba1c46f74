"""Deterministic links (shared trusted identifiers, HL7 A40 merges, Patient.link) and known conflicts."""

from __future__ import annotations

import duckdb

from pipelines.identity.config import IdentityConfig

Pair = tuple[str, str]


def build_rule_pairs(con: duckdb.DuckDBPyConnection, cfg: IdentityConfig) -> None:
    """TEMP id_rule_pairs (l, r, rule, outcome): one row per pair of node numbers (id_nodes), l < r;
    outcome is 'link' or 'review'.

    A shared identifier of a linking system links; a source link links or asks for review by its type;
    when both name a pair, a link wins over a review and an identifier over a source link.
    """
    systems = list(cfg.rules.get("link_on_identifier", []))
    con.execute("CREATE OR REPLACE TEMP TABLE id_link_types (link_type VARCHAR, outcome VARCHAR)")
    types = [(k, v) for k, v in cfg.rules.get("patient_link_types", {}).items() if v in ("link", "review")]
    if types:
        con.executemany("INSERT INTO id_link_types VALUES (?, ?)", types)
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE id_rule_pairs AS
        WITH found AS (
            SELECT DISTINCT a.patient_id AS l, b.patient_id AS r, 'same_identifier' AS rule,
                'link' AS outcome, 0 AS pref
            FROM id_identifiers a
            JOIN id_identifiers b ON a.system = b.system AND a.value = b.value AND a.patient_id < b.patient_id
            WHERE list_contains(?, a.system)
            UNION ALL
            SELECT least(k.patient_id, k.other_id), greatest(k.patient_id, k.other_id),
                CASE WHEN k.format = 'hl7v2' AND k.link_type IN ('replaces', 'replaced-by') THEN 'hl7_merge'
                    ELSE 'patient_link_' || k.link_type END,
                t.outcome, 1
            FROM id_links k JOIN id_link_types t USING (link_type)
            JOIN id_features f ON f.unique_id = k.other_id
            WHERE k.patient_id <> k.other_id
        )
        SELECT a.n AS l, b.n AS r, arg_min(rule, (outcome <> 'link', pref, rule)) AS rule,
            min(outcome) AS outcome  -- 'link' < 'review'
        FROM found JOIN id_nodes a ON a.id = found.l JOIN id_nodes b ON b.id = found.r
        GROUP BY a.n, b.n
        """,
        [systems],
    )


def build_trusted(con: duckdb.DuckDBPyConnection, cfg: IdentityConfig) -> None:
    """TEMP id_trusted (patient_id, system, vals): each patient's (node number's) values of each
    trusted system."""
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE id_trusted AS
        SELECT n.n AS patient_id, i.system, list(DISTINCT i.value ORDER BY i.value) AS vals
        FROM id_identifiers i JOIN id_nodes n ON n.id = i.patient_id
        WHERE list_contains(?, i.system) GROUP BY ALL
        """,
        [list(cfg.rules.get("trusted_identifiers", []))],
    )


def conflicts(left: dict[str, set[str]], right: dict[str, set[str]]) -> bool:
    """True when both sides carry a trusted system and share none of its values."""
    return any(system in right and not (values & right[system]) for system, values in left.items())

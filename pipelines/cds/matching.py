"""Order matching beyond exact codes: equivalent codes and RxNorm ingredients, from the loaded terminology.

The rules are data (schemas/cds/matching.json). At snapshot time the warehouse's terminology (maps,
replacements, RxNorm relations) and the migration's own normalization decisions (ops.mapping_log) become
two small in-memory tables, `equiv` and `ingredient`; every migrated medication, allergy and recent lab
result gets its match keys set-based, so a call compares sets. A draft order's codes are expanded through
the same tables, with a per-snapshot cache (orders repeat a formulary's codes).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import duckdb

from pipelines.common.errors import ConfigError
from pipelines.common.paths import shipped

LEVELS = ("code", "ingredient")
KINDS = ("medication", "allergy", "lab")
_MEDS = ("MedicationRequest", "MedicationStatement")


@dataclass(frozen=True)
class Fact:
    """A migrated record an order is checked against, with its match keys ("code s|c", "ingredient c")."""

    kind: str  # medication, allergy or lab
    resource_type: str
    id: str
    label: str | None
    day: str | None
    keys: frozenset[str]


@dataclass(frozen=True)
class Matching:
    data: dict[str, Any]

    @classmethod
    def load(cls, path: Path | None = None) -> Matching:
        path = path or shipped("schemas") / "cds" / "matching.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the CDS matching rules: {exc}") from None
        for check in data["checks"]:
            if check["against"] not in KINDS or not set(check["levels"]) <= set(LEVELS):
                raise ConfigError(
                    "a CDS matching check names an unknown record kind or level",
                    hint=f"kinds: {', '.join(KINDS)}; levels: {', '.join(LEVELS)}",
                )
        if not isinstance(data["ingredients"]["max_depth"], int):
            raise ConfigError("the CDS matching rules' ingredients.max_depth must be an integer")
        return cls(data)

    @property
    def rxnorm(self) -> str:
        return self.data["ingredients"]["system"]

    def word(self, level: str) -> str:
        return self.data["level_words"].get(level, level)


def _has(tables: dict[tuple[str, str], list[str]], schema: str, table: str, *columns: str) -> bool:
    cols = tables.get((schema, table))
    return cols is not None and all(c in cols for c in columns)


def copy_terms(con: duckdb.DuckDBPyConnection, tables: dict, m: Matching) -> None:
    """equiv(system, code, tsystem, tcode) and ingredient(code, ingredient), read while `wh` is attached."""
    eq, ing = m.data["equivalence"], m.data["ingredients"]
    parts, params = [], []
    if _has(tables, "terminology", "maps", "source_system", "target_system", "equivalence"):
        parts.append(
            "SELECT source_system, source_code, target_system, target_code FROM wh.terminology.maps "
            "WHERE list_contains(?::VARCHAR[], equivalence)"
        )
        params.append(eq["maps_equivalence"])
    if _has(tables, "terminology", "replacements", "system", "code", "target_code", "relation"):
        parts.append(
            "SELECT system, code, system, target_code FROM wh.terminology.replacements "
            "WHERE list_contains(?::VARCHAR[], relation)"
        )
        params.append(eq["replacement_relations"])
    if _has(tables, "ops", "mapping_log", "source_system", "target_system", "target_code", "method", "kind"):
        # The latest run's decision per source coding, as the review cards read it.
        parts.append("""
            SELECT source_system, source_code, d.s, d.c FROM (
                SELECT source_system, source_code, data_source,
                       arg_max({'s': target_system, 'c': target_code, 'm': method}, run_id) AS d
                FROM wh.ops.mapping_log
                WHERE coalesce(kind, 'coding') = 'coding' AND source_system IS NOT NULL
                      AND source_code IS NOT NULL GROUP BY ALL)
            WHERE list_contains(?::VARCHAR[], d.m) AND d.s IS NOT NULL AND d.c IS NOT NULL
        """)
        params.append(eq["mapping_log_methods"])
    body = " UNION ".join(parts) or "SELECT NULL, NULL, NULL, NULL WHERE FALSE"
    con.execute(
        "CREATE TABLE equiv AS SELECT DISTINCT * FROM ("
        + body
        + ") t(system, code, tsystem, tcode) WHERE (system, code) IS DISTINCT FROM (tsystem, tcode)",
        params,
    )
    if _has(tables, "terminology", "properties", "system", "code", "property", "value"):
        # Ingredients: concepts of an ingredient term type reachable over the listed relations (SBD
        # tradename_of SCD consists_of SCDC has_ingredient IN); an ingredient is its own ingredient.
        con.execute(
            f"""
            CREATE TABLE ingredient AS
            WITH RECURSIVE rel AS (
                SELECT code, value FROM wh.terminology.properties
                WHERE system = $sys AND list_contains($rels::VARCHAR[], property)
            ), tty AS (
                SELECT DISTINCT code FROM wh.terminology.properties
                WHERE system = $sys AND property = 'TTY' AND list_contains($ttys::VARCHAR[], value)
            ), walk(code, reached, depth) AS (
                SELECT DISTINCT code, code, 0 FROM rel
                UNION ALL
                SELECT w.code, r.value, w.depth + 1 FROM walk w JOIN rel r ON r.code = w.reached
                WHERE w.depth < {int(ing["max_depth"])}
            )
            SELECT DISTINCT w.code, w.reached AS ingredient FROM walk w JOIN tty ON tty.code = w.reached
            UNION SELECT code, code FROM tty
            """,
            {"sys": ing["system"], "rels": ing["relations"], "ttys": ing["ingredient_ttys"]},
        )
    else:
        con.execute("CREATE TABLE ingredient (code VARCHAR, ingredient VARCHAR)")


def facts(con: duckdb.DuckDBPyConnection, rules: dict[str, Any], m: Matching) -> dict[str, tuple[Fact, ...]]:
    """Per person, the active medications and allergies and the lab results that may still be recent;
    a record marked as another's duplicate (ops.fact_duplicates) is left out: its survivor stands for it."""
    not_lab = m.data["not_lab_categories"]
    since = date.today() - timedelta(days=int(rules.get("recent_lab_days", 90)))
    con.execute(
        f"""
        CREATE TEMP TABLE fact AS
        SELECT person_id, CASE
                   WHEN active AND resource_type IN {_MEDS} THEN 'medication'
                   WHEN active AND resource_type = 'AllergyIntolerance' THEN 'allergy'
                   WHEN resource_type = 'Observation' AND day >= ?::DATE
                        AND NOT list_contains(?::VARCHAR[], coalesce(category, '')) THEN 'lab' END AS kind,
               resource_type, id, label, day, system, code
        FROM coded WHERE system IS NOT NULL AND code IS NOT NULL
              AND (resource_type, id) NOT IN (SELECT resource_type, resource_id FROM duplicates)
        """,
        [since, not_lab],
    )
    con.execute("DELETE FROM fact WHERE kind IS NULL")
    con.execute("""
        CREATE TEMP TABLE fact_codes AS
        SELECT person_id, kind, resource_type, id, system, code FROM fact
        UNION SELECT f.person_id, f.kind, f.resource_type, f.id, e.tsystem, e.tcode
        FROM fact f JOIN equiv e USING (system, code)
    """)
    rows = con.execute(
        """
        WITH keys AS (
            SELECT person_id, kind, resource_type, id, 'code ' || system || '|' || code AS key FROM fact_codes
            UNION SELECT c.person_id, c.kind, c.resource_type, c.id, 'ingredient ' || i.ingredient
            FROM fact_codes c JOIN ingredient i ON c.system = ? AND i.code = c.code
        )
        SELECT f.person_id, f.kind, f.resource_type, f.id, f.label, f.day, k.keys
        FROM (SELECT person_id, kind, resource_type, id, any_value(label ORDER BY label NULLS LAST) AS label,
                     max(day)::VARCHAR AS day FROM fact GROUP BY ALL) f
        JOIN (SELECT person_id, kind, resource_type, id, list(DISTINCT key) AS keys FROM keys GROUP BY ALL) k
          USING (person_id, kind, resource_type, id)
        ORDER BY f.person_id, f.resource_type, f.label, f.id
        """,
        [m.rxnorm],
    ).fetchall()
    con.execute("DROP TABLE fact; DROP TABLE fact_codes")
    out: dict[str, list[Fact]] = {}
    for person, kind, rtype, rid, label, day, keys in rows:
        out.setdefault(person, []).append(Fact(kind, rtype, rid, label, day, frozenset(keys)))
    return {p: tuple(v) for p, v in out.items()}


class Terms:
    """A draft order's codes expanded like the migrated ones; cached, each thread on its own cursor."""

    def __init__(self, con: duckdb.DuckDBPyConnection, m: Matching, limit: int = 50_000) -> None:
        self.con, self.m, self.limit = con, m, limit
        self._cache: dict[str, frozenset[str]] = {}
        self._local = threading.local()

    def keys(self, codes: tuple[str, ...]) -> frozenset[str]:
        out: set[str] = set()
        for code in codes:
            found = self._cache.get(code)
            if found is None:
                found = self._expand(code)
                if len(self._cache) >= self.limit:
                    self._cache.clear()
                self._cache[code] = found
            out |= found
        return frozenset(out)

    def _expand(self, coding: str) -> frozenset[str]:
        cur = getattr(self._local, "cur", None)
        if cur is None:
            cur = self._local.cur = self.con.cursor()
        system, _, code = coding.partition("|")
        same = {(system, code)} | set(
            cur.execute(
                "SELECT tsystem, tcode FROM equiv WHERE system = ? AND code = ?", [system, code]
            ).fetchall()
        )
        rx = sorted(c for s, c in same if s == self.m.rxnorm)
        ingredients = (
            cur.execute(
                "SELECT DISTINCT ingredient FROM ingredient WHERE list_contains(?, code)", [rx]
            ).fetchall()
            if rx
            else []
        )
        return frozenset({f"code {s}|{c}" for s, c in same} | {f"ingredient {i}" for (i,) in ingredients})

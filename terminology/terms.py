"""What the normalizer reads: loaded concepts, replacements, maps (terminology.*), crosswalks, UCUM units."""

from __future__ import annotations

import csv
import hashlib
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import duckdb

from terminology import core
from terminology.crosswalks import CrosswalkRow

UNITS_FILE = Path(__file__).with_name("units.csv")
# A UCUM annotation alone ({tbl}, {puff}) is a valid unit meaning "1 of these".
_ANNOTATION = re.compile(r"\{[!-z|~]+\}")


@dataclass(frozen=True)
class Mapping:
    map: str
    map_version: str | None
    target_system: str
    target_code: str
    target_display: str | None
    equivalence: str | None
    author: str | None = None


class Terminology:
    """In-memory terminology: the engine's only view of concepts, replacements and maps."""

    def __init__(self) -> None:
        self.versions: dict[str, str] = {}  # system -> loaded release version(s)
        self.subsets: set[str] = (
            set()
        )  # systems whose release in force is a subset (a missing code proves nothing)
        self.concepts: dict[tuple[str, str], tuple[str | None, str]] = {}
        self.replaced: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
        self.maps: dict[tuple[str, str], list[Mapping]] = defaultdict(list)
        self.units, self.units_version = unit_aliases()

    def loaded(self, system: str) -> str | None:
        return self.versions.get(system)

    def is_subset(self, system: str) -> bool:
        return system in self.subsets

    def concept(self, system: str, code: str) -> tuple[str | None, str] | None:
        return self.concepts.get((system, code))

    def replacements(self, system: str, code: str) -> list[tuple[str, str]]:
        return self.replaced.get((system, code), [])

    def mappings(self, system: str, code: str) -> list[Mapping]:
        return self.maps.get((system, code), [])

    def prefetch(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Nothing to fetch when everything is in memory."""

    def is_ucum(self, unit: str) -> bool:
        if unit in self.units.values() or _ANNOTATION.fullmatch(unit):
            return True
        hit = self.concept(core.UCUM, unit)
        return hit is not None and hit[1] == "active"

    def unit_alias(self, unit: str) -> tuple[str, str] | None:
        target = self.units.get(unit) or self.units.get(unit.strip().lower())
        return (target, self.units_version) if target else None

    def add_crosswalks(self, rows: Iterable[CrosswalkRow]) -> None:
        for r in rows:
            self.maps[(r.source_system, r.source_code)].append(
                Mapping(
                    f"crosswalk:{r.file.stem}",
                    r.version,
                    r.target_system,
                    r.target_code,
                    None,
                    r.equivalence,
                    r.author,
                )
            )


class WarehouseTerminology(Terminology):
    """Reads terminology.* on demand, in batches; an absent or empty table means nothing is loaded."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        super().__init__()
        self.con = con
        present = {
            r[0]
            for r in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'terminology'"
            ).fetchall()
        }
        self.has = present
        if "releases" in present:
            rows = con.execute(
                "SELECT system, string_agg(DISTINCT version, ',' ORDER BY version) FROM terminology.releases "
                "WHERE active AND system IS NOT NULL GROUP BY system"
            ).fetchall()
            self.versions = {s: v for s, v in rows}
            has_content = con.execute(
                "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'terminology' "
                "AND table_name = 'releases' AND column_name = 'content'"
            ).fetchone()[0]
            if has_content:
                self.subsets = {
                    r[0]
                    for r in con.execute(
                        "SELECT DISTINCT system FROM terminology.releases "
                        "WHERE active AND content = 'fragment'"
                    ).fetchall()
                }
        self._fetched: set[tuple[str, str]] = set()

    def prefetch(self, pairs: Iterable[tuple[str, str]]) -> None:
        todo = sorted({p for p in pairs if p not in self._fetched})
        if not todo:
            return
        self._fetched.update(todo)
        self.con.execute(
            "CREATE OR REPLACE TEMP TABLE _norm_keys AS "
            "SELECT unnest(?::VARCHAR[]) AS system, unnest(?::VARCHAR[]) AS code",
            [[s for s, _ in todo], [c for _, c in todo]],
        )
        if "concepts" in self.has:
            for s, c, d, st in self.con.execute(
                "SELECT c.system, c.code, c.display, c.status FROM terminology.concepts c "
                "JOIN _norm_keys k USING (system, code)"
            ).fetchall():
                self.concepts[(s, c)] = (d, st)
        if "replacements" in self.has:
            for s, c, t, rel in self.con.execute(
                "SELECT r.system, r.code, r.target_code, r.relation FROM terminology.replacements r "
                "JOIN _norm_keys k USING (system, code) ORDER BY ALL"
            ).fetchall():
                self.replaced[(s, c)].append((t, rel))
        if "maps" in self.has:
            for row in self.con.execute(
                "SELECT m.source_system, m.source_code, m.map, m.map_version, m.target_system, "
                "m.target_code, m.target_display, m.equivalence, m.author FROM terminology.maps m "
                "JOIN _norm_keys k ON m.source_system = k.system AND m.source_code = k.code "
                "WHERE m.map NOT LIKE 'crosswalk:%' ORDER BY ALL"
            ).fetchall():
                self.maps[(row[0], row[1])].append(Mapping(*row[2:]))
        self.con.execute("DROP TABLE _norm_keys")

    def concept(self, system: str, code: str) -> tuple[str | None, str] | None:
        if (system, code) not in self._fetched:
            self.prefetch([(system, code)])  # chains and crosswalk targets: rare, fetched one by one
        return self.concepts.get((system, code))

    def replacements(self, system: str, code: str) -> list[tuple[str, str]]:
        if (system, code) not in self._fetched:
            self.prefetch([(system, code)])
        return self.replaced.get((system, code), [])

    def mappings(self, system: str, code: str) -> list[Mapping]:
        if (system, code) not in self._fetched:
            self.prefetch([(system, code)])
        return self.maps.get((system, code), [])


@cache
def unit_aliases() -> tuple[dict[str, str], str]:
    """Spellings seen in legacy feeds -> UCUM code (units.csv), and the file's version (content hash)."""
    data = UNITS_FILE.read_bytes()
    out: dict[str, str] = {}
    for row in csv.DictReader(data.decode("utf-8").splitlines()):
        out[row["unit"]] = row["ucum"]
        out.setdefault(row["unit"].lower(), row["ucum"])
    return out, f"units.csv@{hashlib.sha256(data).hexdigest()[:12]}"

"""What the normalizer reads: loaded concepts, replacements, maps (terminology.*), crosswalks, UCUM units."""

from __future__ import annotations

import csv
import hashlib
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
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

    def prefetch_sets(self, systems: Iterable[str], codes: Iterable[str]) -> None:
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
        # Fetched as products: every pair of a system set and a code set (prefetch_sets).
        self._products: list[tuple[frozenset[str], frozenset[str]]] = []

    def fetched(self, system: str, code: str) -> bool:
        return (system, code) in self._fetched or any(
            system in systems and code in codes for systems, codes in self._products
        )

    def prefetch(self, pairs: Iterable[tuple[str, str]]) -> None:
        todo = sorted({p for p in pairs if not self.fetched(*p)})
        if not todo:
            return
        self.con.execute(
            "CREATE OR REPLACE TEMP TABLE _norm_keys AS "
            "SELECT unnest(?::VARCHAR[]) AS system, unnest(?::VARCHAR[]) AS code",
            [[s for s, _ in todo], [c for _, c in todo]],
        )
        self._fetch("JOIN _norm_keys k USING (system, code)", lambda s, c: True)
        self._fetched.update(todo)
        self.con.execute("DROP TABLE _norm_keys")

    def prefetch_sets(self, systems: Iterable[str], codes: Iterable[str]) -> None:
        """Every (system, code) pair of systems x codes in one query per table: a run's texts name a few
        dozen systems and a vocabulary of codes, where a walk collecting exact pairs costs a pass in Python.
        Pairs already fetched are skipped, so no list gains a row twice."""
        systems, codes = frozenset(systems), frozenset(codes)
        if not systems or not codes:
            return
        self.con.execute(
            "CREATE OR REPLACE TEMP TABLE _norm_system_set AS SELECT unnest(?::VARCHAR[]) AS system",
            [sorted(systems)],
        )
        self.con.execute(
            "CREATE OR REPLACE TEMP TABLE _norm_code_set AS SELECT unnest(?::VARCHAR[]) AS code",
            [sorted(codes)],
        )
        known = self.fetched
        self._fetch(
            "SEMI JOIN _norm_system_set USING (system) SEMI JOIN _norm_code_set USING (code)",
            lambda s, c: not known(s, c),
        )
        self._products.append((systems, codes))
        self.con.execute("DROP TABLE _norm_system_set")
        self.con.execute("DROP TABLE _norm_code_set")

    def _fetch(self, join: str, new: Callable[[str, str], bool]) -> None:
        """Concepts, replacements and maps of the keys the join selects (columns system, code)."""
        if "concepts" in self.has:
            for s, c, d, st in self.con.execute(
                f"SELECT system, code, display, status FROM terminology.concepts {join}"
            ).fetchall():
                self.concepts[(s, c)] = (d, st)
        if "replacements" in self.has:
            for s, c, t, rel in self.con.execute(
                "SELECT system, code, target_code, relation "
                f"FROM terminology.replacements {join} ORDER BY ALL"
            ).fetchall():
                if new(s, c):
                    self.replaced[(s, c)].append((t, rel))
        if "maps" in self.has:
            for row in self.con.execute(
                "SELECT system, code, map, map_version, target_system, target_code, target_display, "
                "equivalence, author FROM (SELECT * EXCLUDE (source_system, source_code), "
                "source_system AS system, source_code AS code FROM terminology.maps "
                f"WHERE map NOT LIKE 'crosswalk:%') {join} ORDER BY ALL"
            ).fetchall():
                if new(row[0], row[1]):
                    self.maps[(row[0], row[1])].append(Mapping(*row[2:]))

    def concept(self, system: str, code: str) -> tuple[str | None, str] | None:
        if not self.fetched(system, code):
            self.prefetch([(system, code)])  # chains and crosswalk targets: rare, fetched one by one
        return self.concepts.get((system, code))

    def replacements(self, system: str, code: str) -> list[tuple[str, str]]:
        if not self.fetched(system, code):
            self.prefetch([(system, code)])
        return self.replaced.get((system, code), [])

    def mappings(self, system: str, code: str) -> list[Mapping]:
        if not self.fetched(system, code):
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

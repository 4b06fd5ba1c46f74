"""Ranked standard-code candidates for unmapped local codes: display text, units, specimen and value type.

Displays are tokenised, lab abbreviations expanded (abbreviations.csv), and matched fuzzily (rapidfuzz)
against the loaded concepts' displays and designations; LOINC properties then move candidates up or down:
example UCUM units and PROPERTY against the units the code was seen with, SYSTEM (specimen) against a
specimen named in the display, SCALE_TYP against the value types observed.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import duckdb
from rapidfuzz import fuzz, process

from terminology import core
from terminology.terms import unit_aliases

ABBREVIATIONS = Path(__file__).with_name("abbreviations.csv")
_TOKEN = re.compile(r"[a-z0-9]+")
# The LOINC PROPERTY a unit implies (mass concentration, substance concentration, ...).
_UNIT_PROPERTY = {
    "mg/dL": "MCnc",
    "g/dL": "MCnc",
    "g/L": "MCnc",
    "mg/L": "MCnc",
    "ug/dL": "MCnc",
    "ug/L": "MCnc",
    "ng/mL": "MCnc",
    "ng/dL": "MCnc",
    "pg/mL": "MCnc",
    "ug/mL": "MCnc",
    "mmol/L": "SCnc",
    "umol/L": "SCnc",
    "nmol/L": "SCnc",
    "pmol/L": "SCnc",
    "meq/L": "SCnc",
    "mol/L": "SCnc",
    "U/L": "CCnc",
    "[IU]/L": "ACnc",
    "m[IU]/L": "ACnc",
    "m[IU]/mL": "ACnc",
    "u[IU]/mL": "ACnc",
    "10*3/uL": "NCnc",
    "10*6/uL": "NCnc",
    "10*9/L": "NCnc",
    "10*12/L": "NCnc",
    "/[HPF]": "Naric",
    "%": "Fr",
    "fL": "EntVol",
    "pg": "EntMass",
    "s": "Time",
    "mm[Hg]": "Pres",
    "/min": "NRat",
    "kg": "Mass",
    "[lb_av]": "Mass",
    "cm": "Len",
    "[in_i]": "Len",
    "Cel": "Temp",
    "[degF]": "Temp",
    "kg/m2": "Ratio",
    "{ratio}": "Ratio",
    "{INR}": "RelTime",
}
# Specimen words in a display -> LOINC SYSTEM values they agree with.
_SPECIMEN = {
    "urine": ("Urine",),
    "serum": ("Ser/Plas", "Ser"),
    "plasma": ("Ser/Plas", "Plas"),
    "blood": ("Bld", "BldV", "BldA", "BldC"),
    "cerebrospinal": ("CSF",),
    "arterial": ("BldA",),
    "venous": ("BldV",),
    "stool": ("Stool",),
    "saliva": ("Saliva",),
}
# Below this text similarity (0-100) a candidate shares little more than letters with the display: noise
# that would cost a reviewer time, whatever units or specimen say.
MIN_TEXT_SCORE = 60
_STOP = frozenset({"in", "or", "of", "by", "the", "and", "at", "for", "to", "on", "with", "a"})
_NUMERIC = {"Quantity", "integer", "decimal"}


@dataclass
class Target:
    """One code to find candidates for, with what the warehouse says about how it is used."""

    source_system: str
    source_code: str
    source_display: str | None
    occurrences: int = 0
    units: Counter[str] = field(default_factory=Counter)
    value_types: Counter[str] = field(default_factory=Counter)
    observation: bool = False
    # standard codings sent beside this code in the same CodeableConcept -> how often
    beside: Counter[tuple[str, str, str]] = field(default_factory=Counter)


@dataclass(frozen=True)
class Candidate:
    system: str
    code: str
    display: str
    score: float


@cache
def abbreviations() -> dict[str, str]:
    with ABBREVIATIONS.open(encoding="utf-8", newline="") as f:
        return {r["abbreviation"].lower(): r["expansion"].lower() for r in csv.DictReader(f)}


def tokens(text: str | None) -> list[str]:
    """Lower-case word tokens with abbreviations expanded ("GLU SER" -> glucose serum)."""
    out: list[str] = []
    abbr = abbreviations()
    for tok in _TOKEN.findall((text or "").lower()):
        out.extend(w for w in abbr.get(tok, tok).split() if w not in _STOP)
    return out


class Index:
    """Candidate concepts of one or more systems, with the LOINC properties that boost them."""

    def __init__(
        self, rows: Iterable[tuple[str, str, str, str]], props: dict[tuple[str, str], dict[str, str]]
    ):
        self.keys: list[tuple[str, str, str]] = []
        texts: list[str] = []
        for system, code, display, extra in rows:
            self.keys.append((system, code, display))
            texts.append(" ".join(tokens(f"{display} {extra}")))
        self.texts = texts
        self.props = props

    @classmethod
    def from_warehouse(cls, con: duckdb.DuckDBPyConnection, systems: tuple[str, ...]) -> Index:
        have = {
            r[0]
            for r in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'terminology'"
            ).fetchall()
        }
        if "concepts" not in have:
            return cls([], {})
        designations = (
            "(SELECT string_agg(DISTINCT d.term, ' ') FROM terminology.designations d "
            "WHERE d.system = c.system AND d.code = c.code)"
            if "designations" in have
            else "''"
        )
        rows = con.execute(
            f"SELECT c.system, c.code, coalesce(c.display, ''), coalesce({designations}, '') "
            "FROM terminology.concepts c WHERE c.status = 'active' AND list_contains(?, c.system) "
            # LOINC answers (LA) and parts (LP) are not things one observes: never a target for a test code.
            "AND NOT (c.system = 'http://loinc.org' AND (c.code LIKE 'LA%' OR c.code LIKE 'LP%')) "
            "ORDER BY c.system, c.code",
            [list(systems)],
        ).fetchall()
        props: dict[tuple[str, str], dict[str, str]] = {}
        if "properties" in have:
            for s, c, p, v in con.execute(
                "SELECT system, code, property, value FROM terminology.properties "
                "WHERE list_contains(?, system) "
                "AND property IN ('PROPERTY', 'SYSTEM', 'SCALE_TYP', 'EXAMPLE_UCUM_UNITS')",
                [list(systems)],
            ).fetchall():
                props.setdefault((s, c), {})[p] = v
        return cls(rows, props)

    def rank(self, target: Target, top: int = 5) -> list[Candidate]:
        # Only the display says what a code means: a bare code ("N", "01") matched as text finds noise, so
        # such a code is listed for review without candidates.
        query = " ".join(tokens(target.source_display))
        if not query or not self.texts:
            return []
        hits = process.extract(
            query, self.texts, scorer=_score, limit=max(top * 10, 50), score_cutoff=MIN_TEXT_SCORE
        )
        scored = []
        for _, base, i in hits:
            system, code, display = self.keys[i]
            scored.append(
                (base + _boost(target, query, self.props.get((system, code), {})), system, code, display)
            )
        scored.sort(key=lambda s: (-s[0], s[1], s[2]))
        # Ranked on the raw sum; the score shown is capped to 0..1 for reviewers.
        return [Candidate(s, c, d, round(max(0.0, min(v, 100.0)) / 100, 3)) for v, s, c, d in scored[:top]]


def _score(query: str, choice: str, **_: object) -> float:
    # token_set rewards every query word being present; token_sort penalises unrelated extra words.
    return 0.6 * fuzz.token_set_ratio(query, choice) + 0.4 * fuzz.token_sort_ratio(query, choice)


def _boost(target: Target, query: str, props: dict[str, str]) -> float:
    if not props:
        return 0.0
    boost = 0.0
    aliases, _ = unit_aliases()
    units = {aliases.get(u, aliases.get(u.lower(), u)) for u in target.units}
    if units:
        examples = {u.strip() for u in re.split(r"[;,]", props.get("EXAMPLE_UCUM_UNITS", "")) if u.strip()}
        if units & examples:
            boost += 10
        implied = {_UNIT_PROPERTY.get(u) for u in units} - {None}
        prop = props.get("PROPERTY", "")
        if implied and prop:
            boost += 6 if any(p and (p == prop or prop.endswith(p)) for p in implied) else -6
    words = set(query.split())
    specimen = props.get("SYSTEM", "")
    named = [systems for word, systems in _SPECIMEN.items() if word in words]
    if named and specimen:
        boost += 8 if any(specimen in systems for systems in named) else -8
    elif not named and specimen == "Ser/Plas":
        # A chemistry test named without a specimen is, in lab feeds, nearly always serum or plasma.
        boost += 5
    scale = props.get("SCALE_TYP", "")
    if target.value_types and scale:
        numeric = sum(n for t, n in target.value_types.items() if t in _NUMERIC)
        textual = sum(target.value_types.values()) - numeric
        if numeric > textual:
            boost += 5 if scale == "Qn" else -3
        elif textual:
            boost += 5 if scale in ("Ord", "Nom", "Nar", "OrdQn") else -3
    return boost


def target_systems(target: Target) -> tuple[str, ...]:
    """Where to look: LOINC for what is observed or measured, SNOMED CT for everything else."""
    return (core.LOINC,) if target.observation else (core.SNOMED,)

"""HL7 v2 vocabulary maps (coding-system names, v2-to-FHIR concept maps) loaded once from maps/*.csv.

Coding-system names (HL7 table 0396) resolve to canonical URIs from maps/coding_systems.csv; "HLnnnn"
names become the v2 table's terminology.hl7.org URI, unless the table is an external code system (HL70292
is CVX). Language codes (table 0296, ISO 639) become BCP 47 tags, as the v2-to-FHIR IG maps them. Any
other name (a "99zzz" local system, "L", a sender's own label) is kept as a local system under the
documented ehrlift namespace ``urn:ehrlift:hl7v2:<source system>:<name>``: local codes belong to their
sender, so two sources never share one, and nothing local is dressed up as a standard system.
"""

from __future__ import annotations

import csv
import re
from functools import cache, lru_cache
from pathlib import Path
from urllib.parse import quote

MAPS = Path(__file__).with_name("maps")
LOCAL_PREFIX = "urn:ehrlift:hl7v2:"
_HL7_TABLE = re.compile(r"(?:HL7|HL)(\d{4})")


@cache
def coding_systems() -> dict[str, str]:
    with (MAPS / "coding_systems.csv").open(encoding="utf-8", newline="") as f:
        return {row["name"].upper(): row["uri"] for row in csv.DictReader(f)}


@cache
def concept_maps() -> dict[tuple[str, str], dict[str, str]]:
    """(map, v2 code) -> FHIR code/system/display; the IG's maps first, then documented gap fillers."""
    out: dict[tuple[str, str], dict[str, str]] = {}
    for name in ("concepts.csv", "concepts_gaps.csv"):
        with (MAPS / name).open(encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                key = (row["map"], row["v2_code"])
                if key not in out:
                    out[key] = {
                        "code": row["fhir_code"],
                        "system": row["fhir_system"],
                        "display": row["fhir_display"],
                    }
    return out


def concept(map_name: str, code: str | None) -> dict[str, str] | None:
    """The FHIR concept a v2 code maps to, or None; lookups try the code as sent, then upper-cased."""
    if not code:
        return None
    maps = concept_maps()
    return maps.get((map_name, code)) or maps.get((map_name, code.strip().upper()))


def code_of(map_name: str, code: str | None) -> str | None:
    hit = concept(map_name, code)
    return hit["code"] if hit else None


def coding_of(map_name: str, code: str | None) -> dict[str, str] | None:
    hit = concept(map_name, code)
    if hit is None:
        return None
    coding = {"system": hit["system"], "code": hit["code"]}
    if hit["display"]:
        coding["display"] = hit["display"]
    return coding


def v2_table_uri(table: str) -> str:
    return f"http://terminology.hl7.org/CodeSystem/v2-{table}"


def table_system(table: str) -> str:
    """The system of a code sent without one in a field bound to an HL7 table: the external code system
    the table stands for (maps/coding_systems.csv), else the v2 table's own URI."""
    return coding_systems().get(f"HL7{table}") or v2_table_uri(table)


BCP47 = "urn:ietf:bcp:47"


@lru_cache(maxsize=1024)
def language_tag(code: str | None) -> str | None:
    """A language code (ISO 639-1/-2, an IETF tag in any case or with "_") as its BCP 47 tag, or None when
    it is no registered language; "ENG", "eng" and "en" all give "en", "CHI" gives "zh"."""
    if not code or not code.strip():
        return None
    import langcodes  # half a second to import: only runs that read HL7 language codes pay it

    try:
        tag = langcodes.standardize_tag(code.strip())
    except (langcodes.LanguageTagError, ValueError):
        return None
    return tag if langcodes.tag_is_valid(tag) and tag != "und" else None


@lru_cache(maxsize=4096)
def system_uri(name: str | None, source_system: str) -> str | None:
    """Canonical URI for a v2 coding-system name; a name already given as a URI or OID is kept."""
    if not name:
        return None
    name = name.strip()
    if not name:
        return None
    if "://" in name or name.startswith("urn:"):
        return name
    if re.fullmatch(r"\d+(\.\d+)+", name):
        return f"urn:oid:{name}"
    known = coding_systems().get(name.upper())
    if known is not None and name.upper() != "HL7":
        return known
    m = _HL7_TABLE.fullmatch(name.upper())
    if m:
        return v2_table_uri(m.group(1))
    return local_system(source_system, name)


@lru_cache(maxsize=4096)
def local_system(source_system: str, name: str) -> str:
    return f"{LOCAL_PREFIX}{quote(source_system, safe='')}:{quote(name, safe='')}"


def is_ucum_like(unit: str) -> bool:
    """A unit spelled with UCUM's characters only (mg/dL, 10*3/uL, mm[Hg]); free text such as
    "per high power field" is not."""
    return bool(re.fullmatch(r"[A-Za-z0-9%*/.\[\]{}^'()\-]+", unit)) and not unit.isdigit()

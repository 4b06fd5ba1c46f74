"""The C-CDA maps as data: code-system OIDs, document and section templates, status and value concept maps."""

from __future__ import annotations

import csv
from functools import cache
from pathlib import Path

MAPS = Path(__file__).parent / "maps"


def _rows(name: str) -> list[dict[str, str]]:
    with (MAPS / name).open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@cache
def oid_systems() -> dict[str, str]:
    """OID -> canonical FHIR code-system URI (oids.csv)."""
    return {r["oid"]: r["uri"] for r in _rows("oids.csv")}


@cache
def document_types() -> dict[str, tuple[str, str, int]]:
    """Document templateId root -> (name, LOINC code, priority: lower wins when a document claims many)."""
    return {
        r["template_id"]: (r["name"], r["loinc"], int(r["priority"])) for r in _rows("document_types.csv")
    }


@cache
def sections() -> tuple[dict[str, tuple[str, str]], dict[str, tuple[str, str]]]:
    """(section templateId root -> (family, name), section LOINC code -> (family, name))."""
    by_template: dict[str, tuple[str, str]] = {}
    by_code: dict[str, tuple[str, str]] = {}
    for r in _rows("sections.csv"):
        by_template[r["template_id"]] = (r["family"], r["name"])
        if r["loinc"]:
            by_code.setdefault(r["loinc"], (r["family"], r["name"]))
    return by_template, by_code


@cache
def concepts() -> dict[str, dict[str, str]]:
    """map name -> {source code: target code} (concepts.csv, after HL7's C-CDA on FHIR ConceptMaps)."""
    out: dict[str, dict[str, str]] = {}
    for r in _rows("concepts.csv"):
        out.setdefault(r["map"], {})[r["source"]] = r["target"]
    return out


def concept(map_name: str, code: str | None) -> str | None:
    return concepts()[map_name].get(code) if code else None

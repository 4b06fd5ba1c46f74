"""Small builders for terminology tests: the terminology.* tables (exact contract DDL) and crosswalk files."""

from __future__ import annotations

import csv
from pathlib import Path

import duckdb
import pytest

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
NDC = "http://hl7.org/fhir/sid/ndc"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
LOCAL = "urn:ehrlift:hl7v2:lab:99LAB"

TERMINOLOGY_DDL = """
CREATE SCHEMA IF NOT EXISTS terminology;
CREATE TABLE IF NOT EXISTS terminology.releases (kind VARCHAR, system VARCHAR, version VARCHAR,
    source VARCHAR, sha256 VARCHAR, loaded_at TIMESTAMPTZ, concepts BIGINT, active BOOLEAN);
CREATE TABLE IF NOT EXISTS terminology.concepts (system VARCHAR, code VARCHAR, display VARCHAR,
    status VARCHAR, status_detail VARCHAR, version VARCHAR);
CREATE TABLE IF NOT EXISTS terminology.designations (system VARCHAR, code VARCHAR, term VARCHAR, use VARCHAR);
CREATE TABLE IF NOT EXISTS terminology.properties (system VARCHAR, code VARCHAR, property VARCHAR,
    value VARCHAR);
CREATE TABLE IF NOT EXISTS terminology.replacements (system VARCHAR, code VARCHAR, target_code VARCHAR,
    relation VARCHAR, version VARCHAR);
CREATE TABLE IF NOT EXISTS terminology.maps (map VARCHAR, map_version VARCHAR, source_system VARCHAR,
    source_code VARCHAR, source_display VARCHAR, target_system VARCHAR, target_code VARCHAR,
    target_display VARCHAR, equivalence VARCHAR, author VARCHAR, reviewer VARCHAR, review_date DATE);
"""


def load_terms(
    con: duckdb.DuckDBPyConnection,
    concepts: list[tuple[str, str, str, str]] = (),
    *,
    versions: dict[str, str] | None = None,
    replacements: list[tuple[str, str, str, str]] = (),
    maps: list[tuple[str, str, str, str, str]] = (),
    properties: list[tuple[str, str, str, str]] = (),
) -> None:
    """concepts (system, code, display, status); replacements (system, code, target, relation);
    maps (map, source system, source code, target system, target code); a release per system."""
    con.execute(TERMINOLOGY_DDL)
    systems = versions or {}
    for system, *_ in concepts:
        systems.setdefault(system, "test-1")
    for system, version in systems.items():
        con.execute(
            "INSERT INTO terminology.releases (kind, system, version, source, sha256, loaded_at, concepts, "
            "active) VALUES ('test', ?, ?, 'fixture', 'fixture', now(), 0, TRUE)",
            [system, version],
        )
    if concepts:
        con.executemany(
            "INSERT INTO terminology.concepts VALUES (?, ?, ?, ?, NULL, 'test-1')",
            [list(c) for c in concepts],
        )
    if replacements:
        con.executemany(
            "INSERT INTO terminology.replacements VALUES (?, ?, ?, ?, 'test-1')",
            [list(r) for r in replacements],
        )
    if maps:
        con.executemany(
            "INSERT INTO terminology.maps VALUES "
            "(?, 'm1', ?, ?, NULL, ?, ?, NULL, 'equivalent', NULL, NULL, NULL)",
            [list(m) for m in maps],
        )
    if properties:
        con.executemany(
            "INSERT INTO terminology.properties VALUES (?, ?, ?, ?)", [list(p) for p in properties]
        )


HEADER = (
    "source_system,source_code,source_display,target_system,target_code,equivalence,author,reviewer,"
    "review_date,version"
)


def write_crosswalk(path: Path, *rows: tuple[str, ...], header: str = HEADER) -> Path:
    """rows: (source system, code, display, target system, code, equivalence, author, reviewer, date,
    version)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        f.write(header + "\n")
        csv.writer(f, lineterminator="\n").writerows(rows)
    return path


@pytest.fixture
def fixture_terminology_only(monkeypatch):
    """The warehouse holds exactly the terminology a test loads: no embedded default content is added."""
    monkeypatch.setattr("pipelines.normalize.load_default_terminology", lambda con: False)

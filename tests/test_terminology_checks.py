"""LOINC mod-10 and SNOMED CT Verhoeff check digits, SCTID partitions and malformed-code reasons."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from terminology.checks import (
    loinc_check_digit,
    loinc_check_ok,
    malformed_reason,
    snomed_concept_id_ok,
    snomed_verhoeff_ok,
    verhoeff_ok,
)

DEFAULT = Path(__file__).resolve().parents[1] / "terminology" / "default"


# LOINC's own worked example: 2345-7 (digits 2345 → check digit 7), and common published codes.
@pytest.mark.parametrize(
    ("code", "ok"),
    [
        ("2345-7", True),
        ("718-7", True),
        ("4548-4", True),
        ("2160-0", True),
        ("8480-6", True),
        ("29463-7", True),
        ("39156-5", True),
        ("94500-6", True),
        ("2345-6", False),
        ("718-8", False),
        ("2345", False),
        ("2345-77", False),
        ("A345-7", False),
        ("LA6576-8", True),  # answer codes: shape only
        ("LP14082-9", True),
    ],
)
def test_loinc_check_digit(code: str, ok: bool) -> None:
    assert loinc_check_ok(code) is ok


def test_loinc_check_digit_values() -> None:
    assert [loinc_check_digit(d) for d in ("2345", "718", "4548", "2160", "1")] == [7, 7, 4, 0, 8]


# Verhoeff's published example (236 → check digit 3) and SNOMED CT identifiers of each partition.
def test_verhoeff_published_example() -> None:
    assert verhoeff_ok("2363")
    assert not any(verhoeff_ok(f"236{d}") for d in "012456789")


@pytest.mark.parametrize(
    ("sctid", "valid", "concept"),
    [
        ("138875005", True, True),  # SNOMED CT Concept (root)
        ("404684003", True, True),  # Clinical finding
        ("22298006", True, True),  # Myocardial infarction
        ("900000000000207008", True, True),  # International core module (long format)
        ("731000124108", True, True),  # US Edition module: extension partition 10
        ("37436014", True, False),  # a description id: partition 01
        ("22298007", False, False),  # wrong check digit
        ("022298006", False, False),  # leading zero
        ("12345", False, False),  # too short
    ],
)
def test_sctid(sctid: str, valid: bool, concept: bool) -> None:
    assert snomed_verhoeff_ok(sctid) is valid
    assert snomed_concept_id_ok(sctid) is concept


def test_every_shipped_snomed_and_loinc_code_passes_its_check() -> None:
    con = duckdb.connect()
    rows = con.execute(
        f"SELECT system, code FROM '{DEFAULT / 'concepts.parquet'}' "
        "WHERE system IN ('http://snomed.info/sct', 'http://loinc.org')"
    ).fetchall()
    snomed = [c for s, c in rows if s == "http://snomed.info/sct"]
    loinc = [c for s, c in rows if s == "http://loinc.org"]
    assert len(snomed) > 26_000 and len(loinc) > 500
    assert [c for c in snomed if not snomed_concept_id_ok(c)] == []
    assert [c for c in loinc if not loinc_check_ok(c)] == []


@pytest.mark.parametrize(
    ("system", "code", "reason"),
    [
        ("http://loinc.org", "2345-7", None),
        ("LN", "2345-7", None),
        ("http://loinc.org", "2345-6", "LOINC mod-10 check digit mismatch"),
        ("http://loinc.org", "GLU", "does not match the LOINC code pattern"),
        ("http://snomed.info/sct", "22298006", None),
        ("http://snomed.info/sct", "22298007", "SNOMED CT Verhoeff check digit mismatch"),
        (
            "http://snomed.info/sct",
            "37436014",
            "SCTID partition 01 is a description identifier, not a concept",
        ),
        ("http://snomed.info/sct", "MI", "does not match the SCTID pattern (6-18 digits, no leading zero)"),
        ("http://hl7.org/fhir/sid/icd-10-cm", "E11.9", None),
        ("http://hl7.org/fhir/sid/icd-10-cm", "E119x", "does not match the ICD-10-CM code pattern"),
        ("http://hl7.org/fhir/sid/cvx", "208", None),
        ("http://hl7.org/fhir/sid/cvx", "2081", "does not match the CVX code pattern"),
        ("http://example.org/unknown", "anything", None),
        ("http://loinc.org", "", "empty code"),
        ("http://loinc.org", " 2345-7", "leading or trailing whitespace in code"),
        (None, None, "empty code"),
    ],
)
def test_malformed_reason(system: str | None, code: str | None, reason: str | None) -> None:
    assert malformed_reason(system, code) == reason

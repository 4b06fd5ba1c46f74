"""The terminology core the normalizer builds on: the code-system registry, check digits, default content."""

from __future__ import annotations

from functools import cache

import duckdb

from terminology.checks import malformed_reason as _malformed_reason
from terminology.registry import Registry
from terminology.store import ensure_default as _ensure_default

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
CVX = "http://hl7.org/fhir/sid/cvx"
NDC = "http://hl7.org/fhir/sid/ndc"
UCUM = "http://unitsofmeasure.org"
LOCAL_PREFIXES = ("urn:ehrlift:hl7v2:", "urn:ehrlift:local:")


@cache
def registry() -> Registry:
    return Registry.default()


def malformed_reason(system_uri: str, code: str) -> str | None:
    """Why a code cannot belong to its system by its form (pattern, check digit), or None."""
    return _malformed_reason(system_uri, code)


def ensure_default(con: duckdb.DuckDBPyConnection) -> bool:
    """Load the embedded default terminology where nothing else is in force (offline; no download)."""
    _ensure_default(con)
    return True

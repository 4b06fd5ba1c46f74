"""The terminology core the normalizer builds on (registry, check digits, default content), in one place.

The normalizer reaches the code-system registry, the check-digit rules and the embedded default terminology
only through `registry()`, `malformed_reason()` and `ensure_default()`. When the full registry modules
(terminology.registry, terminology.checks, terminology.store) are installed they are used; otherwise an
interim registry knows the HL7 v2 table 0396 names ehrlift's HL7 v2 converter maps (and the standard
systems' OIDs), checks a code's form only for emptiness and whitespace, and loads no default content.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol

import duckdb

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
CVX = "http://hl7.org/fhir/sid/cvx"
NDC = "http://hl7.org/fhir/sid/ndc"
UCUM = "http://unitsofmeasure.org"
LOCAL_PREFIXES = ("urn:ehrlift:hl7v2:", "urn:ehrlift:local:")


class RegistryLike(Protocol):
    def canonical(self, raw: str) -> str | None: ...
    def is_local(self, raw: str) -> bool: ...
    def info(self, uri: str) -> Any: ...


@dataclass(frozen=True)
class SystemInfo:
    uri: str
    name: str
    standard: bool
    check: str | None = None
    pattern: str | None = None


_OIDS = {
    "2.16.840.1.113883.6.1": LOINC,
    "2.16.840.1.113883.6.96": SNOMED,
    "2.16.840.1.113883.6.88": RXNORM,
    "2.16.840.1.113883.6.90": ICD10CM,
    "2.16.840.1.113883.12.292": CVX,
    "2.16.840.1.113883.6.69": NDC,
    "2.16.840.1.113883.6.8": UCUM,
}
_STANDARD = {LOINC, SNOMED, RXNORM, ICD10CM, CVX, UCUM}


class InterimRegistry:
    """HL7 v2 0396 names and the standard systems' OIDs and URIs; anything else is unknown or local."""

    def __init__(self) -> None:
        from pipelines.convert.hl7v2.vocab import MAPS

        with (MAPS / "coding_systems.csv").open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        self._names = {r["name"].upper(): r["uri"] for r in rows}
        self._uris = {r["uri"]: r["note"] for r in rows} | {u: u for u in _OIDS.values()}

    def canonical(self, raw: str) -> str | None:
        raw = raw.strip()
        if not raw or self.is_local(raw):
            return None
        oid = raw[8:] if raw.startswith("urn:oid:") else raw
        if oid in _OIDS:
            return _OIDS[oid]
        if raw in self._uris:
            return raw
        if raw.startswith("http://terminology.hl7.org/CodeSystem/") or raw.startswith("http://hl7.org/fhir/"):
            return raw  # HL7's own code systems are canonical by construction
        return self._names.get(raw.upper())

    def is_local(self, raw: str) -> bool:
        return raw.startswith(LOCAL_PREFIXES) or bool(re.fullmatch(r"99[A-Za-z0-9]{3}|L", raw))

    def info(self, uri: str) -> SystemInfo:
        return SystemInfo(uri, self._uris.get(uri, uri), uri in _STANDARD)


try:
    from terminology.checks import malformed_reason as _malformed_reason
    from terminology.registry import Registry as _Registry
    from terminology.store import ensure_default as _ensure_default
except ModuleNotFoundError:
    _Registry = _malformed_reason = _ensure_default = None


@cache
def registry() -> RegistryLike:
    return _Registry.default() if _Registry is not None else InterimRegistry()


def malformed_reason(system_uri: str, code: str) -> str | None:
    """Why a code cannot belong to its system by its form (pattern, check digit), or None."""
    if _malformed_reason is not None:
        return _malformed_reason(system_uri, code)
    if not code.strip():
        return "empty code"
    if code != code.strip():
        return "leading or trailing whitespace in code"
    return None


def ensure_default(con: duckdb.DuckDBPyConnection) -> bool:
    """Load the embedded default terminology where nothing else is in force; False when not installed."""
    if _ensure_default is None:
        return False
    _ensure_default(con)
    return True

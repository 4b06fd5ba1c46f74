"""Structural FHIR validation of the resources bound for back-load, with fhir.resources' R4B models.

fhir.resources 8 ships R4B and R5 but not R4; R4B is R4's technical correction for most clinical
resources, so its pydantic models are the closest structural check (cardinality, types, primitive
formats, choice types, required elements). Types that R4 has and R4B dropped or renamed (the
MedicinalProduct* family, EffectEvidenceSynthesis, RiskEvidenceSynthesis, SubstanceNucleicAcid and
friends) have no model: they are reported as not checked, never as passed.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import duckdb
from pydantic import ValidationError

from pipelines.common.ledger import pointer
from pipelines.common.warehouse import resource_tables

log = logging.getLogger(__name__)
SUITE = "fhir_structure"
_BATCH = 5_000


@dataclass
class TypeResult:
    """One resource type's structural result for a run: counts, finding kinds, failing records."""

    resource_type: str
    checked: int = 0
    invalid: int = 0
    findings: Counter[str] = field(default_factory=Counter)
    pointers: list[str] = field(default_factory=list)
    no_model: bool = False

    @property
    def name(self) -> str:
        return f"{SUITE}.{self.resource_type}"

    def observed_value(self) -> str:
        if self.no_model:
            return f"not checked: no R4B model for {self.resource_type} ({self.checked} resources)"
        top = "; ".join(f"{k} x{n}" for k, n in self.findings.most_common(5))
        return f"{self.invalid} of {self.checked} resources invalid" + (f": {top}" if top else "")


def _model(resource_type: str):
    from fhir.resources.R4B import get_fhir_model_class

    try:
        return get_fhir_model_class(resource_type)
    except (KeyError, ValueError, ImportError):
        return None


def _finding(resource_type: str, error: dict) -> str:
    """Element path and error kind only: pydantic's message and input would quote the record's values."""
    path = ".".join(str(p) for p in error.get("loc", ()) if not isinstance(p, int))
    kind = str(error.get("type", "invalid")).rsplit(".", 1)[-1]  # fhir.resources prefixes its own
    return f"{resource_type}{'.' + path if path else ''}: {kind}"


def validate_structure(con: duckdb.DuckDBPyConnection, run_id: str, max_pointers: int) -> list[TypeResult]:
    """Validate every resource this run stored (what back-load will send next), one type at a time."""
    results = []
    for rtype in resource_tables(con):
        result = TypeResult(rtype)
        model = _model(rtype)
        cur = con.cursor()
        cur.execute(
            f"""
            SELECT r.id, r.resource, r.file_sha256, r.unit_position, l.unit_kind, l.byte_offset, l.byte_length
            FROM fhir."{rtype}" r
            LEFT JOIN ops.ledger l
              ON l.run_id = r.run_id AND l.file_sha256 = r.file_sha256 AND l.unit_position = r.unit_position
            WHERE r.run_id = ? ORDER BY r.file_sha256, r.unit_position, r.id
            """,
            [run_id],
        )
        while rows := cur.fetchmany(_BATCH):
            result.checked += len(rows)
            if model is None:
                continue
            for rid, text, sha, pos, kind, off, length in rows:
                try:
                    model.model_validate_json(text)
                except ValidationError as exc:
                    result.invalid += 1
                    result.findings.update({_finding(rtype, e) for e in exc.errors()})
                    if len(result.pointers) < max_pointers:
                        where = pointer(sha, kind or "unit", pos, off, length)
                        result.pointers.append(f"{rtype}/{rid} {where}")
        cur.close()
        result.no_model = model is None
        if result.checked:
            results.append(result)
        log.info("structure %s: %d checked, %d invalid", rtype, result.checked, result.invalid)
    return results

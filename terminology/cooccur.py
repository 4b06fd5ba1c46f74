"""Candidates the data itself offers: a local code sent beside a standard code in the same CodeableConcept.

An HL7 v2 OBX-3 of `GLU^Glucose^99LAB^2345-7^Glucose^LN`, or a FHIR CodeableConcept with a local and a LOINC
coding, says what the sender meant: near-certain candidates for the local code, ranked before any text match.
Codings normalization added are not evidence (they are ehrlift's own) and are skipped.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from terminology import core
from terminology.normalize import _is_added

Key = tuple[str, str]  # (system as sent, code)
Candidate = tuple[str, str, str]  # (standard system, code, display)


def collect(node: Any, into: dict[Key, Counter[Candidate]]) -> None:
    """Add every (local coding, standard coding) pair of every CodeableConcept under node."""
    if isinstance(node, dict):
        coding = node.get("coding")
        if isinstance(coding, list) and len(coding) > 1:
            _pairs([c for c in coding if isinstance(c, dict) and not _is_added(c)], into)
        for value in node.values():
            if isinstance(value, dict | list):
                collect(value, into)
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, dict | list):
                collect(item, into)


def _pairs(codings: list[dict[str, Any]], into: dict[Key, Counter[Candidate]]) -> None:
    reg = core.registry()
    standard: list[Candidate] = []
    others: list[Key] = []
    for c in codings:
        system, code = c.get("system"), c.get("code")
        if not isinstance(system, str) or not isinstance(code, str) or not code:
            continue
        uri = reg.canonical(system)
        info = reg.info(uri) if uri else None
        if uri and info is not None and info.standard and core.malformed_reason(uri, code) is None:
            display = c.get("display")
            standard.append((uri, code, display if isinstance(display, str) else ""))
        else:
            others.append((system, code))
    for key in others:
        for cand in standard:
            into.setdefault(key, Counter())[cand] += 1

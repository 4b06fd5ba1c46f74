"""Code format checks: LOINC mod-10 and SNOMED CT Verhoeff check digits, SCTID partitions, code patterns."""

from __future__ import annotations

import re

# LOINC's published "Mod 10" algorithm is the Luhn scheme over the digits before the hyphen.
_LOINC = re.compile(r"(\d{1,8})-(\d)")
# Answer lists, answers, parts and groups (LL, LA, LP, LG) carry a check digit that is not computed by
# the numeric mod-10 rule, so only their shape is checked.
_LOINC_OTHER = re.compile(r"L[ALPG]\d{1,8}-\d")

# Verhoeff's multiplication table of the dihedral group D5, as published with SNOMED CT's SCTID specification.
_D = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 2, 3, 4, 0, 6, 7, 8, 9, 5),
    (2, 3, 4, 0, 1, 7, 8, 9, 5, 6),
    (3, 4, 0, 1, 2, 8, 9, 5, 6, 7),
    (4, 0, 1, 2, 3, 9, 5, 6, 7, 8),
    (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
    (6, 5, 9, 8, 7, 1, 0, 4, 3, 2),
    (7, 6, 5, 9, 8, 2, 1, 0, 4, 3),
    (8, 7, 6, 5, 9, 3, 2, 1, 0, 4),
    (9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
)
# Verhoeff's position permutations: _P[i] applies the base permutation i times.
_P1 = (1, 5, 7, 6, 2, 8, 3, 0, 9, 4)


def _powers(base: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    rows = [tuple(range(10))]
    for _ in range(7):
        rows.append(tuple(base[x] for x in rows[-1]))
    return tuple(rows)


_P = _powers(_P1)
_SCTID = re.compile(r"[1-9]\d{5,17}")
# Partition identifiers (the two digits before the check digit): concept, short or extension format.
CONCEPT_PARTITIONS = frozenset({"00", "10"})
PARTITION_KINDS = {
    "00": "concept",
    "01": "description",
    "02": "relationship",
    "10": "concept",
    "11": "description",
    "12": "relationship",
}


def loinc_check_digit(digits: str) -> int:
    """The mod-10 check digit LOINC computes for the numeric part of a code."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = ord(ch) - 48
        if i % 2 == 0:  # the rightmost digit and every second one after it are doubled
            n *= 2
            if n > 9:
                n -= 9
        total += n
    return (10 - total % 10) % 10


def loinc_check_ok(code: str) -> bool:
    """True if `code` is NNNNN-C with a correct mod-10 check digit (or an LA/LL/LP/LG code of valid shape)."""
    m = _LOINC.fullmatch(code)
    if m:
        return loinc_check_digit(m.group(1)) == int(m.group(2))
    return bool(_LOINC_OTHER.fullmatch(code))


def verhoeff_ok(digits: str) -> bool:
    """True if the last digit is the Verhoeff check digit of the others."""
    c = 0
    for i, ch in enumerate(reversed(digits)):
        c = _D[c][_P[i % 8][ord(ch) - 48]]
    return c == 0


def sctid_partition(sctid: str) -> str:
    return sctid[-3:-1]


def snomed_verhoeff_ok(sctid: str) -> bool:
    """True if `sctid` is 6-18 digits without a leading zero and its Verhoeff check digit is right."""
    return bool(_SCTID.fullmatch(sctid)) and verhoeff_ok(sctid)


def snomed_concept_id_ok(sctid: str) -> bool:
    """A well-formed SCTID whose partition says it is a concept (not a description or relationship)."""
    return snomed_verhoeff_ok(sctid) and sctid_partition(sctid) in CONCEPT_PARTITIONS


def malformed_reason(system_uri: str | None, code: str | None) -> str | None:
    """Why `code` cannot be a code of `system_uri` judged by its form alone, or None if its form is fine.

    Existence and status are not judged here (the loaded release answers those). Systems the registry does
    not know, or knows without a pattern, only get the empty/whitespace checks.
    """
    if code is None or code == "":
        return "empty code"
    if code != code.strip():
        return "leading or trailing whitespace in code"
    if not system_uri:
        return None
    from terminology.registry import Registry

    info = Registry.default().info(system_uri)
    if info is None:
        return None
    if info.check == "loinc":
        if not (_LOINC.fullmatch(code) or _LOINC_OTHER.fullmatch(code)):
            return "does not match the LOINC code pattern"
        if not loinc_check_ok(code):
            return "LOINC mod-10 check digit mismatch"
        return None
    if info.check == "snomed":
        if not _SCTID.fullmatch(code):
            return "does not match the SCTID pattern (6-18 digits, no leading zero)"
        if not verhoeff_ok(code):
            return "SNOMED CT Verhoeff check digit mismatch"
        part = sctid_partition(code)
        if part not in CONCEPT_PARTITIONS:
            kind = PARTITION_KINDS.get(part, "unknown")
            return f"SCTID partition {part} is a {kind} identifier, not a concept"
        return None
    if info.pattern and not info.compiled_pattern().fullmatch(code):
        return f"does not match the {info.name} code pattern"
    return None

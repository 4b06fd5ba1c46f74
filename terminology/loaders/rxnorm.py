"""RxNorm RRF loader: RXNCONSO (SAB=RXNORM), RXNSAT NDCs, RXNREL links, RXNCUI retirements and remaps."""

from __future__ import annotations

import re
from pathlib import Path

from terminology.loaders import Release, TerminologyLoadError, sha256_files
from terminology.loaders._files import find_one, read_rrf

SYSTEM = "http://www.nlm.nih.gov/research/umls/rxnorm"
NDC = "http://hl7.org/fhir/sid/ndc"
NDC_MAP = "rxnorm:ndc"
# Which atom names the concept: the most specific term types first (RxNorm technical documentation).
TTY_ORDER = ("SCD", "SBD", "GPCK", "BPCK", "SCDG", "SBDG", "SCDF", "SBDF", "SCDC", "SBDC", "MIN", "PIN", "IN")
TTY_ORDER += ("BN", "DF", "DFG", "ET", "SY", "TMSY", "PSN")
# RXNREL relationships kept as properties (the rest are reachable through the release itself).
RELATIONS = {
    "has_ingredient",
    "has_ingredients",
    "has_precise_ingredient",
    "has_tradename",
    "tradename_of",
    "has_dose_form",
    "consists_of",
    "isa",
    "quantified_form_of",
}
_SUPPRESSED = {"O": "obsolete", "Y": "suppressible", "E": "editor-suppressed"}
_DIGITS = re.compile(r"\d{1,8}")
_VERSION_IN_PATH = re.compile(r"RxNorm_full_(\d{8})", re.IGNORECASE)


def read(path: Path) -> Release:
    folder = path if path.is_dir() else path.parent
    conso = find_one(folder, ("RXNCONSO.RRF",), "RXNCONSO.RRF")
    sat = find_one(folder, ("RXNSAT.RRF",), "RXNSAT.RRF", required=False)
    rel = find_one(folder, ("RXNREL.RRF",), "RXNREL.RRF", required=False)
    cui = find_one(folder, ("RXNCUI.RRF",), "RXNCUI.RRF", required=False)
    sab = find_one(folder, ("RXNSAB.RRF",), "RXNSAB.RRF", required=False)
    assert conso is not None
    files = [f for f in (conso, sat, rel, cui, sab) if f]
    release = Release(
        kind="rxnorm", system=SYSTEM, version="", source=str(folder.resolve()), sha256=sha256_files(files)
    )
    rank = {t: i for i, t in enumerate(TTY_ORDER)}
    atoms: dict[str, list[tuple[bool, int, str, str]]] = {}  # rxcui → (suppressed, tty rank, text, flag)
    ttys: set[tuple[str, str, str]] = set()
    terms: set[tuple[str, str, str]] = set()
    for line, f in read_rrf(conso, 18):
        rxcui, sab_name, tty, text, flag = f[0], f[11], f[12], f[14], f[16]
        if sab_name != "RXNORM":
            continue  # other sources' atoms are not RxNorm's to normalise to
        if not _DIGITS.fullmatch(rxcui):
            raise TerminologyLoadError(conso, line, f"RXCUI {rxcui!r} is not numeric")
        atoms.setdefault(rxcui, []).append((flag != "N", rank.get(tty, len(rank)), text, flag))
        ttys.add((rxcui, "TTY", tty))
        terms.add((rxcui, text, tty))
    if not atoms:
        raise TerminologyLoadError(conso, None, "no SAB=RXNORM rows")
    for rxcui in sorted(atoms, key=int):
        suppressed, _rank, text, flag = min(atoms[rxcui])
        if suppressed:  # every atom of the concept is suppressed: RxNorm no longer offers it
            release.concepts.append((rxcui, text, "inactive", _SUPPRESSED.get(flag, flag)))
        else:
            release.concepts.append((rxcui, text, "active", None))
    release.designations = sorted(terms)
    release.properties = sorted(ttys)
    if sat is not None:
        seen: set[tuple[str, str]] = set()
        for _line, f in read_rrf(sat, 13):
            if f[8] == "NDC" and f[9] == "RXNORM" and f[0] in atoms:
                key = (f[10], f[0])
                if key not in seen:
                    seen.add(key)
                    release.maps.append(
                        (NDC, f[10], None, SYSTEM, f[0], None, "equivalent", "NLM RxNorm", None, None)
                    )
        release.map_name = NDC_MAP
    if rel is not None:
        for _line, f in read_rrf(rel, 16):
            if f[10] == "RXNORM" and f[7] in RELATIONS and f[2] == "CUI" and f[6] == "CUI":
                release.properties.append((f[4], f[7], f[0]))  # RXCUI2 <RELA> RXCUI1
    if cui is not None:
        retired: dict[str, set[str]] = {}
        for line, f in read_rrf(cui, 5):
            old, new = f[0], f[4]
            if not (_DIGITS.fullmatch(old) and _DIGITS.fullmatch(new)):
                raise TerminologyLoadError(cui, line, "RXCUI fields must be numeric")
            if old in atoms:
                continue  # still current in this release
            targets = retired.setdefault(old, set())
            if new != old:  # RXNCUI repeats the RXCUI when it was retired without a replacement
                targets.add(new)
        for old in sorted(retired, key=int):
            targets = retired[old]
            release.concepts.append((old, None, "inactive", "remapped" if targets else "retired"))
            release.replacements.extend((old, new, "RXCUI_REMAP") for new in sorted(targets, key=int))
    release.version = _version(folder, sab)
    return release


def _version(folder: Path, sab: Path | None) -> str:
    if sab is not None:
        for _line, f in read_rrf(sab, 25):
            if f[3] == "RXNORM":
                return f[2]  # VSAB, e.g. RXNORM_24AA_250106F
    m = _VERSION_IN_PATH.search(str(folder.resolve()))
    return m.group(1) if m else "unknown"

"""SNOMED CT RF2 Snapshot loader: concepts, descriptions, IS-A relationships, historical associations."""

from __future__ import annotations

import re
from pathlib import Path

from terminology.checks import snomed_verhoeff_ok
from terminology.loaders import Release, TerminologyLoadError, sha256_files
from terminology.loaders._files import find_one, read_csv

SYSTEM = "http://snomed.info/sct"
FSN = "900000000000003001"
SYNONYM = "900000000000013009"
IS_A = "116680003"
PREFERRED = "900000000000548007"
US_ENGLISH = "900000000000509007"
GB_ENGLISH = "900000000000508004"
CONCEPT_INACTIVATION = "900000000000489007"
# Historical association reference sets (SNOMED CT Editorial Guide), by the relation each states.
ASSOCIATIONS = {
    "900000000000526001": "REPLACED_BY",
    "900000000000527005": "SAME_AS",
    "900000000000523009": "POSSIBLY_EQUIVALENT_TO",
    "900000000000530003": "ALTERNATIVE",
    "1186921001": "POSSIBLY_REPLACED_BY",
    "900000000000528000": "WAS_A",
    "900000000000524003": "MOVED_TO",
    "900000000000529008": "SIMILAR_TO",
    "1186924009": "PARTIALLY_EQUIVALENT_TO",
}
INACTIVATION_REASONS = {
    "900000000000482003": "DUPLICATE",
    "900000000000483008": "OUTDATED",
    "900000000000484002": "AMBIGUOUS",
    "900000000000485001": "ERRONEOUS",
    "900000000000486000": "LIMITED",
    "900000000000487009": "MOVED_ELSEWHERE",
    "900000000000492006": "PENDING_MOVE",
    "1186917008": "CLASSIFICATION_DERIVED_COMPONENT",
    "1186919006": "MEANING_OF_COMPONENT_UNKNOWN",
    "723277005": "NONCONFORMANCE_TO_EDITORIAL_POLICY",
}
_TAG = re.compile(r"\(([^()]+)\)\s*$")
_RELEASE = re.compile(r"_([A-Za-z0-9]+)_(\d{8})\.txt$")


def read(path: Path) -> Release:
    folder = path if path.is_dir() else path.parent
    concepts_file = find_one(folder, ("sct2_Concept_Snapshot*.txt",), "RF2 concept snapshot")
    desc_file = find_one(folder, ("sct2_Description_Snapshot*.txt",), "RF2 description snapshot")
    rel_file = find_one(
        folder, ("sct2_Relationship_Snapshot*.txt",), "RF2 relationship snapshot", required=False
    )
    assoc_file = find_one(
        folder,
        ("der2_cRefset_AssociationSnapshot*.txt", "der2_cRefset_AssociationReferenceSnapshot*.txt"),
        "historical association refset",
        required=False,
    )
    attr_file = find_one(
        folder, ("der2_cRefset_AttributeValueSnapshot*.txt",), "attribute value", required=False
    )
    lang_files = sorted(p for p in folder.rglob("der2_cRefset_LanguageSnapshot*.txt") if p.is_file())
    assert concepts_file is not None and desc_file is not None
    files = [f for f in (concepts_file, desc_file, rel_file, assoc_file, attr_file, *lang_files) if f]
    m = _RELEASE.search(concepts_file.name)
    version = f"{m.group(1)} {m.group(2)}" if m else "unknown"
    release = Release(
        kind="snomed",
        system=SYSTEM,
        version=version,
        source=str(folder.resolve()),
        sha256=sha256_files(files),
    )

    active: dict[str, tuple[str, bool]] = {}  # id → (effectiveTime, active)
    for line, row in _rows(concepts_file, ("id", "effectiveTime", "active")):
        cid = _sctid(concepts_file, line, row["id"])
        prior = active.get(cid)
        if prior is None or row["effectiveTime"] >= prior[0]:
            active[cid] = (row["effectiveTime"], row["active"] == "1")
    if not active:
        raise TerminologyLoadError(concepts_file, None, "no concepts in the file")

    # Preferred terms: the en-US language refset, else en-GB; else the FSN without its semantic tag.
    preferred: dict[str, set[str]] = {US_ENGLISH: set(), GB_ENGLISH: set()}
    for lang in lang_files:
        for _line, row in _rows(lang, ("active", "refsetId", "referencedComponentId", "acceptabilityId")):
            if row["active"] == "1" and row["acceptabilityId"] == PREFERRED and row["refsetId"] in preferred:
                preferred[row["refsetId"]].add(row["referencedComponentId"])
    fsn: dict[str, str] = {}
    pt_us: dict[str, str] = {}
    pt_gb: dict[str, str] = {}
    designations: list[tuple] = []
    orphans = 0
    for _line, row in _rows(desc_file, ("id", "active", "conceptId", "typeId", "term")):
        if row["active"] != "1":
            continue
        cid, did, term = row["conceptId"], row["id"], row["term"]
        if cid not in active:
            # An extension can describe concepts of the edition it extends: keep count, load the rest.
            orphans += 1
            continue
        if row["typeId"] == FSN:
            fsn[cid] = term
            designations.append((cid, term, "fsn"))
        else:
            if did in preferred[US_ENGLISH]:
                pt_us[cid] = term
            if did in preferred[GB_ENGLISH]:
                pt_gb[cid] = term
            designations.append((cid, term, "synonym"))
    for cid in sorted(active):
        _effective, is_active = active[cid]
        name = fsn.get(cid)
        display = pt_us.get(cid) or pt_gb.get(cid) or (_TAG.sub("", name).strip() if name else None)
        release.concepts.append((cid, display, "active" if is_active else "inactive", None))
        if name and (tag := _TAG.search(name)):
            release.properties.append((cid, "semantic_tag", tag.group(1)))
    release.designations = designations
    if orphans:
        release.skipped["descriptions_of_concepts_not_in_release"] = orphans

    if rel_file is not None:
        for _line, row in _rows(rel_file, ("active", "sourceId", "destinationId", "typeId")):
            if row["active"] == "1" and row["typeId"] == IS_A:
                if row["sourceId"] in active:
                    release.properties.append((row["sourceId"], "is_a", row["destinationId"]))
                else:
                    release.skipped["is_a_of_concepts_not_in_release"] = (
                        release.skipped.get("is_a_of_concepts_not_in_release", 0) + 1
                    )
    if attr_file is not None:
        reasons: dict[str, str] = {}
        for _line, row in _rows(attr_file, ("active", "refsetId", "referencedComponentId", "valueId")):
            if row["active"] == "1" and row["refsetId"] == CONCEPT_INACTIVATION:
                reasons[row["referencedComponentId"]] = INACTIVATION_REASONS.get(
                    row["valueId"], row["valueId"]
                )
        release.concepts = [
            (c, d, s, reasons.get(c) if s == "inactive" else None) for c, d, s, _ in release.concepts
        ]
    if assoc_file is not None:
        for line, row in _rows(
            assoc_file, ("active", "refsetId", "referencedComponentId", "targetComponentId")
        ):
            relation = ASSOCIATIONS.get(row["refsetId"])
            source = row["referencedComponentId"]
            if row["active"] != "1" or relation is None or source not in active:
                continue  # REFERS TO (descriptions) and other refsets are not concept moves
            target = _sctid(assoc_file, line, row["targetComponentId"])
            release.replacements.append((source, target, relation))
    return release


def _rows(path: Path, required: tuple[str, ...]):
    return read_csv(path, required, delimiter="\t")


def _sctid(path: Path, line: int, value: str) -> str:
    if not snomed_verhoeff_ok(value):
        raise TerminologyLoadError(path, line, f"{value!r} is not a valid SCTID (check digit or format)")
    return value

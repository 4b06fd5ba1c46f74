"""SNOMED CT RF2 Snapshot loader: concepts, descriptions, IS-A relationships, historical associations."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb

from terminology.checks import snomed_verhoeff_ok
from terminology.loaders import Release, TerminologyLoadError, sha256_files
from terminology.loaders._files import duck_read, find_one

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
_RELEASE = re.compile(r"_([A-Za-z0-9]+)_(\d{8})\.txt$")
_TAG_SQL = r"\(([^()]+)\)\s*$"


def read(path: Path) -> Release:
    folder = path if path.is_dir() else path.parent
    concepts_file = find_one(folder, ("sct2_Concept_Snapshot*.txt",), "RF2 concept snapshot")
    # One description file per language (an edition can carry several, e.g. -en and -es).
    desc_files = _all(folder, "sct2_Description_Snapshot*.txt")
    if not desc_files:
        raise TerminologyLoadError(
            folder, None, "no RF2 description snapshot file (sct2_Description_Snapshot*.txt)"
        )
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
    lang_files = _all(folder, "der2_cRefset_LanguageSnapshot*.txt")
    assert concepts_file is not None
    files = [f for f in (concepts_file, *desc_files, rel_file, assoc_file, attr_file, *lang_files) if f]
    m = _RELEASE.search(concepts_file.name)
    version = f"{m.group(1)} {m.group(2)}" if m else "unknown"
    release = Release(
        kind="snomed",
        system=SYSTEM,
        version=version,
        source=str(folder.resolve()),
        sha256=sha256_files(files),
    )
    # Release files run to millions of rows: DuckDB parses and joins them, Python checks the identifiers.
    db = duckdb.connect()
    try:
        _parse(db, release, concepts_file, desc_files, rel_file, assoc_file, attr_file, lang_files)
    finally:
        db.close()
    return release


def _all(folder: Path, pattern: str) -> list[Path]:
    return sorted(p for p in folder.rglob(pattern) if p.is_file())


def _parse(db, release, concepts_file, desc_files, rel_file, assoc_file, attr_file, lang_files) -> None:
    refset = ("id", "effectiveTime", "active", "moduleId", "refsetId", "referencedComponentId")
    duck_read(db, "concept", [concepts_file], ("id", "effectiveTime", "active"))
    _check_ids(
        db, concepts_file, "SELECT id, line FROM (SELECT id, row_number() OVER () + 1 AS line FROM concept)"
    )
    db.execute(
        "CREATE TABLE c AS SELECT id, arg_max(active, effectiveTime) = '1' AS active FROM concept GROUP BY id"
    )
    if not db.execute("SELECT count(*) FROM c").fetchone()[0]:
        raise TerminologyLoadError(concepts_file, None, "no concepts in the file")
    duck_read(db, "descr", desc_files, ("id", "active", "conceptId", "languageCode", "typeId", "term"))
    if lang_files:
        duck_read(db, "lang", lang_files, (*refset, "acceptabilityId"))
    else:
        db.execute(
            "CREATE TABLE lang (active VARCHAR, refsetId VARCHAR, referencedComponentId VARCHAR, "
            "acceptabilityId VARCHAR)"
        )
    for name, file, extra in (
        ("rel", rel_file, ("sourceId", "destinationId", "typeId")),
        ("assoc", assoc_file, ("targetComponentId",)),
        ("attr", attr_file, ("valueId",)),
    ):
        cols = ("active", *extra) if name == "rel" else (*refset, *extra)
        if file is not None:
            duck_read(db, name, [file], cols)
        else:
            db.execute(f"CREATE TABLE {name} ({', '.join(f'{c} VARCHAR' for c in cols)})")
    if assoc_file is not None:
        _check_ids(
            db,
            assoc_file,
            "SELECT targetComponentId, line FROM (SELECT *, row_number() OVER () + 1 AS line FROM assoc) "
            f"WHERE active = '1' AND refsetId IN ({_in(ASSOCIATIONS)})",
        )
    db.execute(
        f"""
        CREATE TABLE d AS SELECT * FROM descr WHERE active = '1' AND conceptId IN (SELECT id FROM c);
        CREATE TABLE fsn AS SELECT conceptId, arg_max(term, languageCode = 'en') AS term
            FROM d WHERE typeId = '{FSN}' GROUP BY conceptId;
        CREATE TABLE pt AS SELECT d.conceptId,
                max(d.term) FILTER (WHERE l.refsetId = '{US_ENGLISH}') AS us,
                max(d.term) FILTER (WHERE l.refsetId = '{GB_ENGLISH}') AS gb
            FROM d JOIN lang l ON l.referencedComponentId = d.id
            WHERE l.active = '1' AND l.acceptabilityId = '{PREFERRED}' AND d.typeId <> '{FSN}'
            GROUP BY d.conceptId;
        CREATE TABLE reason AS SELECT referencedComponentId AS id, any_value(valueId) AS value_id
            FROM attr WHERE active = '1' AND refsetId = '{CONCEPT_INACTIVATION}' GROUP BY 1;
        CREATE TABLE reason_name (value_id VARCHAR, name VARCHAR);
        CREATE TABLE relation_name (refset VARCHAR, relation VARCHAR);
        """
    )
    db.executemany("INSERT INTO reason_name VALUES (?, ?)", list(INACTIVATION_REASONS.items()))
    db.executemany("INSERT INTO relation_name VALUES (?, ?)", list(ASSOCIATIONS.items()))
    release.concepts = db.sql(
        f"""
        SELECT c.id AS code,
               coalesce(pt.us, pt.gb, nullif(trim(regexp_replace(fsn.term, '{_TAG_SQL}', '')), ''))
                   AS display,
               CASE WHEN c.active THEN 'active' ELSE 'inactive' END AS status,
               CASE WHEN NOT c.active THEN coalesce(rn.name, reason.value_id) END AS status_detail
        FROM c LEFT JOIN fsn ON fsn.conceptId = c.id LEFT JOIN pt ON pt.conceptId = c.id
        LEFT JOIN reason ON reason.id = c.id LEFT JOIN reason_name rn ON rn.value_id = reason.value_id
        ORDER BY c.id
        """
    ).to_arrow_table()
    release.designations = db.sql(
        f"SELECT conceptId AS code, term, CASE WHEN typeId = '{FSN}' THEN 'fsn' ELSE 'synonym' END AS use "
        "FROM d ORDER BY conceptId, use, term"
    ).to_arrow_table()
    release.properties = db.sql(
        f"""
        SELECT conceptId AS code, 'semantic_tag' AS property, regexp_extract(term, '{_TAG_SQL}', 1) AS value
        FROM fsn WHERE regexp_matches(term, '{_TAG_SQL}')
        UNION ALL
        SELECT sourceId, 'is_a', destinationId FROM rel
        WHERE active = '1' AND typeId = '{IS_A}' AND sourceId IN (SELECT id FROM c)
        ORDER BY ALL
        """
    ).to_arrow_table()
    release.replacements = db.sql(
        """
        SELECT a.referencedComponentId AS code, a.targetComponentId AS target_code, r.relation
        FROM assoc a JOIN relation_name r ON r.refset = a.refsetId
        WHERE a.active = '1' AND a.referencedComponentId IN (SELECT id FROM c)
        ORDER BY ALL
        """
    ).to_arrow_table()
    # An extension can describe or relate concepts of the edition it extends: counted, not loaded.
    orphans = db.execute(
        "SELECT count(*) FROM descr WHERE active = '1' AND conceptId NOT IN (SELECT id FROM c)"
    ).fetchone()[0]
    orphan_isa = db.execute(
        f"SELECT count(*) FROM rel WHERE active = '1' AND typeId = '{IS_A}' "
        "AND sourceId NOT IN (SELECT id FROM c)"
    ).fetchone()[0]
    if orphans:
        release.skipped["descriptions_of_concepts_not_in_release"] = orphans
    if orphan_isa:
        release.skipped["is_a_of_concepts_not_in_release"] = orphan_isa


def _in(values) -> str:
    return ", ".join(f"'{v}'" for v in values)


def _check_ids(db, path: Path, sql: str) -> None:
    for value, line in db.execute(sql).fetchall():
        if not snomed_verhoeff_ok(value or ""):
            raise TerminologyLoadError(path, line, f"{value!r} is not a valid SCTID (check digit or format)")

"""Release loaders: official layouts, status changes between releases, idempotence, corrupt files."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pytest

from pipelines.common.errors import ExitCode, InputNotFoundError
from pipelines.common.warehouse import apply_contract
from terminology.loaders import StatusChange, TerminologyLoadError, load_release, read_release
from terminology.store import releases

FIX = Path(__file__).parent / "fixtures" / "terminology"
LOINC = "http://loinc.org"
SCT = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SNOMED_1 = FIX / "snomed" / "SnomedCT_FictitiousRF2_PRODUCTION_20250101T120000Z"
SNOMED_2 = FIX / "snomed" / "SnomedCT_FictitiousRF2_PRODUCTION_20250701T120000Z"
RXNORM_1 = FIX / "rxnorm" / "RxNorm_full_01062025"
RXNORM_2 = FIX / "rxnorm" / "RxNorm_full_07072025"


@pytest.fixture
def con():
    c = duckdb.connect()
    apply_contract(c)
    yield c
    c.close()


def rows(con, sql: str, *params) -> list[tuple]:
    return con.execute(sql, list(params)).fetchall()


def test_loinc_full_then_core_release(con) -> None:
    first = load_release(con, "loinc", FIX / "loinc" / "Loinc_9.01")
    assert (first.system, first.version, first.previous_version, first.changed) == (LOINC, "9.01", None, [])
    assert first.counts["concepts"] == 5 and first.counts["replacements"] == 1
    assert rows(con, "SELECT code, status, status_detail FROM terminology.concepts ORDER BY code") == [
        ("99901-1", "active", "ACTIVE"),
        ("99902-9", "active", "ACTIVE"),
        ("99903-7", "active", "DISCOURAGED"),
        ("99904-5", "active", "TRIAL"),
        ("99905-2", "inactive", "DEPRECATED"),
    ]
    assert rows(
        con, "SELECT value FROM terminology.properties WHERE code = '99901-1' AND property = 'SCALE_TYP'"
    ) == [("Qn",)]
    assert ("99901-1", "Fictit SerPl-mCnc", "short") in rows(
        con, "SELECT code, term, use FROM terminology.designations"
    )
    second = load_release(
        con, "loinc", FIX / "loinc" / "Loinc_9.02" / "LoincTableCore" / "LoincTableCore.csv"
    )
    assert (second.version, second.previous_version) == ("9.02", "9.01")
    # DISCOURAGED → ACTIVE is no change of status; a deprecation with a new MAP_TO is.
    assert second.changed == [StatusChange(LOINC, "99902-9", "active", "inactive", "99906-0")]
    assert rows(
        con, "SELECT code, target_code, relation, version FROM terminology.replacements ORDER BY 1"
    ) == [
        ("99902-9", "99906-0", "MAP_TO", "9.02"),
        ("99905-2", "99901-1", "MAP_TO", "9.02"),
    ]
    assert [(r["version"], r["active"]) for r in releases(con)] == [("9.01", False), ("9.02", True)]


def test_reloading_the_same_release_does_nothing(con) -> None:
    load_release(con, "loinc", FIX / "loinc" / "Loinc_9.01")
    before = rows(con, "SELECT * FROM terminology.concepts ORDER BY code")
    again = load_release(con, "loinc", FIX / "loinc" / "Loinc_9.01" / "LoincTable")
    assert again.already_loaded and again.changed == []
    assert rows(con, "SELECT * FROM terminology.concepts ORDER BY code") == before
    assert rows(con, "SELECT count(*) FROM terminology.releases") == [(1,)]


def test_snomed_rf2_snapshot(con) -> None:
    first = load_release(con, "snomed", SNOMED_1)
    assert (first.version, first.counts["concepts"], first.changed) == ("INT 20250101", 7, [])
    assert rows(con, "SELECT code, display, status, status_detail FROM terminology.concepts ORDER BY code")[
        2:7
    ] == [
        ("990003009", "Dragon pox", "active", None),
        ("990004003", "Spattergroit", "active", None),
        ("990005002", "Vanishing sickness", "active", None),
        ("990006001", "Dragon pox old style", "inactive", "OUTDATED"),
        ("990007005", "Spattergroit duplicate", "active", None),
    ]
    assert rows(
        con, "SELECT value FROM terminology.properties WHERE code = '990003009' ORDER BY property"
    ) == [
        ("990002004",),  # is_a Imaginary finding
        ("disorder",),  # semantic_tag
    ]
    assert rows(con, "SELECT code, target_code, relation FROM terminology.replacements") == [
        ("990006001", "990003009", "REPLACED_BY")
    ]
    second = load_release(con, "snomed", SNOMED_2 / "Snapshot")
    assert second.changed == [StatusChange(SCT, "990007005", "active", "inactive", "990004003")]
    assert rows(con, "SELECT status_detail FROM terminology.concepts WHERE code = '990007005'") == [
        ("DUPLICATE",)
    ]
    assert rows(con, "SELECT relation FROM terminology.replacements WHERE code = '990007005'") == [
        ("SAME_AS",)
    ]


def test_rxnorm_rrf(con) -> None:
    first = load_release(con, "rxnorm", RXNORM_1)
    assert first.version == "RXNORM_25AA"
    assert rows(
        con, "SELECT code, display, status, status_detail FROM terminology.concepts ORDER BY code"
    ) == [
        ("9900001", "fictiprofen", "active", None),
        ("9900002", "fictiprofen 200 MG Oral Tablet", "active", None),  # the SCD name, not the synonym
        ("9900003", "fictiprofen 400 MG Oral Tablet", "active", None),
        ("9900004", "Fictiflam", "active", None),
        ("9900008", None, "inactive", "retired"),
        ("9900009", None, "inactive", "remapped"),
    ]
    assert rows(con, "SELECT source_code, target_code, map FROM terminology.maps ORDER BY 1") == [
        ("00000000001", "9900002", "rxnorm:ndc"),
        ("00000000002", "9900003", "rxnorm:ndc"),
    ]
    # SAB=MTHSPL atoms are not RxNorm's own names.
    assert rows(
        con, "SELECT count(*) FROM terminology.designations WHERE term = 'FICTIPROFEN 200MG TAB'"
    ) == [(0,)]
    second = load_release(con, "rxnorm", RXNORM_2 / "rrf")
    assert second.changed == [
        StatusChange(RXNORM, "9900002", "active", "inactive", "9900005"),
        StatusChange(RXNORM, "9900004", "active", "inactive", None),
    ]
    assert rows(con, "SELECT status_detail FROM terminology.concepts WHERE code = '9900004'") == [
        ("obsolete",)
    ]
    assert rows(con, "SELECT source_code, target_code FROM terminology.maps ORDER BY 1") == [
        ("00000000001", "9900005"),
        ("00000000002", "9900003"),
    ]
    assert rows(con, "SELECT code, property, value FROM terminology.properties WHERE property <> 'TTY'") == [
        ("9900005", "has_ingredient", "9900001")
    ]


def test_cvx(con) -> None:
    report = load_release(con, "cvx", FIX / "cvx" / "cvx.txt")
    assert (report.system, report.version) == ("http://hl7.org/fhir/sid/cvx", "2012-06-14")
    assert rows(con, "SELECT code, status, status_detail FROM terminology.concepts ORDER BY code") == [
        ("01", "inactive", "Inactive"),
        ("03", "active", "Active"),
        ("08", "active", "Active"),
        ("21", "active", "Active"),
        ("998", "inactive", "Inactive"),
    ]


def test_fhir_codesystem_and_conceptmap(con) -> None:
    cs = load_release(con, "codesystem", FIX / "fhir" / "CodeSystem-lab-local.json")
    assert (cs.system, cs.version) == ("http://hospital.example/CodeSystem/lab-local", "2025-03")
    assert rows(con, "SELECT code, display, status FROM terminology.concepts ORDER BY code") == [
        ("CHEM", "Chemistry panel", "active"),
        ("GLU", "Glucose, serum", "active"),
        ("K", "Potassium", "inactive"),
        ("NA", "Sodium", "active"),
    ]
    assert ("NA", "parent", "CHEM") in rows(con, "SELECT code, property, value FROM terminology.properties")
    cm = load_release(con, "conceptmap", FIX / "fhir" / "ConceptMap-lab-local-to-loinc.json")
    assert cm.counts["maps"] == 2
    assert rows(
        con,
        "SELECT map, map_version, source_code, target_system, target_code, equivalence, author "
        "FROM terminology.maps",
    ) == [
        (
            "http://hospital.example/ConceptMap/lab-local-to-loinc",
            "3",
            "GLU",
            LOINC,
            "99901-1",
            "equivalent",
            "Example Hospital lab",
        ),
        (
            "http://hospital.example/ConceptMap/lab-local-to-loinc",
            "3",
            "NA",
            LOINC,
            "99902-9",
            "wider",
            "Example Hospital lab",
        ),
    ]
    # The map's own rows are the release: concepts of the lab system are untouched.
    assert rows(con, "SELECT count(*) FROM terminology.concepts") == [(4,)]


# -- bad input: named file and line, nothing loaded ------------------------------------------------------
def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copytree(src, dst) if src.is_dir() else shutil.copy(src, dst)
    return dst


def _truncate(path: Path, *, line_break: bytes = b"\r\n") -> None:
    """Cut inside the last row; by default the cut row still ends with a line break."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 25] + line_break)


def test_truncated_loinc_names_file_and_line(con, tmp_path: Path) -> None:
    load_release(con, "loinc", FIX / "loinc" / "Loinc_9.01")
    before = rows(con, "SELECT * FROM terminology.concepts ORDER BY code")
    release = _copy(FIX / "loinc" / "Loinc_9.02", tmp_path)
    _truncate(release / "LoincTableCore" / "LoincTableCore.csv")
    with pytest.raises(
        TerminologyLoadError, match=r"LoincTableCore\.csv line 7: .* fields where the header has 15"
    ):
        load_release(con, "loinc", release)
    assert rows(con, "SELECT * FROM terminology.concepts ORDER BY code") == before
    assert [r["version"] for r in releases(con) if r["active"]] == ["9.01"]


def test_loinc_cut_inside_its_last_quoted_field(con, tmp_path: Path) -> None:
    release = _copy(FIX / "loinc" / "Loinc_9.01", tmp_path)
    table = release / "LoincTable" / "Loinc.csv"
    data = table.read_bytes()
    table.write_bytes(data[: data.rindex(b'"Fictitium"') + 4] + b"\r\n")  # inside DisplayName's quotes
    with pytest.raises(
        TerminologyLoadError, match=r"Loinc\.csv line 6: not valid CSV: unexpected end of data"
    ):
        load_release(con, "loinc", release)
    # Cut after a delimiter, the row still has all its fields: the missing line break gives it away.
    table.write_bytes(data[: data.rindex(b'"Fictitium"')])
    with pytest.raises(TerminologyLoadError, match=r"Loinc\.csv line 6: the file ends inside this line"):
        load_release(con, "loinc", release)


@pytest.mark.parametrize(
    ("kind", "release", "member", "message"),
    [
        (
            "snomed",
            SNOMED_1,
            "sct2_Relationship_Snapshot_INT_20250101.txt",
            r"Relationship_Snapshot_INT_20250101\.txt line 5",
        ),
        ("rxnorm", RXNORM_1, "RXNSAT.RRF", r"RXNSAT\.RRF line 3"),
    ],
)
def test_file_without_its_final_line_break(con, tmp_path: Path, kind, release, member, message) -> None:
    copy = _copy(release, tmp_path)
    _truncate(next(copy.rglob(member)), line_break=b"")
    with pytest.raises(TerminologyLoadError, match=message + ": the file ends inside this line"):
        load_release(con, kind, copy)
    assert rows(con, "SELECT count(*) FROM terminology.releases") == [(0,)]


def test_truncated_snomed_file(con, tmp_path: Path) -> None:
    release = _copy(SNOMED_1, tmp_path)
    desc = next(release.rglob("sct2_Description_Snapshot*.txt"))
    _truncate(desc)
    with pytest.raises(
        TerminologyLoadError, match=r"sct2_Description_Snapshot-en_INT_20250101\.txt line 22: "
    ):
        load_release(con, "snomed", release)
    assert rows(con, "SELECT count(*) FROM terminology.releases") == [(0,)]


def test_bad_sctid_in_association_refset(con, tmp_path: Path) -> None:
    release = _copy(SNOMED_1, tmp_path)
    assoc = next(release.rglob("der2_cRefset_AssociationSnapshot*.txt"))
    assoc.write_text(assoc.read_text().replace("990003009", "990003008"))
    with pytest.raises(
        TerminologyLoadError, match=r"AssociationSnapshot_INT_20250101\.txt line 2: '990003008'"
    ):
        load_release(con, "snomed", release)


def test_truncated_rrf(con, tmp_path: Path) -> None:
    release = _copy(RXNORM_1, tmp_path)
    _truncate(release / "rrf" / "RXNCONSO.RRF")
    with pytest.raises(
        TerminologyLoadError, match=r"RXNCONSO\.RRF line 6: \d+ fields where RXNCONSO\.RRF has 18"
    ):
        load_release(con, "rxnorm", release)


def test_truncated_json(con, tmp_path: Path) -> None:
    path = _copy(FIX / "fhir" / "ConceptMap-lab-local-to-loinc.json", tmp_path)
    _truncate(path)
    with pytest.raises(
        TerminologyLoadError, match=r"ConceptMap-lab-local-to-loinc\.json line \d+: not valid JSON"
    ):
        load_release(con, "conceptmap", path)


@pytest.mark.parametrize(
    ("kind", "text", "message"),
    [
        ("cvx", "03|MMR|measles||Sometimes|3|False|2010/05/28\n", r"cvx\.txt line 1: unknown vaccine status"),
        (
            "cvx",
            "03|MMR|measles||Active|3|False|2010/05/28\nA3|x|y||Active\n",
            r"cvx\.txt line 2: CVX code 'A3'",
        ),
        ("cvx", "03|MMR\n", r"cvx\.txt line 1: 2 fields"),
    ],
)
def test_corrupt_cvx(con, tmp_path: Path, kind: str, text: str, message: str) -> None:
    path = tmp_path / "cvx.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(TerminologyLoadError, match=message) as err:
        load_release(con, kind, path)
    assert err.value.exit_code == ExitCode.TERMINOLOGY


def test_loinc_with_a_bad_check_digit_or_status(tmp_path: Path) -> None:
    src = (FIX / "loinc" / "Loinc_9.01" / "LoincTable" / "Loinc.csv").read_text(encoding="utf-8")
    bad = tmp_path / "Loinc.csv"
    bad.write_text(src.replace('"99903-7"', '"99903-8"'), encoding="utf-8")
    with pytest.raises(TerminologyLoadError, match=r"Loinc\.csv line 4: LOINC_NUM '99903-8' is not a valid"):
        read_release("loinc", bad)
    bad.write_text(src.replace('"TRIAL"', '"MAYBE"'), encoding="utf-8")
    with pytest.raises(TerminologyLoadError, match=r"Loinc\.csv line 5: unknown STATUS 'MAYBE'"):
        read_release("loinc", bad)


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError):
        read_release("loinc", tmp_path / "nowhere")
    with pytest.raises(TerminologyLoadError, match="no LOINC table file"):
        read_release("loinc", tmp_path)
    with pytest.raises(TerminologyLoadError, match=r"no RXNCONSO\.RRF file"):
        read_release("rxnorm", tmp_path)
    wrong = tmp_path / "cs.json"
    wrong.write_text('{"resourceType": "ValueSet"}', encoding="utf-8")
    with pytest.raises(TerminologyLoadError, match="expected a CodeSystem resource, found 'ValueSet'"):
        read_release("codesystem", wrong)


@pytest.mark.corpus
def test_real_rf2_samples_from_the_corpus(corpus: Path) -> None:
    snowstorm = corpus / "terminology/snowstorm/src/main/resources/dummy-snomed-content/RF2Release/Snapshot"
    hermes = corpus / "terminology/hermes/test/resources/example-snapshot"
    if not (snowstorm.is_dir() and hermes.is_dir()):
        pytest.skip("RF2 samples not in this corpus")
    release = read_release("snomed", snowstorm)
    assert (release.version, len(release.concepts)) == ("INT 20180731", 103)
    assert [tuple(r.values()) for r in release.replacements.to_pylist()] == [
        ("118225008", "118222006", "POSSIBLY_EQUIVALENT_TO"),
        ("118225008", "250171008", "POSSIBLY_EQUIVALENT_TO"),
        ("118225008", "413350009", "POSSIBLY_EQUIVALENT_TO"),
        ("246188002", "404684003", "REPLACED_BY"),
    ]
    assert release.concepts.column("status").to_pylist().count("inactive") == 2
    # hermes' sample describes concepts its concept file does not hold: they are counted, not loaded.
    sample = read_release("snomed", hermes)
    assert sample.skipped["descriptions_of_concepts_not_in_release"] == 4
    assert sample.concepts.column("code").to_pylist() == ["100005", "101009", "102002", "103007"]

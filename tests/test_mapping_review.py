"""The review round trip: suggest, edit the file, import, re-run: rows become suggestion-approved."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from openpyxl import load_workbook

from pipelines.cli import main
from pipelines.common.errors import ConfigError
from pipelines.common.warehouse import open_warehouse
from pipelines.run import run_pipeline
from terminology.review import import_review, read_review
from tests.conftest import resource, write_ndjson
from tests.terminology_builders import LOINC, fixture_terminology_only, load_terms  # noqa: F401

LAB = "http://legacy-lab.example.org/tests"
HEADER = [
    "source_system", "source_code", "source_display", "occurrences", "rank", "target_system", "target_code",
    "target_display", "score", "basis", "note", "decision", "reviewer", "review_date",
]  # fmt: skip
CONCEPTS = [
    (LOINC, "2345-7", "Glucose [Mass/volume] in Serum or Plasma", "active"),
    (LOINC, "2339-0", "Glucose [Mass/volume] in Blood", "active"),
    (LOINC, "5792-7", "Glucose [Mass/volume] in Urine", "active"),
    (LOINC, "2951-2", "Sodium [Moles/volume] in Serum or Plasma", "active"),
    (LOINC, "2947-0", "Sodium [Moles/volume] in Blood", "active"),
]
PROPS = [
    (LOINC, code, prop, value)
    for code, system, kind, unit in (
        ("2345-7", "Ser/Plas", "MCnc", "mg/dL"),
        ("2339-0", "Bld", "MCnc", "mg/dL"),
        ("5792-7", "Urine", "MCnc", "mg/dL"),
        ("2951-2", "Ser/Plas", "SCnc", "mmol/L"),
        ("2947-0", "Bld", "SCnc", "mmol/L"),
    )
    for prop, value in (
        ("SYSTEM", system),
        ("PROPERTY", kind),
        ("SCALE_TYP", "Qn"),
        ("EXAMPLE_UCUM_UNITS", unit),
    )
]

pytestmark = pytest.mark.usefixtures("fixture_terminology_only")


def _obs(rid: str, code: str, display: str, value: float, unit: str) -> dict:
    return resource(
        "Observation",
        rid,
        status="final",
        code={"coding": [{"system": LAB, "code": code, "display": display}]},
        valueQuantity={"value": value, "unit": unit},
    )


@pytest.fixture
def reviewed(tmp_path: Path, make_config, monkeypatch):
    monkeypatch.setenv("EHRLIFT_CROSSWALKS", str(tmp_path / "crosswalks"))
    first = make_config(
        write_ndjson(
            tmp_path / "src1" / "Observation.ndjson",
            _obs("g1", "GLU", "GLUCOSE SER", 98, "mg/dL"),
            _obs("g2", "GLU", "GLUCOSE SER", 101, "mg/dL"),
            _obs("g3", "GLU", "GLUCOSE SER", 87, "mg/dL"),
            _obs("n1", "NA", "SODIUM", 140, "mmol/L"),
            _obs("n2", "NA", "SODIUM", 138, "mmol/L"),
            _obs("u1", "UGLU", "GLUCOSE UR", 0, "mg/dL"),
        ),
        source_system="lab",
    )
    with open_warehouse(first.warehouse) as con:
        load_terms(con, CONCEPTS, versions={LOINC: "2.78"}, properties=PROPS)
    run_pipeline(first)
    return first


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_suggest_edit_import_rerun(reviewed, tmp_path, make_config, warehouse, capsys):
    review = tmp_path / "review.csv"
    assert main(["mappings", "suggest", "--warehouse", str(reviewed.warehouse), "--out", str(review),
                 "--top", "3"]) == 0  # fmt: skip
    with review.open(encoding="utf-8") as f:
        assert next(csv.reader(f)) == HEADER
    rows = _rows(review)
    # Ordered by occurrences; the specimen and units put the right LOINC code first.
    assert [
        (r["source_code"], r["occurrences"], r["rank"], r["target_code"]) for r in rows if r["rank"] == "1"
    ] == [
        ("GLU", "3", "1", "2345-7"),
        ("NA", "2", "1", "2951-2"),
        ("UGLU", "1", "1", "5792-7"),
    ]
    # Candidates sharing too little text with the display are left out (no sodium for glucose and back).
    assert [(r["source_code"], r["rank"], r["target_code"]) for r in rows] == [
        ("GLU", "1", "2345-7"),
        ("GLU", "2", "5792-7"),
        ("GLU", "3", "2339-0"),
        ("NA", "1", "2951-2"),
        ("NA", "2", "2947-0"),
        ("UGLU", "1", "5792-7"),
        ("UGLU", "2", "2339-0"),
    ]
    assert all(0 < float(r["score"]) <= 1 for r in rows)

    for r in rows:
        if r["rank"] == "1" and r["source_code"] in ("GLU", "NA"):
            r.update(decision="approve", reviewer="j.reviewer", review_date="2026-11-20")
    with review.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HEADER, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    capsys.readouterr()
    assert main(["mappings", "import", str(review), "--warehouse", str(reviewed.warehouse)]) == 0
    written = sorted((tmp_path / "crosswalks").glob("reviewed-*.csv"))
    assert len(written) == 1 and "2 approved mapping(s)" in capsys.readouterr().out
    assert [(r["source_code"], r["target_code"], r["author"], r["reviewer"]) for r in _rows(written[0])] == [
        ("GLU", "2345-7", "ehrlift suggest", "j.reviewer"),
        ("NA", "2951-2", "ehrlift suggest", "j.reviewer"),
    ]

    # The next run brings one new glucose result; the earlier ones are re-normalized too.
    second = make_config(
        write_ndjson(tmp_path / "src2" / "Observation.ndjson", _obs("g4", "GLU", "GLUCOSE SER", 90, "mg/dL")),
        source_system="lab",
    )
    run_pipeline(second)
    con = warehouse()
    log = con.execute(
        "SELECT source_code, method, target_code, occurrences, crosswalk_version FROM ops.mapping_log "
        "WHERE run_id = ? AND kind = 'coding' ORDER BY ALL",
        [second.run_id],
    ).fetchall()
    version = written[0].stem.removeprefix("reviewed-")
    assert log == [
        ("GLU", "suggestion-approved", "2345-7", 4, f"crosswalk:reviewed-{version}@{version}"),
        ("NA", "suggestion-approved", "2951-2", 2, f"crosswalk:reviewed-{version}@{version}"),
    ]
    docs = dict(con.execute('SELECT id, resource::VARCHAR FROM fhir."Observation"').fetchall())
    with_loinc = [d for d in docs.values() if '"valueCode":"suggestion-approved"' in d]
    assert len(with_loinc) == 6  # g1-g4 and n1-n2; u1 stays unmapped, its local coding kept
    assert sum('"code":"UGLU"' in d for d in docs.values()) == 1


def test_import_errors_name_file_and_line(reviewed, tmp_path):
    review = tmp_path / "bad.csv"
    main(["mappings", "suggest", "--warehouse", str(reviewed.warehouse), "--out", str(review)])
    rows = _rows(review)
    rows[0].update(decision="approve")  # no reviewer
    rows[1].update(decision="approve", reviewer="r")  # second approval for the same code as line 2
    rows[5].update(decision="approve", reviewer="r", target_code="10001-6")  # not in the release
    with review.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HEADER, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    with open_warehouse(reviewed.warehouse, read_only=True) as con, pytest.raises(ConfigError) as info:
        import_review(con, review, reviewed.warehouse)
    message = str(info.value)
    assert f"{review}:2: approved without a reviewer" in message
    assert f"{review}:3: a second approved target for the code approved at line 2" in message
    assert f"{review}:7: target_code is not in the loaded http://loinc.org release" in message
    assert not (tmp_path / "crosswalks").exists()


def test_xlsx_review_file_round_trips(reviewed, tmp_path):
    review = tmp_path / "review.xlsx"
    assert main(["mappings", "suggest", "--warehouse", str(reviewed.warehouse), "--out", str(review)]) == 0
    wb = load_workbook(review)
    ws = wb.worksheets[0]
    assert [c.value for c in ws[1]] == HEADER
    ws.cell(row=2, column=HEADER.index("decision") + 1, value="approve")
    ws.cell(row=2, column=HEADER.index("reviewer") + 1, value="x.reviewer")
    wb.save(review)
    assert [(line, r["source_code"], r["decision"]) for line, r in read_review(review)][:2] == [
        (2, "GLU", "approve"),
        (3, "GLU", ""),
    ]
    with open_warehouse(reviewed.warehouse, read_only=True) as con:
        result = import_review(con, review, reviewed.warehouse)
    assert result.approved == 1 and result.path is not None and result.path.parent == tmp_path / "crosswalks"

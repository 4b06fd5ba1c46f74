"""The review loop with only the shipped default terminology: candidates from the data, unverified targets
of a fragment-only system, a usable workbook, and `ehrlift normalize` re-applying mappings as a run."""

from __future__ import annotations

import csv
from pathlib import Path

import duckdb
import orjson
import pytest
from openpyxl import load_workbook

from pipelines.cli import main
from pipelines.common.errors import ConfigError
from pipelines.common.warehouse import open_warehouse
from pipelines.report import write_report
from pipelines.run import run_pipeline
from terminology.checks import loinc_check_digit
from terminology.review import import_review
from terminology.terms import WarehouseTerminology
from tests.conftest import resource, write_ndjson

LAB = "http://legacy-lab.example.org/tests"
LOINC = "http://loinc.org"
# Well formed with a valid check digit, yet (being made up) in no LOINC release, fragment or full.
UNLOADED = f"77777-{loinc_check_digit('77777')}"
WRONG_DIGIT = f"77777-{(loinc_check_digit('77777') + 1) % 10}"


def _obs(rid: str, code: str, display: str, loinc: str | None = None) -> dict:
    coding = [{"system": LAB, "code": code, "display": display}]
    if loinc:
        coding.append({"system": LOINC, "code": loinc, "display": "Glucose [Mass/volume] in Serum or Plasma"})
    return resource(
        "Observation",
        rid,
        status="final",
        code={"coding": coding},
        subject={"reference": "Patient/p1"},
        valueQuantity={"value": 5, "unit": "mg/dL"},
    )


@pytest.fixture
def default_only(tmp_path: Path, make_config, monkeypatch):
    """A run with the shipped default terminology only: one local code sent beside a LOINC, one alone."""
    monkeypatch.setenv("EHRLIFT_CROSSWALKS", str(tmp_path / "crosswalks"))
    write_ndjson(
        tmp_path / "src" / "Patient.ndjson",
        resource("Patient", "p1", gender="female", birthDate="1970-01-01"),
    )
    config = make_config(
        write_ndjson(
            tmp_path / "src" / "Observation.ndjson",
            _obs("g1", "GLU", "GLUCOSE SER", "2345-7"),
            _obs("g2", "GLU", "GLUCOSE SER", "2345-7"),
            _obs("g3", "GLU", "GLUCOSE SER"),  # the same local code, sent alone this time
            _obs("z1", "ZQX", "QQZX WXYV"),
            _obs("z2", "ZQX", "QQZX WXYV"),
        ).parent,
        source_system="lab",
    )
    run_pipeline(config)
    return config


def _docs(con) -> dict[str, str]:
    """Observation JSON by the id the source gave it (the warehouse id is derived from it)."""
    return dict(con.execute('SELECT source_id, resource::VARCHAR FROM fhir."Observation"').fetchall())


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _write(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def test_codes_sent_beside_a_loinc_are_first_candidates_and_missing_ones_say_why(default_only, tmp_path):
    with open_warehouse(default_only.warehouse, read_only=True) as con:
        assert WarehouseTerminology(con).is_subset(LOINC)  # the default holds a LOINC fragment only
    review = tmp_path / "review.csv"
    assert (
        main(["mappings", "suggest", "--warehouse", str(default_only.warehouse), "--out", str(review)]) == 0
    )
    rows = _rows(review)
    glu = [r for r in rows if r["source_code"] == "GLU"]
    assert (glu[0]["rank"], glu[0]["target_system"], glu[0]["target_code"]) == ("1", LOINC, "2345-7")
    assert glu[0]["basis"] == "sent beside it in 2 of 3 occurrences"
    assert glu[0]["score"] == "0.667"
    assert len({r["target_code"] for r in glu}) == len(glu)  # the text match does not repeat it
    (zqx,) = [r for r in rows if r["source_code"] == "ZQX"]
    assert zqx["target_code"] == "" and zqx["basis"] == ""
    assert "loaded fragment of http://loinc.org" in zqx["note"]
    assert "ehrlift terminology load" in zqx["note"] and "unverified" in zqx["note"]


def test_a_hand_typed_code_of_a_fragment_system_is_accepted_unverified_and_applied_by_normalize(
    default_only, tmp_path, capsys
):
    wh = str(default_only.warehouse)
    review = tmp_path / "review.csv"
    assert main(["mappings", "suggest", "--warehouse", wh, "--out", str(review)]) == 0
    rows = _rows(review)
    for r in rows:
        if r["source_code"] == "ZQX":
            r.update(target_system=LOINC, target_code=WRONG_DIGIT, decision="approve", reviewer="r.one")
    _write(review, rows)
    with open_warehouse(default_only.warehouse, read_only=True) as con, pytest.raises(ConfigError) as info:
        import_review(con, review, default_only.warehouse)
    assert "LOINC mod-10 check digit mismatch" in str(info.value)  # malformed is still refused
    for r in rows:
        if r["source_code"] == "ZQX":
            r.update(target_code=UNLOADED)
    _write(review, rows)
    capsys.readouterr()
    assert main(["mappings", "import", str(review), "--warehouse", wh]) == 0
    err = capsys.readouterr().err
    assert "accepted as unverified" in err.replace("\n", " ")

    with duckdb.connect(wh, read_only=True) as con:
        before = _docs(con)
    assert main(["normalize", "--warehouse", wh]) == 0
    first_out = capsys.readouterr().out
    assert "2 rewritten" in first_out
    with duckdb.connect(wh, read_only=True) as con:
        after = _docs(con)
        run_id, status, config = con.execute(
            "SELECT run_id, status, config FROM ops.runs ORDER BY started_at DESC LIMIT 1"
        ).fetchone()
        log = con.execute(
            "SELECT method, target_code, reason, occurrences FROM ops.mapping_log "
            "WHERE run_id = ? AND source_code = 'ZQX'",
            [run_id],
        ).fetchall()
    assert {k for k in after if after[k] != before[k]} == {"z1", "z2"}
    assert UNLOADED in after["z1"] and '"code":"ZQX"' in after["z1"]  # the source coding is kept
    assert status == "succeeded" and orjson.loads(config)["command"] == "normalize"
    assert log == [("crosswalk", UNLOADED, "target_not_verified", 2)]  # typed by hand: no score
    data = orjson.loads(write_report(default_only.warehouse, run_id=run_id).data.read_bytes())
    assert data["mapping"]["unverified"] == [
        {
            "source_system": LAB,
            "source_code": "ZQX",
            "target_system": LOINC,
            "target_code": UNLOADED,
            "method": "crosswalk",
            "occurrences": 2,
        }
    ]
    assert data["diff"]["coverage"]["delta_points"] > 0  # against the run before it

    # Idempotent: a second normalize rewrites nothing and leaves every resource byte for byte.
    assert main(["normalize", "--warehouse", wh]) == 0
    assert "0 rewritten" in capsys.readouterr().out
    with duckdb.connect(wh, read_only=True) as con:
        again = _docs(con)
        runs = con.execute(
            "SELECT count(*) FROM ops.runs WHERE config->>'command' = 'normalize' AND status = 'succeeded'"
        ).fetchone()[0]
    assert again == after and runs == 2


def test_the_workbook_has_widths_filters_and_a_decision_dropdown(default_only, tmp_path):
    review = tmp_path / "review.xlsx"
    assert (
        main(["mappings", "suggest", "--warehouse", str(default_only.warehouse), "--out", str(review)]) == 0
    )
    ws = load_workbook(review).worksheets[0]
    header = [c.value for c in ws[1]]
    assert header[-5:] == ["basis", "note", "decision", "reviewer", "review_date"]
    width = {h: ws.column_dimensions[chr(ord("A") + i)].width for i, h in enumerate(header)}
    assert width["source_system"] >= 30 and width["note"] >= 50 and width["occurrences"] < 20
    assert ws.auto_filter.ref == f"A1:{chr(ord('A') + len(header) - 1)}{ws.max_row}"
    (dv,) = ws.data_validations.dataValidation
    assert dv.type == "list" and dv.formula1 == '"approve,reject"'
    col = chr(ord("A") + header.index("decision"))
    assert str(dv.sqref).startswith(f"{col}2:{col}")
    assert all(c.font.bold for c in ws[1])


def test_normalize_without_a_warehouse_exits_3(tmp_path):
    assert main(["normalize", "--warehouse", str(tmp_path / "none.duckdb")]) == 3
    assert not (tmp_path / "none.duckdb").exists()

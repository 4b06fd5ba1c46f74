"""Normalization is visible in the views: standard columns beside the source ones, and the *_coding views."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.common.warehouse import open_warehouse
from pipelines.run import run_pipeline
from pipelines.views.standard import prefix_of
from tests.conftest import resource, write_ndjson
from tests.terminology_builders import LOINC, fixture_terminology_only, load_terms, write_crosswalk  # noqa: F401

HOSP = "http://hospital.example.org/lab-codes"
GLUCOSE = "Glucose [Mass/volume] in Serum or Plasma"
STD = "code_system, code, code_std_system, code_std_code, code_std_display, code_std_method"

pytestmark = pytest.mark.usefixtures("fixture_terminology_only")


def _obs(rid: str, *codings: dict) -> dict:
    return resource("Observation", rid, status="final", code={"coding": list(codings)})


@pytest.fixture
def lab(tmp_path: Path, make_config, monkeypatch):
    monkeypatch.setenv("EHRLIFT_CROSSWALKS", str(tmp_path / "crosswalks"))
    config = make_config(
        write_ndjson(
            tmp_path / "src" / "Observation.ndjson",
            _obs("o1", {"system": HOSP, "code": "GLU", "display": "GLUCOSE"}),
            # The source already sends the LOINC alternate beside its local code.
            _obs(
                "o2",
                {"system": HOSP, "code": "GLU", "display": "GLUCOSE"},
                {"system": LOINC, "code": "2345-7"},
            ),
            _obs("o3", {"system": HOSP, "code": "ZZZ", "display": "ODD TEST"}),
        ),
        source_system="labsys",
    )
    with open_warehouse(config.warehouse) as con:
        load_terms(con, [(LOINC, "2345-7", GLUCOSE, "active")], versions={LOINC: "2.78"})
    return config


def _std(con) -> list[tuple]:
    return con.execute(
        f"SELECT o.source_id, {STD} FROM views.observation v JOIN fhir.Observation o USING (id) ORDER BY 1"
    ).fetchall()


def _coding(con, rid: str) -> list[tuple]:
    return con.execute(
        "SELECT element, position, system, code, display, origin, method, reason, is_standard "
        "FROM views.observation_coding WHERE element = 'code' "
        "AND id = (SELECT id FROM fhir.Observation WHERE source_id = ?) ORDER BY position",
        [rid],
    ).fetchall()


def test_standard_columns_show_the_alternate_then_the_approved_mapping(lab, tmp_path, make_config, warehouse):
    run_pipeline(lab)
    con = warehouse()
    assert _std(con) == [
        ("o1", HOSP, "GLU", None, None, None, "unmapped"),
        ("o2", HOSP, "GLU", LOINC, "2345-7", GLUCOSE, "exact"),  # the alternate the source sent
        ("o3", HOSP, "ZZZ", None, None, None, "unmapped"),
    ]
    assert _coding(con, "o2") == [
        ("code", 1, HOSP, "GLU", "GLUCOSE", "source", "unmapped", "unknown_system", False),
        ("code", 2, LOINC, "2345-7", GLUCOSE, "source", "exact", None, True),
    ]
    con.close()

    # A reviewer approves GLU -> LOINC 2345-7; the next run re-applies it to what is already loaded.
    write_crosswalk(
        tmp_path / "crosswalks" / "lab.csv",
        (HOSP, "GLU", "GLUCOSE", LOINC, "2345-7", "equivalent", "a.author", "r.reviewer", "2026-01-05", "1"),
    )
    run_pipeline(lab)
    con = warehouse()
    assert _std(con) == [
        ("o1", HOSP, "GLU", LOINC, "2345-7", GLUCOSE, "crosswalk"),
        ("o2", HOSP, "GLU", LOINC, "2345-7", GLUCOSE, "exact"),  # already sent: nothing to add
        ("o3", HOSP, "ZZZ", None, None, None, "unmapped"),
    ]
    assert _coding(con, "o1") == [
        ("code", 1, HOSP, "GLU", "GLUCOSE", "source", "crosswalk", None, False),
        ("code", 2, LOINC, "2345-7", GLUCOSE, "normalization", "crosswalk", None, True),
    ]


def test_every_tagged_coded_column_has_its_standard_columns_beside_it(lab, warehouse):
    run_pipeline(lab)
    con = warehouse()
    cols = [r[0] for r in con.execute("DESCRIBE views.observation").fetchall()]
    at = cols.index("code_display")
    assert cols[at + 1 : at + 5] == [
        "code_std_system",
        "code_std_code",
        "code_std_display",
        "code_std_method",
    ]
    assert {"category_std_code", "value_codeable_concept_std_code", "interpretation_std_method"} <= set(cols)
    # Views with one row per element (observation_component) get the columns but no *_coding view.
    tables = {
        r[0]
        for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE schema_name = 'views'").fetchall()
    }
    assert {"observation_coding", "condition_coding", "patient_coding"} <= tables
    assert "observation_component_coding" not in tables
    assert "code_std_code" in {r[0] for r in con.execute("DESCRIBE views.observation_component").fetchall()}


def test_prefix_of():
    assert [prefix_of(c) for c in ("code_display", "category_code", "clinical_status", "vaccine_system")] == [
        "code",
        "category",
        "clinical_status",
        "vaccine",
    ]


def test_every_view_column_has_its_data_dictionary_comment(lab, warehouse):
    run_pipeline(lab)
    con = warehouse()
    rows = con.execute(
        "SELECT table_name, column_name, comment FROM duckdb_columns() WHERE schema_name = 'views' "
        "AND database_name = current_database()"
    ).fetchall()
    assert rows and all(comment for _, _, comment in rows), [r[:2] for r in rows if not r[2]]
    page = (Path(__file__).resolve().parents[1] / "docs" / "reference" / "views.md").read_text()
    comments = {(t, c): text for t, c, text in rows}
    assert f"| `code_std_method` | VARCHAR | {comments[('observation', 'code_std_method')]} |" in page
    assert f"| `issued` | TIMESTAMPTZ | {comments[('observation', 'issued')]} |" in page

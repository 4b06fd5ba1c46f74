"""Analysts' access: the views exported as Parquet (typed, audited) and `ehrlift sql`, read-only."""

from __future__ import annotations

import io
from datetime import date
from decimal import Decimal

import duckdb
import pytest

from pipelines.cli import main
from pipelines.run import run_pipeline
from pipelines.views.access import statements
from tests.conftest import resource, write_ndjson


@pytest.fixture
def loaded(tmp_path, make_config):
    config = make_config(
        write_ndjson(
            tmp_path / "src" / "data.ndjson",
            resource("Patient", "p1", gender="female", birthDate="1980-05"),
            resource(
                "Observation",
                "o1",
                status="final",
                subject={"reference": "Patient/p1"},
                code={"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
                valueQuantity={"value": 7.25, "unit": "mmol/L"},
            ),
        ),
        source_system="lab",
    )
    run_pipeline(config)
    return config.warehouse


def test_views_export_writes_typed_parquet_files_and_audits_it(loaded, tmp_path, capsys):
    out = tmp_path / "parquet"
    assert main(["views", "export", "--out", str(out), "--warehouse", str(loaded)]) == 0
    assert "views written to" in capsys.readouterr().out
    files = sorted(p.name for p in out.iterdir())
    assert (
        "observation.parquet" in files
        and "patient.parquet" in files
        and "observation_coding.parquet" in files
    )
    assert not [f for f in files if f.endswith(".partial")]
    con = duckdb.connect()
    birth = con.execute(
        f"SELECT birth_date, birth_date_precision FROM '{out / 'patient.parquet'}'"
    ).fetchall()
    assert birth == [(date(1980, 5, 1), "month")]
    value = con.execute(f"SELECT value_quantity_value FROM '{out / 'observation.parquet'}'").fetchall()
    assert value == [(Decimal("7.25"),)]
    with duckdb.connect(str(loaded), read_only=True) as wh:
        audit = wh.execute(
            "SELECT command, access FROM ops.phi_access WHERE command = 'views export'"
        ).fetchall()
    assert audit == [("views export", "read")]


def test_views_export_of_one_view_and_an_unknown_view(loaded, tmp_path):
    out = tmp_path / "one"
    assert main(["views", "export", "--out", str(out), "--view", "patient", "--warehouse", str(loaded)]) == 0
    assert [p.name for p in out.iterdir()] == ["patient.parquet"]
    assert main(["views", "export", "--out", str(out), "--view", "nope", "--warehouse", str(loaded)]) == 5


def test_sql_runs_one_statement_read_only(loaded, capsys):
    query = "SELECT gender, birth_date_precision FROM views.patient"
    assert main(["sql", query, "--csv", "--warehouse", str(loaded)]) == 0
    assert capsys.readouterr().out == "gender,birth_date_precision\nfemale,month\n"
    assert main(["sql", "DELETE FROM views.patient", "--warehouse", str(loaded)]) == 2
    assert "read-only" in capsys.readouterr().err
    with duckdb.connect(str(loaded), read_only=True) as wh:
        assert wh.execute("SELECT count(*) FROM views.patient").fetchone() == (1,)


def test_sql_reads_statements_from_standard_input(loaded, monkeypatch, capsys):
    monkeypatch.setattr(
        "sys.stdin", io.StringIO("SELECT 1 AS a;\nSELECT count(*) AS n\n  FROM views.observation;\n")
    )
    assert main(["sql", "--csv", "--warehouse", str(loaded)]) == 0
    assert capsys.readouterr().out == "a\n1\nn\n1\n"


def test_statements_split_on_a_trailing_semicolon():
    lines = ["select 1;", "", "select", " 2;", ".quit", "select 3;"]
    assert list(statements(lines)) == ["select 1;", "select\n 2;"]
    assert list(statements(["select 4"])) == ["select 4"]

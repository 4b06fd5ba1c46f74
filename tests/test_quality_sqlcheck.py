"""GX and the same checks compiled to DuckDB SQL agree on every count, on good and on bad rows."""

from __future__ import annotations

from pipelines.common.warehouse import open_warehouse
from pipelines.quality.engine import Validator, run_view_suite
from pipelines.quality.frames import prepare
from pipelines.quality.settings import load_settings
from pipelines.quality.sqlcheck import sql_outcomes
from tests.quality_data import good_warehouse, insert_rows


def test_gx_and_sql_count_the_same(tmp_path):
    path = good_warehouse(tmp_path / "w.duckdb")
    settings = load_settings()
    with open_warehouse(path) as con:
        insert_rows(
            con,
            "observation",
            [
                {
                    "id": "o1",
                    "patient_id": "nobody",
                    "status": "bogus",
                    "code_system": "http://loinc.org",
                    "code": "88-x",
                    "effective_date_time": "2999",
                    "value_quantity_value": 999.0,
                    "value_quantity_system": "http://unitsofmeasure.org",
                    "value_quantity_code": "/min",
                },
                {
                    "id": "o9",
                    "patient_id": "p2",
                    "status": "final",
                    "code_system": "http://snomed.info/sct",
                    "code": "0123",
                    "effective_date_time": "1950-01-01",
                    "value_quantity_value": 1.0,
                    "value_quantity_system": "urn:x",
                    "value_quantity_code": "a b",
                },
            ],
        )
        insert_rows(
            con,
            "patient",
            [{"id": "p3", "gender": "x", "birth_date": "1850", "mrn_value": "M1", "mrn_system": "urn:mrn"}],
        )
        prepare(con, settings)
        validator = Validator(settings)
        checked = 0
        for suite in settings.suites:
            if suite.source.get("source") == "mapping_log":
                continue
            gx = {
                o.name: (o.element_count - o.missing_count, o.unexpected_count, o.success)
                for o in run_view_suite(con, validator, suite)
            }
            sql = {
                o.name: (o.element_count - o.missing_count, o.unexpected_count, o.success)
                for o in sql_outcomes(con, suite, settings)
            }
            assert gx == sql, suite.name
            checked += len(gx)
    assert checked > 100


def test_the_sql_engine_gives_the_stage_the_same_verdicts(tmp_path, make_config, monkeypatch):
    from pipelines.demo.corrupt import write_corrupt_sources
    from pipelines.run import convert_stage, land_stage, load_stage
    from pipelines.validate import validate_stage

    write_corrupt_sources(tmp_path / "demo")
    config = make_config(tmp_path / "demo" / "sources")
    land_stage(config)
    convert_stage(config)
    load_stage(config)
    verdicts = {}
    for engine in ("gx", "sql"):
        site = tmp_path / f"{engine}.json"
        site.write_text(f'{{"engine": "{engine}"}}')
        monkeypatch.setenv("EHRLIFT_DQ_SITE_FILE", str(site))
        validate_stage(config)
        with open_warehouse(config.warehouse, read_only=True) as con:
            verdicts[engine] = con.execute(
                "SELECT expectation, severity, success, unexpected_count FROM ops.validation_results "
                "ORDER BY expectation"
            ).fetchall()
    assert verdicts["gx"] == verdicts["sql"]
    assert sum(not ok for _, _, ok, _ in verdicts["sql"]) == 7  # 6 critical, 1 warning

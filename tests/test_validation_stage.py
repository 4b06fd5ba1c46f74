"""The validate stage end to end: gate and exit status, structural checks, chunking, site overrides, docs."""

from __future__ import annotations

import dataclasses
import re

import orjson
import pytest

from pipelines.cli import main
from pipelines.common.errors import ConfigError
from pipelines.common.warehouse import open_warehouse
from pipelines.quality.engine import Validator, run_view_suite
from pipelines.quality.frames import prepare
from pipelines.quality.gate import GateBlocked
from pipelines.quality.settings import load_settings
from tests.conftest import resource, write_ndjson
from tests.quality_data import good_warehouse, insert_rows

PATIENT = resource(
    "Patient",
    "p1",
    gender="female",
    birthDate="1970-01-02",
    name=[{"family": "Zyxwv"}],
    identifier=[{"system": "urn:mrn", "value": "MRN-424242"}],
)


def _obs(oid: str, when: str, **extra) -> dict:
    return resource(
        "Observation",
        oid,
        status="final",
        code={"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        subject={"reference": "Patient/p1"},
        effectiveDateTime=when,
        **extra,
    )


def _run(tmp_path, *resources) -> tuple[int, str]:
    src = write_ndjson(tmp_path / "src" / "data.ndjson", *resources)
    wh = tmp_path / "data" / "warehouse.duckdb"
    code = main(["run", str(src), "--warehouse", str(wh), "--no-progress"])
    return code, str(wh)


def test_a_failed_critical_expectation_blocks_the_run_with_exit_7(tmp_path, capsys):
    code, wh = _run(tmp_path, PATIENT, _obs("o1", "2999-05-05T00:00:00Z"))
    err = capsys.readouterr().err
    assert code == 7
    assert "back-load blocked" in err and "observation.effective_not_in_future" in err
    with open_warehouse(wh, read_only=True) as con:
        assert con.execute("SELECT status, exit_code FROM ops.runs").fetchall() == [("blocked", 7)]
        row = con.execute(
            "SELECT severity, success, unexpected_count, record_pointers FROM ops.validation_results "
            "WHERE expectation = 'observation.effective_not_in_future'"
        ).fetchone()
        failed = con.execute("SELECT expectation FROM ops.validation_results WHERE NOT success").fetchall()
    assert row[:3] == ("critical", False, 1)
    assert orjson.loads(row[3]) == [f"Observation/{_warehouse_id(wh, 'Observation')}"]
    assert failed == [("observation.effective_not_in_future",)]


def _warehouse_id(wh: str, rtype: str) -> str:
    with open_warehouse(wh, read_only=True) as con:
        return con.execute(f'SELECT id FROM fhir."{rtype}"').fetchone()[0]


def test_warnings_pass_and_are_reported(tmp_path, capsys):
    # A unit no UCUM rule or alias knows stays as sent, so the UCUM check warns.
    odd_unit = {"value": 70, "unit": "thumps", "system": "http://example.org/units", "code": "thumps"}
    code, wh = _run(tmp_path, PATIENT, _obs("o1", "2020-05-05T00:00:00Z", valueQuantity=odd_unit))
    out = capsys.readouterr().out
    assert code == 0
    warned = next(line for line in out.splitlines() if line.startswith("warnings (reported, not blocking): "))
    assert "observation.value_quantity_system_is_ucum" in warned.split(": ", 1)[1].split(", ")
    with open_warehouse(wh, read_only=True) as con:
        assert con.execute("SELECT status, exit_code FROM ops.runs").fetchall() == [("succeeded", 0)]


def test_structurally_invalid_resources_block_with_ledger_pointers(tmp_path, capsys):
    no_status = _obs("o1", "2020-05-05T00:00:00Z")
    del no_status["status"]  # Observation.status is 1..1 in R4 (and R4B)
    code, wh = _run(tmp_path, PATIENT, no_status, _obs("o2", "2020-05-06T00:00:00Z"))
    assert code == 7
    with open_warehouse(wh, read_only=True) as con:
        rows = con.execute(
            "SELECT expectation, observed_value, unexpected_count, record_pointers "
            "FROM ops.validation_results WHERE NOT success"
        ).fetchall()
    assert [r[0] for r in rows] == ["fhir_structure.Observation"]
    _, observed, count, pointers = rows[0]
    assert count == 1
    assert observed == "1 of 2 resources invalid: Observation.status: missing x1"
    (p,) = orjson.loads(pointers)
    assert re.fullmatch(r"Observation/[0-9a-f]{32} landing/[0-9a-f]{64}#ndjson_line=2@\d+\+\d+", p)


def test_chunked_validation_adds_up_to_the_whole_table(tmp_path):
    """Hash-partitioned chunks give the same counts and verdicts as one frame, uniqueness included."""
    path = good_warehouse(tmp_path / "w.duckdb")
    rows = [
        {
            "id": f"x{i}",
            "patient_id": "p1",
            "status": "final" if i % 50 else "bogus",
            "code_system": "http://loinc.org",
            "code": "8867-4",
            "effective_date_time": "2020-01-01",
            "value_quantity_value": 60.0 + i % 7,
            "value_quantity_system": "http://unitsofmeasure.org",
            "value_quantity_code": "/min",
        }
        for i in range(400)
    ]
    rows.append({**rows[3], "status": "final"})  # a duplicate id, far from its twin in insertion order
    settings = load_settings()
    (suite,) = [s for s in settings.suites if s.name == "observation"]
    with open_warehouse(path) as con:
        insert_rows(con, "observation", rows)
        prepare(con, settings)
        results = {}
        for chunk_rows in (10_000, 37, 5):
            validator = Validator(dataclasses.replace(settings, chunk_rows=chunk_rows))
            results[chunk_rows] = {
                o.name: (o.element_count, o.missing_count, o.unexpected_count, o.success)
                for o in run_view_suite(con, validator, suite)
            }
    assert results[37] == results[10_000] == results[5]
    assert results[5]["observation.id_unique"] == (404, 0, 2, False)
    assert results[5]["observation.status_in_value_set"] == (404, 0, 8, False)
    # 'mostly' is judged on the whole table, not per chunk: 8 of 404 bad passes at 0.98, not at 0.99
    for mostly, verdict in ((0.98, True), (0.99, False)):
        spec = dict(suite.spec)
        spec["expectations"] = [
            {**e, "kwargs": {**e["kwargs"], "mostly": mostly}}
            for e in suite.expectations
            if e["meta"]["name"] == "observation.status_in_value_set"
        ]
        one = dataclasses.replace(suite, spec=spec)
        with open_warehouse(path) as con:
            prepare(con, settings)
            (o,) = run_view_suite(con, Validator(dataclasses.replace(settings, chunk_rows=5)), one)
        assert o.success is verdict


def test_a_site_file_overrides_severities_and_thresholds(tmp_path, monkeypatch):
    site = tmp_path / "site.json"
    site.write_text(
        orjson.dumps(
            {
                "severities": {"observation.effective_not_in_future": "warning"},
                "parameters": {"future_date_tolerance_hours": 24 * 365 * 2000},
            }
        ).decode()
    )
    monkeypatch.setenv("EHRLIFT_DQ_SITE_FILE", str(site))
    settings = load_settings()
    (exp,) = [
        e
        for s in settings.suites
        for e in s.expectations
        if e["meta"]["name"] == "observation.effective_not_in_future"
    ]
    assert exp["severity"] == "warning"
    assert settings.parameters["latest_allowed_time"].year > 3000
    site.write_text('{"severities": {"observation.no_such_check": "warning"}}')
    with pytest.raises(ConfigError, match="unknown expectation"):
        load_settings()


def test_airflow_validate_task_raises_when_blocked(tmp_path):
    from pipelines import tasks

    src = write_ndjson(tmp_path / "src" / "data.ndjson", PATIENT, _obs("o1", "2999-05-05T00:00:00Z"))
    config = tasks.configure([str(src)], warehouse=str(tmp_path / "wh" / "warehouse.duckdb"))
    tasks.land(config)
    tasks.convert(config)
    tasks.load(config)
    from airflow.sdk.exceptions import AirflowFailException

    # A blocked gate is final: the task fails without spending retries, the status and reason kept.
    with pytest.raises(AirflowFailException, match="exit status 7") as exc:
        tasks.validate(config)
    cause = exc.value.__cause__
    assert isinstance(cause, GateBlocked) and cause.exit_code == 7
    assert "observation.effective_not_in_future" in str(exc.value)


def test_data_docs_make_no_external_request_and_hold_no_record_values(tmp_path):
    code, wh = _run(tmp_path, PATIENT, _obs("o1", "2999-05-05T00:00:00Z"))
    assert code == 7
    assert not (tmp_path / "data" / "reports").exists()  # the run leaves Data Docs to the report
    assert main(["report", "--warehouse", wh]) == 0
    (docs,) = (tmp_path / "data" / "reports").glob("*/data-docs")
    pages = [p for p in docs.rglob("*") if p.suffix in {".html", ".css"} and "vendor" not in p.parts]
    assert (docs / "index.html") in pages and len(pages) > 5
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert not re.search(r"https?://", text), page
        for value in ("Zyxwv", "MRN-424242", "2999-05-05", "1970-01-02"):
            assert value not in text, page
    for ref in re.findall(r'(?:src|href)="([^"#]+)"', (docs / "index.html").read_text(encoding="utf-8")):
        assert (docs / ref).exists(), ref

"""Incremental runs: views rebuilt and suites run for what a run changed; everything on request."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from pipelines.cli import main
from pipelines.common.warehouse import open_warehouse
from pipelines.views.materialize import view_stamps
from tests.conftest import resource, write_ndjson

PATIENT = resource(
    "Patient",
    "p1",
    gender="female",
    birthDate="1970-01-02",
    identifier=[{"system": "urn:mrn", "value": "M1"}],
)
CONDITION = resource(
    "Condition",
    "c1",
    subject={"reference": "Patient/p1"},
    code={"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]},
)
OBS = resource(
    "Observation",
    "o1",
    status="final",
    code={"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
    subject={"reference": "Patient/p1"},
    effectiveDateTime="2020-05-05T00:00:00Z",
)


def _run(tmp_path: Path, name: str, *resources: dict) -> str:
    src = write_ndjson(tmp_path / "src" / name, *resources)
    wh = tmp_path / "data" / "warehouse.duckdb"
    assert main(["run", str(src), "--warehouse", str(wh), "--no-progress"]) in (0, 7)
    with open_warehouse(wh, read_only=True) as con:
        return con.execute("SELECT run_id FROM ops.runs ORDER BY started_at DESC LIMIT 1").fetchone()[0]


def _state(tmp_path: Path, run_id: str) -> tuple[dict[str, str], set[str], set[str]]:
    with open_warehouse(tmp_path / "data" / "warehouse.duckdb", read_only=True) as con:
        built = {name: run for name, (_, run) in view_stamps(con).items()}
        suites = {
            s
            for (s,) in con.execute(
                "SELECT DISTINCT suite FROM ops.validation_results WHERE run_id = ?", [run_id]
            ).fetchall()
        }
        (tables,) = con.execute(
            "SELECT tables FROM ops.phi_access WHERE run_id = ? AND access = 'write'", [run_id]
        ).fetchone()
        written = {t["table"] for t in orjson.loads(tables)}
    return built, suites, written


def test_a_run_rebuilds_the_views_over_what_it_wrote_and_checks_what_they_can_affect(tmp_path):
    first = _run(tmp_path, "a.ndjson", PATIENT, CONDITION)
    built, suites, _ = _state(tmp_path, first)
    assert set(built.values()) == {first}  # a fresh warehouse builds every view
    assert {"patient", "condition", "observation", "mapping_coverage", "fhir_structure"} <= suites

    second = _run(tmp_path, "b.ndjson", OBS)
    built, suites, written = _state(tmp_path, second)
    assert {v for v, run in built.items() if run == second} == {
        "observation",
        "observation_coding",
        "observation_component",
    }
    assert built["patient"] == built["condition"] == first
    # Observation suites and the suites joining the rebuilt views; not the patient or condition suites.
    assert suites == {
        "observation",
        "observation_component",
        "diagnostic_report_result",
        "mapping_coverage",
        "fhir_structure",
    }
    # Person ids are brought up to date in views.patient_source by every run once patients are linked;
    # the person-level views.patient only when person records were written.
    assert {w for w in written if w.startswith("views.")} == {
        "views.observation",
        "views.observation_coding",
        "views.observation_component",
        "views.patient_source",
    }

    # A view built from another version of its definition is rebuilt by the next run.
    with open_warehouse(tmp_path / "data" / "warehouse.duckdb") as con:
        con.execute(f"COMMENT ON TABLE views.condition IS 'ehrlift-view sha256={'0' * 64} run={first}'")
    third = _run(tmp_path, "c.ndjson", {**OBS, "id": "o2"})
    built, suites, _ = _state(tmp_path, third)
    assert built["condition"] == third and "condition" in suites and built["patient"] == first


def test_refresh_all_rebuilds_every_view_and_runs_every_suite(tmp_path, monkeypatch):
    first = _run(tmp_path, "a.ndjson", PATIENT, CONDITION)
    site = tmp_path / "site.json"
    site.write_text(orjson.dumps({"refresh": "all"}).decode())
    monkeypatch.setenv("EHRLIFT_DQ_SITE_FILE", str(site))
    second = _run(tmp_path, "b.ndjson", OBS)
    built, suites, _ = _state(tmp_path, second)
    assert set(built.values()) == {second}
    assert _state(tmp_path, first)[1] == suites


def test_a_clean_one_file_run_loads_no_great_expectations_hl7apy_or_pydantic_models(tmp_path):
    src = write_ndjson(tmp_path / "src" / "p.ndjson", PATIENT)
    wh = tmp_path / "data" / "warehouse.duckdb"
    heavy = ("great_expectations", "hl7apy", "fhir.resources")
    code = (
        "import sys; from pipelines.cli import main; "
        f"rc = main(['run', {str(src)!r}, '--warehouse', {str(wh)!r}, '--no-progress']); "
        f"print('LOADED', sorted(m for m in {heavy!r} if m in sys.modules), rc)"
    )
    for _ in range(2):  # a fresh warehouse, then an existing one
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=300
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.strip().splitlines()[-1] == "LOADED [] 0"


def test_types_renormalized_since_their_views_were_built_are_rebuilt(tmp_path):
    first = _run(tmp_path, "a.ndjson", PATIENT, OBS)
    wh = tmp_path / "data" / "warehouse.duckdb"
    with open_warehouse(wh) as con:
        assert con.execute("SELECT count(*) FROM ops.views_stale").fetchone() == (0,)
        # What the normalize stage records when it rewrites resources earlier runs stored.
        con.execute("INSERT INTO ops.views_stale VALUES ('Observation')")
    second = _run(tmp_path, "b.ndjson", {**PATIENT, "id": "p2"})
    built, suites, _ = _state(tmp_path, second)
    assert built["observation"] == built["observation_component"] == second
    assert built["condition"] == first and "observation" in suites
    with open_warehouse(wh, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM ops.views_stale").fetchone() == (0,)


def test_the_normalize_stage_marks_the_types_it_rewrites(tmp_path, make_config):
    from pipelines.normalize import normalize_stage
    from pipelines.run import convert_stage, land_stage

    odd_unit = {"value": 7, "unit": "mg/dl"}  # rewritten to UCUM mg/dL by normalization
    config = make_config(write_ndjson(tmp_path / "src" / "o.ndjson", {**OBS, "valueQuantity": odd_unit}))
    land_stage(config)
    convert_stage(config)
    normalize_stage(config)
    with open_warehouse(config.warehouse, read_only=True) as con:
        assert con.execute("SELECT resource_type FROM ops.views_stale").fetchall() == [("Observation",)]

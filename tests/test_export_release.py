"""The FHIR release of an export: the server's CapabilityStatement or --fhir-release, declared for landing."""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
import pytest

from pipelines.cli import main
from pipelines.common.config import RunConfig
from pipelines.common.errors import ConfigError, ExitCode
from pipelines.export.runner import run_export
from pipelines.export.scheduled import download
from pipelines.export.state import ExportState
from pipelines.export.web import RemoteError
from pipelines.fhir_release import DECLARATION_FILE
from pipelines.run import run_pipeline
from tests.bulk_server import BulkServer, Faults, generated_resources, instant
from tests.conftest import resource
from tests.test_export import T0, Sleeps, options

META = {"lastUpdated": instant(T0)}
PATIENT = {"reference": "Patient/p1"}
# DSTU2 Observation.referenceRange.meaning is R4's referenceRange.type; nothing else in it tells DSTU2
# from R4, so read from content alone it passes for R4 and keeps an element R4 does not have.
UNSIGNALLED = resource(
    "Observation",
    "o1",
    meta=META,
    status="final",
    code={"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
    subject=PATIENT,
    valueQuantity={"value": 61, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
    referenceRange=[{"low": {"value": 50}, "meaning": {"text": "normal"}}],
)


def dstu2_data() -> dict[str, list[dict]]:
    return {
        "Patient": [resource("Patient", "p1", meta=META, gender="female", name=[{"family": ["Doe"]}])],
        "Encounter": [
            resource(
                "Encounter", "e1", meta=META, status="finished", patient=PATIENT, **{"class": "inpatient"}
            )
        ],
        "Observation": [UNSIGNALLED],
    }


def _declarations(con) -> list[tuple]:
    return con.execute(
        "SELECT f.original_name, d.release, d.declared_by, d.format FROM ops.fhir_release_declarations d "
        "JOIN ops.files f USING (file_sha256) ORDER BY 1"
    ).fetchall()


def _reference_range(con) -> dict:
    (text,) = con.execute('SELECT resource FROM fhir."Observation"').fetchone()
    return orjson.loads(text)["referenceRange"][0]


def test_a_dstu2_server_export_is_declared_dstu2_and_upgraded(tmp_path, warehouse):
    with BulkServer(dstu2_data(), fhir_version="1.0.2", faults=Faults(error_file=False)) as server:
        result = run_export(options(server, tmp_path, run=True), sleep=Sleeps())
    assert result.fhir_release == "dstu2"
    assert (result.out_dir / DECLARATION_FILE).read_text() == (
        "pattern,release\n# FHIR release of this export's files\n"
        "Encounter.001.ndjson,dstu2\nObservation.001.ndjson,dstu2\nPatient.001.ndjson,dstu2\n"
    )
    assert result.run_summary is not None and result.run_summary.reconciles
    con = warehouse()
    assert _declarations(con) == [
        ("Encounter.001.ndjson", "1.0", "folder", "fhir-ndjson-dstu2"),
        ("Observation.001.ndjson", "1.0", "folder", "fhir-ndjson-dstu2"),
        ("Patient.001.ndjson", "1.0", "folder", "fhir-ndjson-dstu2"),
    ]
    assert con.execute("SELECT outcome, count(*) FROM ops.ledger GROUP BY 1 ORDER BY 1").fetchall() == [
        ("converted", 3),
        ("skipped", 3),  # the manifest's rows for its three outputs
    ]
    assert _reference_range(con) == {"low": {"value": 50}, "type": {"text": "normal"}}
    (encounter,) = con.execute('SELECT resource FROM fhir."Encounter"').fetchone()
    assert orjson.loads(encounter)["class"]["code"] == "IMP"


def test_read_from_content_alone_the_unsignalled_dstu2_observation_is_not_taken_for_r4(tmp_path, warehouse):
    # The same export from a server that will not say its release: the Observation's shape fits R4 too,
    # but its referenceRange.meaning is DSTU2's, so it is not valid R4 and asks for a declared release.
    with BulkServer(dstu2_data(), metadata_status=403, faults=Faults(error_file=False)) as server:
        result = run_export(options(server, tmp_path, run=True), sleep=Sleeps())
    assert result.fhir_release == "unknown" and not (result.out_dir / DECLARATION_FILE).exists()
    con = warehouse()
    assert _declarations(con) == []
    formats = dict(con.execute("SELECT original_name, format FROM ops.files").fetchall())
    assert formats["Observation.001.ndjson"] == "fhir-ndjson"  # R4 by its content
    assert formats["Patient.001.ndjson"] == "fhir-ndjson-dstu2"  # its name.family list says DSTU2
    rows = con.execute(
        "SELECT l.outcome, l.reason FROM ops.ledger l JOIN ops.files f USING (file_sha256) "
        "WHERE f.original_name = 'Observation.001.ndjson'"
    ).fetchall()
    assert rows == [("quarantined", "fhir_release_ambiguous")]


def test_metadata_refused_falls_back_to_content_with_one_warning(tmp_path, caplog):
    data = generated_resources(2, T0)
    with BulkServer(data, metadata_status=401) as server:
        with caplog.at_level(logging.WARNING, logger="pipelines.export"):
            result = run_export(options(server, tmp_path), sleep=Sleeps())
        assert server.requests("GET", "/fhir/metadata") == ["/fhir/metadata"]  # asked once, not retried
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [
        "the server's CapabilityStatement (GET [base]/metadata) could not be read or names no fhirVersion: "
        "each file's FHIR release will be told from its content; pass --fhir-release if the server's "
        "release is known"
    ]
    assert result.fhir_release == "unknown"


def test_a_capability_statement_without_fhir_version_is_unknown(tmp_path):
    with BulkServer(generated_resources(1, T0), fhir_version=None) as server:
        result = run_export(options(server, tmp_path), sleep=Sleeps())
    assert result.fhir_release == "unknown"


def test_an_r4_server_is_declared_r4(tmp_path, warehouse):
    data = generated_resources(2, T0)
    with BulkServer(data, fhir_version="4.0.1", faults=Faults(error_file=False)) as server:
        result = run_export(options(server, tmp_path, run=True), sleep=Sleeps())
    assert result.fhir_release == "r4"
    con = warehouse()
    assert {(r, by, fmt) for _n, r, by, fmt in _declarations(con)} == {("4.0", "folder", "fhir-ndjson")}
    assert len(_declarations(con)) == 4
    assert con.execute("SELECT count(*) FROM ops.ledger WHERE outcome = 'quarantined'").fetchone() == (0,)


def test_the_option_overrides_the_server(tmp_path, warehouse):
    # A server claiming R4 for files that are DSTU2: the operator knows better.
    with BulkServer(dstu2_data(), fhir_version="4.0.1", faults=Faults(error_file=False)) as server:
        result = run_export(options(server, tmp_path, run=True, fhir_release="dstu2"), sleep=Sleeps())
        assert server.requests("GET", "/fhir/metadata") == []  # declared: the server is not asked
    assert result.fhir_release == "dstu2"
    con = warehouse()
    assert {r for _n, r, _b, _f in _declarations(con)} == {"1.0"}
    assert _reference_range(con) == {"low": {"value": 50}, "type": {"text": "normal"}}


def test_an_unsupported_server_release_stops_before_kickoff(tmp_path, capsys):
    with BulkServer(generated_resources(1, T0), fhir_version="5.0.0") as server:
        with pytest.raises(RemoteError) as raised:
            run_export(options(server, tmp_path), sleep=Sleeps())
        assert server.kickoffs() == []
        base = ["export", "--server", server.base, "--system", "--no-progress", "--no-run"]
        base += ["--warehouse", str(tmp_path / "w.duckdb")]
        assert main(base) == ExitCode.REMOTE
        assert main([*base, "--fhir-release", "r4"]) == ExitCode.OK
    assert raised.value.message == (
        "the server declares FHIR version 5.0.0, which ehrlift does not read "
        "(DSTU2 1.0.x, STU3 3.0.x or R4 4.0.x)"
    )
    assert "FHIR release: r4" in capsys.readouterr().out


def test_a_resumed_export_keeps_its_release(tmp_path, warehouse):
    class Crash(BaseException):
        pass

    def crash_while_polling(_seconds: float) -> None:
        raise Crash

    with BulkServer(dstu2_data(), fhir_version="1.0.2", faults=Faults(error_file=False)) as server:
        with pytest.raises(Crash):
            run_export(options(server, tmp_path), sleep=crash_while_polling)
        opts = options(server, tmp_path, run=True)
        with ExportState(opts.warehouse.parent / "exports", opts.key()) as state:
            assert state.job is not None
            assert (state.job["fhir_release"], state.job["server_fhir_version"]) == ("dstu2", "1.0.2")
        server.fhir_version = "4.0.1"  # the server is upgraded while the job waits: the job is DSTU2
        with pytest.raises(ConfigError, match="read as dstu2"):
            run_export(options(server, tmp_path, fhir_release="r4"), sleep=Sleeps())
        result = run_export(opts, sleep=Sleeps())
        assert server.requests("GET", "/fhir/metadata") == ["/fhir/metadata"]
    assert result.resumed and result.fhir_release == "dstu2"
    assert _reference_range(warehouse()) == {"low": {"value": 50}, "type": {"text": "normal"}}


def test_the_scheduled_export_declares_the_release(tmp_path, monkeypatch, warehouse):
    monkeypatch.delenv("EHRLIFT_FHIR_RELEASE", raising=False)
    settings = {"server": None, "warehouse": str(tmp_path / "data" / "warehouse.duckdb")}
    with BulkServer(dstu2_data(), fhir_version="1.0.2", faults=Faults(error_file=False)) as server:
        settings["server"] = server.base
        assert download(settings)["export"]["fhir_release"] == "dstu2"
        # The deployment's setting overrides the server (another selection: another job).
        monkeypatch.setenv("EHRLIFT_EXPORT_FHIR_RELEASE", "stu3")
        config = download({**settings, "types": ["Patient"]})
    assert config["export"]["fhir_release"] == "stu3"
    (manifest,) = config["sources"]
    assert (Path(manifest).parent / DECLARATION_FILE).read_text().endswith("\nPatient.001.ndjson,stu3\n")
    # The DAG's stages run the manifest: its output is read as declared, and the DSTU2 Patient
    # (its name.family is a list) contradicts STU3.
    run = run_pipeline(RunConfig.from_dict(config))
    assert run.reconciles
    assert warehouse().execute(
        "SELECT reason, count(*) FROM ops.ledger WHERE outcome = 'quarantined' GROUP BY 1"
    ).fetchall() == [("declared_release_contradicted", 1)]

"""The compliance report: exact aggregates without paths or values, its digest, its HTML in Chromium."""

from __future__ import annotations

import hashlib
import json
import os
import struct

import duckdb
import orjson
import pytest

from pipelines.common.runrecord import finish_run
from pipelines.common.warehouse import open_warehouse
from pipelines.report import write_report
from pipelines.report.data import aggregate_value, safe_config
from pipelines.run import convert_stage, land_stage, load_stage, run_pipeline
from tests.chromium import find_browser, load_page
from tests.conftest import resource, write_ndjson


def _patients(tmp_path, name: str, n: int, bad: bool = True, first: int = 0):
    lines: list = [resource("Patient", f"p{i}", gender="female") for i in range(first, first + n)]
    if bad:
        lines.append("{not json")
    return write_ndjson(tmp_path / "src" / name, *lines)


def _mapping(con, run_id: str) -> None:
    rows = [
        ("http://loinc.org", "2345-7", "exact", "http://loinc.org", 30),
        ("urn:ehrlift:hl7v2:demo:L", "GLU", "crosswalk", "http://loinc.org", 10),
        ("urn:ehrlift:hl7v2:demo:L", "XYZ", "unmapped", None, 5),
        ("http://snomed.info/sct", "44054006", "exact", "http://snomed.info/sct", 15),
    ]
    for source_system, code, method, target, n in rows:
        con.execute(
            "INSERT INTO ops.mapping_log (run_id, source_system, source_code, source_display, "
            "target_system, target_code, target_display, method, reason, terminology_version, "
            "crosswalk_version, occurrences) "
            "VALUES (?, ?, ?, 'Free text display', ?, ?, NULL, ?, ?, "
            "'LOINC 2.80', 'demo-crosswalk 3', ?)",
            [
                run_id,
                source_system,
                code,
                target,
                code if target else None,
                method,
                "no crosswalk entry" if method == "unmapped" else None,
                n,
            ],
        )


def _validation(con, run_id: str, failed_critical: bool) -> None:
    rows = [
        (
            "patient",
            "birth_date_not_future",
            "critical",
            not failed_critical,
            "1993-04-12",
            1,
            ["fhir/Patient/p1"],
        ),
        ("patient", "gender_in_value_set", "warning", True, "0.0", 0, []),
        (
            "observation",
            "value_in_range",
            "warning",
            False,
            "0.25",
            3,
            ["a", "b", {"view": "observation", "row": 7}],
        ),
    ]
    for suite, exp, sev, ok, observed, unexpected, pointers in rows:
        con.execute(
            "INSERT INTO ops.validation_results VALUES (?, ?, ?, ?, ?, ?, ?, ?, now())",
            [run_id, suite, exp, sev, ok, observed, unexpected, json.dumps(pointers)],
        )


def _releases(con) -> None:
    con.execute(
        "INSERT INTO terminology.releases "
        "(kind, system, version, source, sha256, loaded_at, concepts, active) "
        "VALUES ('loinc', 'http://loinc.org', '2.80', "
        "'/home/jdoe/Smith_John/Loinc_2.80.zip', 'ab' || repeat('0', 62), "
        "TIMESTAMPTZ '2026-01-02 03:04:05+00', 105000, true)"
    )


def _core_run(config) -> None:
    """A run of the core stages only (no normalization or validation): the tests add those rows exactly."""
    land_stage(config)
    convert_stage(config)
    load_stage(config)
    with open_warehouse(config.warehouse) as con:
        finish_run(con, config, "succeeded", 0)


@pytest.fixture
def two_runs(tmp_path, make_config):
    """Two runs: the first passes validation, the second fails a critical expectation (blocked)."""
    first = make_config(_patients(tmp_path, "a.ndjson", 3))
    _core_run(first)
    # p2 again (identical: a duplicate removed), two new patients, one bad line
    second = make_config(_patients(tmp_path, "b.ndjson", 3, first=2))
    _core_run(second)
    with open_warehouse(second.warehouse) as con:
        _mapping(con, second.run_id)
        _validation(con, first.run_id, failed_critical=False)
        _validation(con, second.run_id, failed_critical=True)
        con.execute("UPDATE ops.runs SET status = 'blocked', exit_code = 7 WHERE run_id = ?", [second.run_id])
        _releases(con)
    return first, second


def test_report_data_is_exact_and_its_digest_verifies(tmp_path, two_runs):
    first, second = two_runs
    files = write_report(second.warehouse)
    assert files.run_id == second.run_id
    assert files.html.parent == second.warehouse.parent / "reports" / second.run_id
    payload = files.data.read_bytes()
    assert hashlib.sha256(payload).hexdigest() == files.digest
    assert files.digest in files.html.read_text()
    data = orjson.loads(payload)
    run = data["run"]
    assert (run["status"], run["exit_code"], run["blocked"]) == ("blocked", 7, True)
    assert run["config"] == {
        "batch_size": 10000,
        "fhir_release": "auto",
        "progress": False,
        "run_id": second.run_id,
        "source_system": "default",
        "workers": 0,
        "gate_override": None,
        "ehrlift_version": run["ehrlift_version"],
    }
    assert [r["run_id"] for r in data["runs"]] == [first.run_id, second.run_id]
    rec = data["reconciliation"]
    assert rec["totals"] == {
        "files": 1,
        "units": 4,
        "converted": 2,
        "quarantined": 1,
        "skipped": 1,
        "resources": 2,
    }
    (f,) = rec["files"]
    assert (f["format"], f["units"], f["reconciles"]) == ("fhir-ndjson", 4, True)
    assert "name" not in f  # file names can carry an MRN: the report names files by sha256 prefix only
    assert len(f["sha256_prefix"]) == 12
    assert [(r["units"], r["quarantined"]) for r in rec["per_run"]] == [(4, 1), (4, 1)]
    assert rec["resources_by_type"] == {"Patient": 2}
    assert rec["duplicates"] == {
        "duplicate_identical": 1,
        "superseded": 0,
        "reference_only_present": 0,
        "conflicting_duplicate": 0,
    }
    (q,) = data["quarantine"]
    assert (q["code"], q["count"]) == ("invalid_json", 1)
    assert q["description"].startswith("The unit is not valid JSON")
    assert q["pointers"] == [f"landing/{_sha(second, 'b.ndjson')}#ndjson_line=4@165+10"]
    m = data["mapping"]
    assert (m["occurrences"], m["mapped"], m["coverage"]) == (60, 55, 0.9167)
    assert m["by_source_system"]["urn:ehrlift:hl7v2:demo:L"] == {
        "occurrences": 15,
        "codes": 2,
        "methods": {"crosswalk": 10, "unmapped": 5},
        "mapped": 10,
        "coverage": 0.6667,
    }
    assert m["by_target_system"] == {
        "http://loinc.org": {"occurrences": 40, "codes": 2},
        "http://snomed.info/sct": {"occurrences": 15, "codes": 1},
    }
    assert m["top_unmapped"] == [
        {
            "source_system": "urn:ehrlift:hl7v2:demo:L",
            "source_code": "XYZ",
            "reason": "no crosswalk entry",
            "occurrences": 5,
        }
    ]
    loinc = [r for r in data["terminology"]["releases"] if r["system"] == "http://loinc.org"]
    assert "Loinc_2.80.zip" in [r["source"] for r in loinc]  # base name only
    assert data["terminology"]["used_by_run"] == [
        {"terminology_version": "LOINC 2.80", "crosswalk_version": "demo-crosswalk 3"}
    ]
    v = data["validation"]
    assert v["suites"] == {
        "observation": {"evaluated": 1, "passed": 0, "failed_critical": 0, "failed_warning": 1},
        "patient": {"evaluated": 2, "passed": 1, "failed_critical": 1, "failed_warning": 0},
    }
    pointers = {r["expectation"]: (r["pointers"], r["pointers_total"]) for r in v["results"]}
    assert pointers["value_in_range"] == (["a", "b", '{"view":"observation","row":7}'], 3)
    assert pointers["birth_date_not_future"] == (["fhir/Patient/p1"], 1)
    observed = {r["expectation"]: r["observed"] for r in v["results"]}
    assert observed == {
        "birth_date_not_future": "withheld (not an aggregate)",
        "gender_in_value_set": "0.0",
        "value_in_range": "0.25",
    }
    assert [(p["run_id"], p["pass_rate"], p["failed_critical"]) for p in v["trends"]["patient"]] == [
        (first.run_id, 1.0, 0),
        (second.run_id, 0.5, 1),
    ]
    assert data["notes"] == []
    assert data["data_docs"] is None
    # The same warehouse gives the same bytes: the digest identifies the data, not the moment.
    assert write_report(second.warehouse).digest == files.digest
    html = files.html.read_text()
    for absent in ("1993-04-12", "Free text display", "/home/jdoe", "Smith_John", str(tmp_path)):
        assert absent not in html and absent not in payload.decode()


def _sha(config, name: str) -> str:
    with duckdb.connect(str(config.warehouse), read_only=True) as con:
        return con.execute("SELECT file_sha256 FROM ops.files WHERE original_name = ?", [name]).fetchone()[0]


def test_report_says_plainly_what_is_absent(tmp_path, make_config):
    config = make_config(_patients(tmp_path, "a.ndjson", 1, bad=False))
    _core_run(config)
    out = tmp_path / "out"
    files = write_report(config.warehouse, out_dir=out, run_id=config.run_id)
    assert files.html == out / "compliance-report.html"
    data = orjson.loads(files.data.read_bytes())
    assert data["notes"] == [
        "terminology.releases is empty: no terminology release has been loaded",
        "ops.quarantine has no rows for this run: nothing was quarantined",
        "ops.mapping_log has no rows for this run: terminology normalization did not run",
        "ops.validation_results has no rows for this run: the validation stage did not run",
    ]
    html = files.html.read_text()
    assert "No mapping decision is recorded for this run." in html
    assert "No validation result is recorded for this run." in html


def test_report_links_the_runs_data_docs(tmp_path, make_config, monkeypatch):
    site = tmp_path / "site.json"
    site.write_text('{"data_docs": "always"}')  # a clean run renders Data Docs only when asked
    monkeypatch.setenv("EHRLIFT_DQ_SITE_FILE", str(site))
    config = make_config(_patients(tmp_path, "a.ndjson", 1, bad=False))
    run_pipeline(config)
    docs = config.warehouse.parent / "reports" / config.run_id / "data-docs" / "index.html"
    assert docs.is_file()  # the validate stage writes the run's Data Docs
    files = write_report(config.warehouse)
    assert orjson.loads(files.data.read_bytes())["data_docs"] == "data-docs/index.html"
    assert '<a href="data-docs/index.html">' in files.html.read_text()
    elsewhere = write_report(config.warehouse, out_dir=tmp_path / "elsewhere")
    link = orjson.loads(elsewhere.data.read_bytes())["data_docs"]
    assert (tmp_path / "elsewhere" / link).resolve() == docs.resolve()


def test_config_and_observed_values_keep_paths_and_record_values_out():
    config = {
        "sources": ["/data/Doe_Jane"],
        "warehouse": "/w/x.duckdb",
        "landing": "/w/landing",
        "source_system": "lab",
        "feed_dir": "feeds",
        "thresholds": {"unmapped": 0.1, "out_dir": "x"},
        "note": "C:\\exports\\Doe",
    }
    assert safe_config(config) == {"source_system": "lab", "thresholds": {"unmapped": 0.1}}
    assert [aggregate_value(v) for v in ("12", "0.5", "-3e-2", "97%", "true", None)] == [
        "12",
        "0.5",
        "-3e-2",
        "97%",
        "true",
        None,
    ]
    for value in ("1950-01-02", "Smith", "12 Main St", "[1, 2]"):
        assert aggregate_value(value) == "withheld (not an aggregate)"


def test_user_text_is_escaped(tmp_path, make_config):
    config = make_config(_patients(tmp_path, "a.ndjson", 1, bad=False))
    _core_run(config)
    with open_warehouse(config.warehouse) as con:
        con.execute(
            "INSERT INTO ops.validation_results VALUES "
            "(?, '<script>alert(1)</script>', 'x', 'warning', true, NULL, 0, NULL, now())",
            [config.run_id],
        )
    html = write_report(config.warehouse).html.read_text()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_report_renders_in_headless_chromium_without_errors_or_requests(tmp_path, two_runs):
    browser = find_browser()
    if browser is None:
        pytest.skip("no chromium on PATH: `make test` installs Debian's chromium when run as root")
    _, second = two_runs
    files = write_report(second.warehouse)
    page = load_page(
        browser,
        files.html.as_uri(),
        tmp_path / "profile",
        {
            "title": "document.title",
            "digest": "document.getElementById('digest').textContent",
            "status": "document.getElementById('status').textContent",
            "svgs": "document.querySelectorAll('svg.chart').length",
            "svg_width": "Math.round(document.querySelector('svg.chart').getBoundingClientRect().width)",
            "tables": "document.querySelectorAll('table').length",
        },
    )
    assert page.console_errors == []
    assert page.requests == [files.html.as_uri()]  # the page itself, nothing else
    assert page.failed_requests == []
    assert page.values["title"] == f"ehrlift compliance report · {second.run_id}"
    assert page.values["digest"] == files.digest
    assert page.values["status"] == "BLOCKED for back-load"
    assert page.values["svgs"] == 5  # outcome per format, by source, by target, two suite trends
    assert page.values["svg_width"] > 300
    assert page.values["tables"] >= 12
    shot = tmp_path / "report.png"
    shot.write_bytes(page.screenshot)
    assert page.screenshot[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", page.screenshot[16:24])
    assert width >= 1000 and height > 2000  # the whole page, not a blank viewport
    assert len(page.screenshot) > 50_000
    assert os.path.getsize(shot) == len(page.screenshot)


def test_report_command_exit_statuses(tmp_path, make_config, capsys):
    from pipelines.cli import main

    assert main(["report", "--warehouse", str(tmp_path / "none.duckdb")]) == 4
    config = make_config(_patients(tmp_path, "a.ndjson", 1, bad=False))
    run_pipeline(config)
    assert main(["report", "--warehouse", str(config.warehouse), "--run", "run-unknown"]) == 5
    assert main(["report", "--warehouse", str(config.warehouse), "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    digest = hashlib.sha256((tmp_path / "r" / "compliance-report.data.json").read_bytes()).hexdigest()
    assert f"sha256 of the data: {digest}" in out

"""The report a reviewer signs: verdict and failures first, diff, drill-downs, sign-off, agreeing counts."""

from __future__ import annotations

import hashlib
import json

import duckdb
import orjson
import pytest

from pipelines.cli import main
from pipelines.common.warehouse import open_warehouse
from pipelines.report import write_report
from pipelines.report.signoff import SIGNOFF_NAME, signed_copy
from pipelines.summary import build_summary, list_runs
from tests.test_report import _core_run, _patients

CRITICAL = "patient.birth_date_not_in_future"  # a real suite expectation: its description is shown
WARNING = "patient.gender_in_value_set"
LONG_SYSTEM = "http://terminology.hl7.org/CodeSystem/some-very-long-local-code-system-name/v2-0203"


def _result(con, run_id: str, name: str, severity: str, ok: bool, pointers: list[str]) -> None:
    con.execute(
        "INSERT INTO ops.validation_results VALUES (?, 'patient', ?, ?, ?, '0.5', ?, ?, now())",
        [run_id, name, severity, ok, len(pointers), json.dumps(pointers)],
    )


def _coverage(con, run_id: str, mapped: int, unmapped: int) -> None:
    for system, method, n in (
        ("http://loinc.org", "exact", mapped),
        (LONG_SYSTEM, "unmapped", unmapped),
    ):
        con.execute(
            "INSERT INTO ops.mapping_log (run_id, source_system, source_code, method, reason, occurrences) "
            "VALUES (?, ?, 'C1', ?, NULL, ?)",
            [run_id, system, method, n],
        )


@pytest.fixture
def reviewed(tmp_path, make_config):
    """Run 1 is clean; run 2 adds a bad line (a new quarantine reason), lower coverage, a critical failure."""
    first = make_config(_patients(tmp_path, "a.ndjson", 3, bad=False))
    _core_run(first)
    second = make_config(_patients(tmp_path, "b.ndjson", 3, first=3))
    _core_run(second)
    with open_warehouse(second.warehouse) as con:
        ids = [
            r[0]
            for r in con.execute(
                'SELECT id FROM fhir."Patient" WHERE run_id = ? ORDER BY id', [second.run_id]
            ).fetchall()
        ]
        _result(con, first.run_id, CRITICAL, "critical", True, [])
        _result(con, first.run_id, WARNING, "warning", True, [])
        _result(con, second.run_id, CRITICAL, "critical", False, ids[:2])
        _result(con, second.run_id, WARNING, "warning", False, ids[2:])
        _coverage(con, first.run_id, 90, 10)
        _coverage(con, second.run_id, 60, 40)
        con.execute("UPDATE ops.runs SET status = 'blocked', exit_code = 7 WHERE run_id = ?", [second.run_id])
    return first, second, ids


def test_verdict_lists_failures_first_with_the_suites_descriptions(reviewed):
    _, second, _ = reviewed
    data = orjson.loads(write_report(second.warehouse).data.read_bytes())
    v = data["verdict"]
    assert v["decision"] == "blocked"
    assert v["critical"] == 1
    kinds = [(f["kind"], f["severity"], f["title"]) for f in v["failures"]]
    assert kinds == [
        ("expectation", "critical", CRITICAL),
        ("quarantine", "review", "invalid_json"),
        ("expectation", "warning", WARNING),
    ]
    assert v["failures"][0]["description"] == "birth_date is not in the future"
    assert v["failures"][0]["anchor"] == f"x-{CRITICAL}"
    assert v["failures"][1]["count"] == 1 and v["failures"][1]["count_label"] == "unit"
    assert v["counts"] == {
        "units_in": 4,
        "units_converted": 3,
        "units_quarantined": 1,
        "units_skipped": 0,
        "resources_loaded": 3,
    }


def test_diff_against_the_previous_run(reviewed):
    first, second, _ = reviewed
    diff = orjson.loads(write_report(second.warehouse).data.read_bytes())["diff"]
    assert diff["previous_run"] == first.run_id
    assert [r["code"] for r in diff["new_reasons"]] == ["invalid_json"]
    assert diff["gone_reasons"] == [] and diff["reason_changes"] == []
    assert diff["coverage"] == {"now": 0.6, "before": 0.9, "delta_points": -30.0}
    assert diff["newly_failing"] == [
        {"expectation": CRITICAL, "severity": "critical", "was": "passed"},
        {"expectation": WARNING, "severity": "warning", "was": "passed"},
    ]
    # The first run has nothing before it.
    assert orjson.loads(write_report(first.warehouse, run_id=first.run_id).data.read_bytes())["diff"] == {
        "previous_run": None
    }


def test_every_drill_down_query_runs_and_points_into_the_landing_zone(reviewed):
    _, second, _ = reviewed
    data = orjson.loads(write_report(second.warehouse).data.read_bytes())
    failed = [r for r in data["validation"]["results"] if not r["success"]]
    assert {r["expectation"] for r in failed} == {CRITICAL, WARNING}
    with duckdb.connect(str(second.warehouse), read_only=True) as con:
        for r in failed:
            rows = con.execute(r["sql"]).fetchall()
            assert sorted(row[1] for row in rows) == sorted(r["landing"])
            assert len(rows) == r["unexpected_count"]
            assert all(p.startswith("landing/") and "#ndjson_line=" in p for p in r["landing"])
        (q,) = data["quarantine"]
        rows = con.execute(q["sql"]).fetchall()
        assert len(rows) == q["count"] == q["units"] == 1
        assert rows[0][0] == q["pointers"][0]
    html = write_report(second.warehouse).html.read_text()
    assert f'id="x-{CRITICAL}"' in html and 'id="q-invalid_json"' in html
    assert html.count('<details class="drill">') == 3


def test_sign_records_a_hashed_signoff_and_fills_the_block(reviewed, capsys):
    _, second, _ = reviewed
    wh = str(second.warehouse)
    files = write_report(second.warehouse)
    assert 'id="signoff-blank"' in files.html.read_text()
    # A digest that is not the report's: nothing signed (exit 5).
    bad = ["report", "sign", "--warehouse", wh, "--reviewer", "A. Reviewer", "--role", "compliance officer"]
    assert main([*bad, "--decision", "rejected", "--digest", "0" * 64]) == 5
    with pytest.raises(SystemExit) as exc:
        main([*bad, "--decision", "maybe"])
    assert exc.value.code == 2
    capsys.readouterr()
    ok = [*bad, "--decision", "approved-with-conditions", "--note", "after re-run", "--digest", files.digest]
    assert main(ok) == 0
    out = capsys.readouterr().out
    with duckdb.connect(wh, read_only=True) as con:
        rows = con.execute(
            "SELECT signoff_sha256, run_id, data_sha256, reviewer, role, decision, note, "
            "strftime(signed_at AT TIME ZONE 'UTC', '%Y-%m-%dT%H:%M:%SZ') FROM ops.report_signoffs"
        ).fetchall()
    ((sha, run_id, data_sha, reviewer, role, decision, note, signed_at),) = rows
    assert (run_id, data_sha, reviewer, role, decision, note) == (
        second.run_id,
        files.digest,
        "A. Reviewer",
        "compliance officer",
        "approved-with-conditions",
        "after re-run",
    )
    copy = (files.html.parent / SIGNOFF_NAME).read_bytes()
    assert hashlib.sha256(copy).hexdigest() == sha
    fields = {"reviewer": reviewer, "role": role, "decision": decision, "note": note, "signed_at": signed_at}
    assert copy == signed_copy(run_id, data_sha, fields)
    assert f"sha256 of the signed copy: {sha}" in out
    html = files.html.read_text()
    assert "A. Reviewer" in html and "signs this data" in html and 'id="signoff-blank"' not in html
    # The data digest is unchanged by signing: a sign-off signs the data, it is not part of it.
    assert write_report(second.warehouse).digest == files.digest


def test_cli_summary_and_report_agree_on_every_count(tmp_path, make_config, capsys):
    src = _patients(tmp_path, "a.ndjson", 4)
    wh = tmp_path / "data" / "warehouse.duckdb"
    assert main(["run", str(src), "--warehouse", str(wh), "--no-progress"]) in (0, 7)
    run_out = capsys.readouterr().out
    assert main(["report", "--warehouse", str(wh)]) == 0
    report_out = capsys.readouterr().out
    with duckdb.connect(str(wh), read_only=True) as con:
        run_id = con.execute("SELECT run_id FROM ops.runs").fetchone()[0]
        summary = build_summary(con, run_id)
        (listed,) = list_runs(con, 5)  # what `ehrlift runs` prints
    data = orjson.loads(next((wh.parent / "reports" / run_id).glob("*.data.json")).read_bytes())
    t, rec = summary.totals, data["reconciliation"]
    assert (t.files, t.units, t.converted, t.quarantined, t.skipped) == (
        rec["totals"]["files"],
        rec["totals"]["units"],
        rec["totals"]["converted"],
        rec["totals"]["quarantined"],
        rec["totals"]["skipped"],
    )
    assert summary.resources_by_type == rec["resources_by_type"]
    assert [listed[k] for k in ("files", "units", "converted", "quarantined", "skipped", "resources")] == [
        rec["totals"][k] for k in ("files", "units", "converted", "quarantined", "skipped", "resources")
    ]
    assert summary.quarantine_reasons == {q["code"]: q["units"] for q in data["quarantine"]}
    c = data["verdict"]["counts"]
    assert c["resources_loaded"] == sum(summary.resources_by_type.values())
    # The CLI prints the same numbers, labelled units and resources.
    line = next(x for x in run_out.splitlines() if "total" in x)
    assert [int(n) for n in line.replace("│", " ").split()[1:]] == [
        t.files,
        t.units,
        t.converted,
        t.quarantined,
        t.skipped,
    ]
    assert (
        f"{c['units_in']} units in = {c['units_converted']} converted + {c['units_quarantined']} quarantined "
        f"+ {c['units_skipped']} skipped; {c['resources_loaded']} FHIR resources loaded"
    ) in report_out.replace("\n", " ")


_FIRST_SCREEN = """JSON.stringify(['verdict', 'diff', 'signoff'].map(id => {
  const r = document.getElementById(id).getBoundingClientRect();
  return [id, r.top >= 0 && r.bottom <= window.innerHeight && r.width > 100 && r.height > 40];
}))"""
# Every chart text's box, in the chart's own units, must lie inside the chart's drawing (not clipped).
_CLIPPED = """JSON.stringify((() => {
  const out = [];
  let n = 0;
  for (const t of document.querySelectorAll('svg.chart text')) {
    const b = t.getBBox(), vb = t.ownerSVGElement.viewBox.baseVal;
    n += 1;
    if (b.x < -0.5 || b.y < -0.5 || b.x + b.width > vb.width + 0.5 || b.y + b.height > vb.height + 0.5)
      out.push(t.textContent);
  }
  return {n, out};
})())"""


def test_first_screen_shows_verdict_diff_and_signoff_and_no_chart_label_is_clipped(tmp_path, reviewed):
    from pipelines.report.sign import sign_report
    from tests.chromium import find_browser, load_page

    browser = find_browser()
    if browser is None:
        pytest.skip("no chromium on PATH: `make test` installs Debian's chromium when run as root")
    _, second, _ = reviewed
    # Unsigned: blank lines and the sign command, still in the first screen.
    unsigned = write_report(second.warehouse)
    blank = load_page(browser, unsigned.html.as_uri(), tmp_path / "profile0", {"first": _FIRST_SCREEN})
    assert json.loads(blank.values["first"]) == [["verdict", True], ["diff", True], ["signoff", True]]
    sign_report(second.warehouse, reviewer="A. Reviewer", role="compliance officer", decision="rejected")
    files = write_report(second.warehouse)
    page = load_page(
        browser,
        files.html.as_uri(),
        tmp_path / "profile",
        {
            "first": _FIRST_SCREEN,
            "clipped": _CLIPPED,
            "status": "document.getElementById('status').textContent",
            "diff": "document.getElementById('diff').innerText",
            "signoff": "document.getElementById('signoff').innerText",
            "failures": "document.getElementById('verdict-failures').innerText",
            "toc_after": "!!(document.getElementById('signoff').compareDocumentPosition("
            "document.getElementById('toc')) & Node.DOCUMENT_POSITION_FOLLOWING)",
            "files_open": "document.getElementById('recon-files').open",
        },
    )
    assert page.console_errors == [] and page.requests == [files.html.as_uri()]
    assert json.loads(page.values["first"]) == [["verdict", True], ["diff", True], ["signoff", True]]
    assert page.values["status"] == "BLOCKED for back-load"
    assert "invalid_json" in page.values["diff"] and "-30.0 points" in page.values["diff"]
    assert CRITICAL in page.values["diff"]
    assert "A. Reviewer" in page.values["signoff"] and "rejected" in page.values["signoff"]
    assert (
        page.values["failures"]
        .splitlines()[0]
        .startswith("CRITICAL birth_date is not in the future (2 records)")
    )
    assert page.values["toc_after"] is True
    assert page.values["files_open"] is False  # the per-file table starts collapsed
    clipped = json.loads(page.values["clipped"])
    assert clipped["n"] >= 20 and clipped["out"] == []


def test_a_structural_failure_drills_down_to_its_landing_pointers(reviewed):
    _, second, _ = reviewed
    with open_warehouse(second.warehouse) as con:
        (pointer,) = con.execute(
            "SELECT 'landing/' || file_sha256 || '#ndjson_line=' || unit_position FROM ops.ledger "
            "WHERE run_id = ? ORDER BY unit_position LIMIT 1",
            [second.run_id],
        ).fetchone()
        con.execute(
            "INSERT INTO ops.validation_results VALUES (?, 'fhir_structure', 'fhir_structure.Patient', "
            "'critical', false, '1', 1, ?, now())",
            [second.run_id, json.dumps([pointer])],
        )
    data = orjson.loads(write_report(second.warehouse).data.read_bytes())
    (r,) = [r for r in data["validation"]["results"] if r["expectation"] == "fhir_structure.Patient"]
    assert r["description"] == "every Patient resource is structurally valid FHIR R4"
    assert r["landing"] == [pointer]
    with duckdb.connect(str(second.warehouse), read_only=True) as con:
        assert con.execute(r["sql"]).fetchall() == [(pointer,)]
    assert data["verdict"]["failures"][0]["title"] in ("fhir_structure.Patient", CRITICAL)

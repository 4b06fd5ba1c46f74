"""The whole pipeline on generated demo data: the ledger matches exactly what the generator says it wrote."""

from __future__ import annotations

from collections import Counter

from pipelines.demo import generate_demo_data
from pipelines.run import run_pipeline
from tests.ccda_accounting import entry_accounting


def test_demo_run_matches_the_generator_summary(tmp_path, make_config, warehouse):
    demo = generate_demo_data(tmp_path / "demo", patients=40, seed=11)
    run = run_pipeline(make_config(tmp_path / "demo" / "sources", source_system="demo"))
    con = warehouse()
    assert run.reconciles
    # Every deliberate defect has exactly its expected outcome and reason, at its position.
    by_name = {
        name: sha for sha, name in con.execute("SELECT file_sha256, original_name FROM ops.files").fetchall()
    }
    for defect in demo.defects:
        sha = by_name[defect.file.rsplit("/", 1)[1]]
        row = con.execute(
            "SELECT outcome, reason FROM ops.ledger WHERE file_sha256 = ? AND unit_position = ?",
            [sha, defect.position],
        ).fetchone()
        assert row == (defect.outcome, defect.reason), defect
    # Everything that is not a defect converted, and the warehouse holds exactly the valid resources.
    flagged = len(demo.defects)
    manifest_entries = sum(f.entries or 0 for f in demo.files if f.format == "fhir-bulk-manifest")
    outcomes = Counter(dict(con.execute("SELECT outcome, count(*) FROM ops.ledger GROUP BY 1").fetchall()))
    assert outcomes["quarantined"] + outcomes["skipped"] == flagged + manifest_entries
    assert run.warehouse_resources == demo.resources
    assert sum(run.views.values()) > 0 and run.views["patient"] == demo.resources["Patient"]


def test_demo_run_with_ccda_documents_matches_the_generator_summary(tmp_path, make_config, warehouse):
    demo = generate_demo_data(tmp_path / "demo", patients=25, seed=13, ccda=True)
    ccda_files = [f for f in demo.files if f.format == "ccda"]
    assert len(ccda_files) > 25  # a CCD for everyone and a Discharge Summary after an inpatient stay
    run = run_pipeline(make_config(tmp_path / "demo" / "sources", source_system="demo"))
    con = warehouse()
    assert run.reconciles
    # Every C-CDA document converts whole (CCD and Discharge Summary share entries: one resource each).
    rows = con.execute(
        "SELECT l.unit_kind, l.outcome, count(*) FROM ops.ledger l JOIN ops.files f USING (file_sha256) "
        "WHERE f.format = 'ccda' GROUP BY ALL"
    ).fetchall()
    assert rows == [("ccda_document", "converted", len(ccda_files))]
    assert run.warehouse_resources == demo.resources
    assert not any(k in ("CCD", "Discharge Summary") for k in run.unconsumed)
    # Each document's entries are counted by kind; every entry found is converted in the demo.
    assert entry_accounting(con)[0] == len(ccda_files)
    assert con.execute("SELECT count(*) FROM ops.unit_items WHERE found <> converted").fetchone()[0] == 0

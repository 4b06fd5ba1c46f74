"""Demo data through validation: normal demo data passes the gate; the corrupted batch is blocked exactly."""

from __future__ import annotations

import pytest

from pipelines.demo import generate_demo_data
from pipelines.demo.corrupt import LOCAL_LAB, write_corrupt_sources
from pipelines.quality.reconcile import ReconciliationError, check_reconciliation, reconcile
from pipelines.run import convert_stage, land_stage, load_stage, run_pipeline
from pipelines.validate import validate_stage

CORRUPT_FAILURES = {
    # critical: the gate blocks
    "condition.patient_id_resolves",
    "encounter.status_in_value_set",
    "mapping_coverage.unmapped_share_within_threshold",
    "observation.effective_not_before_birth",
    "observation.effective_not_in_future",
    "observation.encounter_id_resolves",
    "observation.value_not_above_physiologic_maximum",
    # warning: reported
    "observation.value_quantity_system_is_ucum",
}


def con_count(con, table: str) -> int:
    return con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]


def test_normal_demo_data_passes_the_gate_and_reconciles(tmp_path, make_config, warehouse):
    generate_demo_data(tmp_path / "demo", patients=25, seed=5, hl7v2=True)
    run = run_pipeline(make_config(tmp_path / "demo" / "sources", source_system="demo"))
    assert run.status == "succeeded"
    assert run.validation["blocked"] is False and run.validation["critical_failed"] == []
    # The same synthetic people arrive through FHIR and HL7 v2 feeds under different ids, but the identity
    # stage links them, so views.patient has one row (one MRN) per person; the legacy lab's local codes
    # have no reviewed crosswalk yet: that is reported, and does not block.
    assert run.validation["warnings_failed"] == ["mapping_coverage.unmapped_share_within_threshold"]
    persons = (
        warehouse().execute("SELECT count(DISTINCT person_id) FROM views.patient_source").fetchall()[0][0]
    )
    assert (
        con_count(warehouse(), "views.patient")
        == persons
        <= con_count(warehouse(), "views.patient_source") - 25
    )
    con = warehouse()
    recon = reconcile(con, run.run_id)
    assert recon.problems() == []
    by_format = recon.by_format()
    for fmt, counts in run.by_format.items():
        row = by_format[fmt]
        assert (row["units"], row["converted"], row["quarantined"], row["skipped"]) == (
            counts.units,
            counts.converted,
            counts.quarantined,
            counts.skipped,
        )
    unconsumed = con.execute(
        "SELECT f.format, sum(u.count) FROM ops.unconsumed u JOIN ops.files f USING (file_sha256) "
        "WHERE u.run_id = ? GROUP BY ALL",
        [run.run_id],
    ).fetchall()
    assert {fmt: row["unconsumed"] for fmt, row in by_format.items() if row["unconsumed"]} == dict(unconsumed)
    assert by_format["hl7v2"]["duplicates_removed"] > 0
    assert sum(n for f in by_format.values() for n in f["resources"].values()) == sum(
        run.warehouse_resources.values()
    )


def test_reconciliation_fails_loudly_when_the_ledger_does_not_add_up(tmp_path, make_config, warehouse):
    generate_demo_data(tmp_path / "demo", patients=5, seed=2)
    config = make_config(tmp_path / "demo" / "sources")
    run_pipeline(config)
    from pipelines.common.warehouse import open_warehouse

    with open_warehouse(config.warehouse) as con:
        check_reconciliation(reconcile(con, config.run_id))  # holds as written
        con.execute(
            "DELETE FROM ops.quarantine "
            "WHERE rowid = (SELECT min(rowid) FROM ops.quarantine WHERE run_id = ?)",
            [config.run_id],
        )
        with pytest.raises(ReconciliationError, match="quarantined units have no quarantine row"):
            check_reconciliation(reconcile(con, config.run_id))
        con.execute(
            "UPDATE ops.run_files SET units = units + 1 WHERE run_id = ? AND status = 'converted' "
            "AND seq = (SELECT min(seq) FROM ops.run_files WHERE run_id = ? AND status = 'converted')",
            [config.run_id, config.run_id],
        )
        with pytest.raises(ReconciliationError, match="the converter reported"):
            check_reconciliation(reconcile(con, config.run_id))


def test_corrupted_batch_fails_exactly_the_expected_expectations(tmp_path, make_config, warehouse):
    generate_demo_data(tmp_path / "demo", patients=15, seed=3)
    write_corrupt_sources(tmp_path / "demo")
    config = make_config(tmp_path / "demo" / "sources", source_system="demo")
    land_stage(config)
    convert_stage(config)
    from pipelines.common.warehouse import open_warehouse

    with open_warehouse(config.warehouse) as con:
        # The normalize stage's decisions for the corrupted batch's codings (one row per decision):
        # its heart rates are LOINC, its condition SNOMED CT, and its five local lab codes map nowhere.
        con.executemany(
            "INSERT INTO ops.mapping_log (run_id, source_system, source_code, method, occurrences) "
            "VALUES (?, ?, ?, ?, ?)",
            [
                (config.run_id, "http://loinc.org", "8867-4", "exact", 4),
                (config.run_id, "http://snomed.info/sct", "44054006", "exact", 1),
                (config.run_id, LOCAL_LAB, "GLU-LOCAL", "unmapped", 1),
                *((config.run_id, LOCAL_LAB, f"LOC-{i}", "unmapped", 1) for i in range(4)),
            ],
        )
    load_stage(config)
    result = validate_stage(config)
    assert result["blocked"] is True
    assert set(result["critical_failed"]) | set(result["warnings_failed"]) == CORRUPT_FAILURES
    con = warehouse()
    assert con.execute("SELECT status, exit_code FROM ops.runs").fetchall() == [("blocked", 7)]
    # Duplicate ids never reach the views: the disagreeing second copy is quarantined by the merge.
    assert con.execute(
        "SELECT count(*) FROM ops.quarantine q JOIN ops.files f USING (file_sha256) "
        "WHERE f.original_name = 'Patient.corrupt.ndjson' AND q.reason_code = 'conflicting_duplicate'"
    ).fetchone() == (1,)
    pointers = dict(
        con.execute(
            "SELECT expectation, record_pointers FROM ops.validation_results WHERE NOT success"
        ).fetchall()
    )
    assert pointers["mapping_coverage.unmapped_share_within_threshold"] == f'["code-system:{LOCAL_LAB}"]'

"""The third-party HL7 v2 corpus through the whole pipeline: every message in the ledger, none crashes."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.run import run_pipeline

pytestmark = pytest.mark.corpus

# Outcomes the merge gives a converted unit whose resources were already there: still a conversion.
MERGE_REASONS = {
    None,
    "newer_version",
    "duplicate_identical",
    "superseded",
    "reference_only_present",
    "conflicting_duplicate",
}
NOT_WELL_FORMED = {
    "hl7_missing_msh",
    "hl7_malformed_msh",
    "hl7_bad_delimiters",
    "hl7_invalid_encoding",
    "hl7_truncated",
    "hl7_binary_junk",
}


def test_hl7v2_corpus_converts(corpus: Path, make_config, warehouse):
    run = run_pipeline(make_config(corpus / "hl7v2", source_system="corpus"))
    con = warehouse()
    assert run.reconciles
    rows = con.execute("""
        SELECT l.reason, count(*) FROM ops.ledger l JOIN ops.files f USING (file_sha256)
        WHERE f.format = 'hl7v2' AND l.unit_kind = 'hl7_message' GROUP BY 1
    """).fetchall()
    by_reason = dict(rows)
    messages = sum(by_reason.values())
    assert messages >= 350
    assert "converter_error" not in by_reason
    well_formed_mapped = (
        messages
        - sum(by_reason.get(r, 0) for r in NOT_WELL_FORMED)
        - by_reason.get("hl7_unsupported_message_type", 0)
    )
    converted = sum(n for reason, n in by_reason.items() if reason in MERGE_REASONS)
    assert converted / well_formed_mapped >= 0.95, by_reason
    # Queries and acknowledgments are accounted for as skipped, never as quarantine to review.
    assert by_reason.get("hl7_no_clinical_content", 0) >= 2
    # Clinical messages: neither query/ack, nor truncated or malformed, nor a byte-identical re-send.
    clinical = (
        messages
        - by_reason.get("hl7_no_clinical_content", 0)
        - sum(by_reason.get(r, 0) for r in NOT_WELL_FORMED)
        - by_reason.get("duplicate_identical", 0)
    )
    kept = converted - by_reason.get("duplicate_identical", 0)
    print(
        f"HL7 v2 corpus: {kept}/{clinical} clinical messages converted or superseded ({kept / clinical:.1%})"
    )
    # Every stored resource's lineage points at a converted unit of the ledger. (The ledger's resource
    # counts can exceed what is stored: a later message in the same run may replace a resource.)
    for table in run.warehouse_resources:
        orphans = con.execute(f"""
            SELECT count(*) FROM fhir."{table}" r LEFT JOIN ops.ledger l
              ON l.file_sha256 = r.file_sha256 AND l.unit_position = r.unit_position
             AND l.outcome = 'converted'
            WHERE l.run_id IS NULL""").fetchone()[0]
        assert orphans == 0, table
    assert run.warehouse_resources["Patient"] >= 20 and run.warehouse_resources["Observation"] >= 50
    assert run.unconsumed  # the loss report is populated for real-world messages

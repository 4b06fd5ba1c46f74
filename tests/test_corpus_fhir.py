"""Every NDJSON and Bundle file of the third-party FHIR R4 corpus lands, and its ledger reconciles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.land import sha256_file
from pipelines.run import run_pipeline

pytestmark = pytest.mark.corpus


def _independent_unit_count(path: Path) -> tuple[str, int] | None:
    """Units counted without ehrlift's code: NDJSON lines, or Bundle entries, or None for other files."""
    data = path.read_bytes()
    if path.suffix == ".ndjson":
        return "ndjson_line", data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
    try:
        doc = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if isinstance(doc, dict) and doc.get("resourceType") == "Bundle":
        return "bundle_entry", len(doc.get("entry", []))
    return None


def test_fhir_r4_corpus_lands_and_reconciles(corpus: Path, make_config, warehouse):
    root = corpus / "fhir-r4"
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".ndjson", ".json"))
    assert len(files) > 50
    run = run_pipeline(make_config(root, source_system="corpus"))
    con = warehouse()
    assert run.reconciles
    checked = 0
    for path in files:
        sha, _ = sha256_file(path)
        rows = con.execute(
            "SELECT unit_kind, count(*), sum(resource_count) FROM ops.ledger "
            "WHERE file_sha256 = ? GROUP BY 1",
            [sha],
        ).fetchall()
        assert rows, f"{path.relative_to(corpus)} has no ledger rows"
        expected = _independent_unit_count(path)
        if expected is None or path.name == "log.ndjson":
            continue
        kind, units = expected
        if rows[0][0] == "file":  # whole-file outcome: the file is not readable as its format claims
            continue
        assert (rows[0][0], rows[0][1]) == (kind, units), path.relative_to(corpus)
        checked += 1
    assert checked >= 50
    # No unit fell through to the converter-bug path, and every resource counted in the ledger is stored.
    assert con.execute("SELECT count(*) FROM ops.ledger WHERE reason = 'converter_error'").fetchone()[0] == 0
    in_ledger = con.execute("SELECT sum(resource_count) FROM ops.ledger").fetchone()[0]
    stored = sum(run.warehouse_resources.values())
    assert in_ledger == stored
    assert run.warehouse_resources["Patient"] >= 100


def test_corpus_rerun_adds_nothing(corpus: Path, make_config, warehouse):
    root = corpus / "fhir-r4" / "sample-bulk-fhir-datasets" / "10-patients"
    first = run_pipeline(make_config(root))
    second = run_pipeline(make_config(root))
    con = warehouse()
    assert first.totals.units > 1000
    assert second.totals.units == 0
    assert second.files_already_processed == first.files_given
    counts = con.execute("SELECT count(*) FROM ops.ledger").fetchone()[0]
    assert counts == first.totals.units

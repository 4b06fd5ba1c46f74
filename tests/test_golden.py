"""Golden files: each case's whole warehouse output, volatile values (run ids, times) left out on purpose.

Regenerate after a deliberate change with `make golden`, then review the diff like code.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import orjson
import pytest

from pipelines.run import run_pipeline
from tests.conftest import REPO

GOLDEN = REPO / "tests" / "golden"
CASES = sorted(
    p for p in GOLDEN.glob("fhir-r4/*") if (p / "input").is_dir()
)  # hl7v2/ is test_hl7v2_golden.py
REGENERATE = os.environ.get("EHRLIFT_REGENERATE_GOLDEN") == "1"


def _outputs(con) -> dict[str, str]:
    resources = []
    for (table,) in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'fhir' ORDER BY 1"
    ).fetchall():
        for rid, doc, source_id, unit_position in con.execute(
            f'SELECT id, resource::VARCHAR, source_id, unit_position FROM fhir."{table}" ORDER BY id'
        ).fetchall():
            # The stored text goes in verbatim: a parse and re-dump would hide a change of decimal spelling.
            head = orjson.dumps(
                {"type": table, "id": rid, "source_id": source_id, "unit_position": unit_position}
            )
            resources.append(head.decode()[:-1] + ',"resource":' + doc + "}")
    ledger = io.StringIO()
    writer = csv.writer(ledger, lineterminator="\n")
    writer.writerow(["file", "unit_position", "unit_kind", "outcome", "reason", "resource_count"])
    writer.writerows(
        con.execute("""
        SELECT f.original_name, unit_position, unit_kind, outcome, coalesce(reason, ''), resource_count
        FROM ops.ledger JOIN ops.files f USING (file_sha256) ORDER BY 1, 2""").fetchall()
    )
    quarantine = io.StringIO()
    writer = csv.writer(quarantine, lineterminator="\n")
    writer.writerow(["file", "unit_position", "reason_code", "message"])
    writer.writerows(
        con.execute("""
        SELECT f.original_name, unit_position, reason_code, message
        FROM ops.quarantine JOIN ops.files f USING (file_sha256) ORDER BY 1, 2""").fetchall()
    )
    return {
        "resources.ndjson": "\n".join(resources) + "\n",
        "ledger.csv": ledger.getvalue(),
        "quarantine.csv": quarantine.getvalue(),
    }


@pytest.mark.parametrize("case", CASES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_golden(case: Path, make_config, warehouse):
    run_pipeline(make_config(case / "input", source_system="golden"))
    outputs = _outputs(warehouse())
    expected_dir = case / "expected"
    if REGENERATE:
        expected_dir.mkdir(exist_ok=True)
        for name, text in outputs.items():
            (expected_dir / name).write_text(text)
    for name, text in outputs.items():
        assert text == (expected_dir / name).read_text(), f"{case.name}/{name} differs: run `make golden`"

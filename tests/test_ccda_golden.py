"""Golden files for the C-CDA converter: each case's document and everything it yields, compared whole.

Cases: a hand-written progress note touching every section family, value type and time variant
(sections), and the demo generator's CCD and Discharge Summary. Regenerate after a deliberate change
with EHRLIFT_REGENERATE_GOLDEN=1 (`make golden`), then review the diff like code.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import orjson
import pytest

from pipelines.convert.ccda.converter import convert_document
from tests.conftest import REPO

GOLDEN = REPO / "tests" / "golden" / "ccda"
CASES = sorted(p for p in GOLDEN.glob("*") if (p / "input" / "document.xml").is_file())
REGENERATE = os.environ.get("EHRLIFT_REGENERATE_GOLDEN") == "1"


def render(case: Path) -> str:
    data = (case / "input" / "document.xml").read_bytes()
    out, doc = convert_document(data, "golden", f"{case.name}:1", f"landing/golden/{case.name}")
    rows = [_verbatim(r.json) for r in sorted(out.resources, key=lambda r: (r.resource_type, r.id))]
    accounting = {
        "found": dict(sorted(doc.found.items())),
        "converted": dict(sorted(doc.converted.items())),
        "unconsumed": dict(sorted(out.unconsumed.items())),
    }
    result = {"container": out.container, "entries": accounting, "resources": rows}
    return orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n"


def _verbatim(text: bytes):
    # Decimals stay as spelled ("1.030" is not 1.03): a float round trip would hide a precision change.
    return json.loads(text, parse_float=lambda s: orjson.Fragment(s.encode()))


def test_cases_cover_the_document_types_and_sections():
    assert {p.name for p in CASES} >= {"sections", "ccd", "discharge_summary"}
    # One case per document type the converter recognises.
    types = {orjson.loads((p / "expected" / "resources.json").read_bytes())["container"] for p in CASES}
    with (REPO / "pipelines" / "convert" / "ccda" / "maps" / "document_types.csv").open() as fh:
        known = {row["name"] for row in csv.DictReader(fh)} - {"US Realm Header"}
    assert types == known


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.name)
def test_ccda_golden(case: Path):
    text = render(case)
    expected = case / "expected" / "resources.json"
    if REGENERATE:
        expected.parent.mkdir(exist_ok=True)
        expected.write_text(text)
    assert text == expected.read_text(), f"{case.name} differs: regenerate with EHRLIFT_REGENERATE_GOLDEN=1"

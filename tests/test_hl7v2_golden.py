"""Golden files for the HL7 v2 mappers: each case's message and the whole list of resources it yields.

Regenerate after a deliberate change with EHRLIFT_REGENERATE_GOLDEN=1, then review the diff like code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import orjson
import pytest

from pipelines.convert.hl7v2.messages import convert_message
from pipelines.convert.hl7v2.tokenizer import parse_message
from tests.conftest import REPO

GOLDEN = REPO / "tests" / "golden" / "hl7v2"
CASES = sorted(p for p in GOLDEN.glob("*") if (p / "input" / "message.hl7").is_file())
REGENERATE = os.environ.get("EHRLIFT_REGENERATE_GOLDEN") == "1"


def render(case: Path) -> str:
    """The case's resources, sorted by type and id, each with its stand-in flag, as pretty JSON."""
    msg = parse_message((case / "input" / "message.hl7").read_bytes())
    out = convert_message(msg, "golden", f"{case.name}:1")
    rows = [
        {"reference_only": r.reference_only, "resource": _verbatim(r.json)}
        for r in sorted(out.resources, key=lambda r: (r.resource_type, r.id))
    ]
    doc = {"container": out.container, "unconsumed": dict(sorted(out.unconsumed.items())), "resources": rows}
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n"


def _verbatim(text: bytes):
    # Decimals stay as spelled ("105.0" is not 105): a float round trip would hide a precision change.
    return json.loads(text, parse_float=lambda s: orjson.Fragment(s.encode()))


def test_every_message_type_has_a_case():
    names = {p.name for p in CASES}
    for case in (
        "adt_a01",
        "adt_a40",
        "oru_r01",
        "orm_o01",
        "oml_o21",
        "siu_s12",
        "dft_p03",
        "rde_o11",
        "ras_o17",
        "vxu_v04",
        "mdm_t02",
    ):
        assert case in names


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.name)
def test_hl7v2_golden(case: Path):
    text = render(case)
    expected = case / "expected" / "resources.json"
    if REGENERATE:
        expected.parent.mkdir(exist_ok=True)
        expected.write_text(text)
    assert text == expected.read_text(), f"{case.name} differs: regenerate with EHRLIFT_REGENERATE_GOLDEN=1"

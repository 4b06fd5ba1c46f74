"""A bad first NDJSON line is one quarantined unit: detection never lets one line decide for the file."""

from __future__ import annotations

import orjson
import pytest

from pipelines import formats
from pipelines.run import run_pipeline
from tests.conftest import ledger, resource

GOOD = [orjson.dumps(resource("Patient", f"p{i}")) for i in range(3)]
BIG = orjson.dumps(resource("Patient", "big", text={"status": "generated", "div": "x" * (70 << 10)}))

FIRST_LINES = {
    "over_64_kib": (BIG, "converted", None),
    "broken_json": (b'{"resourceType":"Patient","id":', "quarantined", "invalid_json"),
    "nul_byte": (b'{"resourceType":"Patient","id":"a\x00"}', "quarantined", "invalid_json"),
    "thousand_digits": (b'{"resourceType":"Basic","n":' + b"9" * 1000 + b"}", None, None),
    "bare_cr": (GOOD[0] + b"\r" + GOOD[1], "quarantined", "invalid_json"),
    "array": (b"[1,2,3]", "quarantined", "not_an_object"),
    "over_64_kib_broken": (
        b'{"resourceType":"Patient","x":"' + b"y" * (70 << 10),
        "quarantined",
        "invalid_json",
    ),
}


@pytest.mark.parametrize("case", sorted(FIRST_LINES))
def test_a_bad_first_line_loses_only_itself(case, tmp_path, make_config, warehouse):
    first, outcome, reason = FIRST_LINES[case]
    src = tmp_path / "src" / "Patient.ndjson"
    src.parent.mkdir()
    src.write_bytes(b"\n" + first + b"\n" + b"\n".join(GOOD) + b"\n")
    assert formats.detect(src)[0] == formats.FHIR_NDJSON
    run = run_pipeline(make_config(src))
    rows = ledger(warehouse())
    assert [r[1:] for r in rows[2:]] == [(i, "ndjson_line", "converted", None, 1) for i in (3, 4, 5)]
    assert rows[0][1:5] == (1, "ndjson_line", "skipped", "blank_line")
    if outcome is not None:
        assert rows[1][1:5] == (2, "ndjson_line", outcome, reason)
    else:  # a number past 64 bits: either reading is fine, as long as the line has its own row
        assert rows[1][1:3] == (2, "ndjson_line")
    assert run.reconciles


def test_a_lone_broken_line_is_one_quarantined_unit(tmp_path, make_config, warehouse):
    src = tmp_path / "one.json"
    src.write_bytes(b'{"resourceType":"Patient","id":')
    run_pipeline(make_config(src))
    assert ledger(warehouse()) == [("one.json", 1, "resource", "quarantined", "invalid_json", 0)]


def test_pretty_printed_documents_are_not_taken_for_ndjson(tmp_path):
    src = tmp_path / "pretty.json"
    src.write_bytes(
        orjson.dumps(resource("Patient", "p1", name=[{"family": "F"}]), option=orjson.OPT_INDENT_2)
    )
    assert formats.detect(src) == (formats.FHIR_RESOURCE, "Patient")
    big = tmp_path / "big.json"
    big.write_bytes(b"\n\n" + BIG)  # one line longer than the window, and nothing after it
    assert formats.detect(big)[0] == formats.FHIR_RESOURCE

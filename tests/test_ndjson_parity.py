"""The set-based NDJSON path (DuckDB) and the per-unit Python path give the same bytes and reasons."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from pipelines.common.unit import Quarantine
from pipelines.convert.fhir.prepare import ResourcePreparer, parse_line
from pipelines.land import sha256_file
from pipelines.normalize import parse_exact
from pipelines.run import run_pipeline
from terminology.normalize import strip_added

TRICKY = [
    b'{"resourceType":"Patient","id":"p1","name":[{"family":"O\'Brien \\"Bob\\""}],"birthDate":"1950-01-01"}',
    b'{ "resourceType" : "Observation" , "id" : "o1", "subject" : {"reference" : "Patient/p1"}, "v": 1.50 }',
    b'{"id":"o2","resourceType":"Observation","subject":{"reference":"Patient\\/p1"},"valueQuantity":{"value":3.0e2}}',
    b'{"resourceType":"Observation","status":"final","subject":{"reference":"Patient/p1/_history/2"}}',
    b'{"resourceType":"Observation","meta":{"id":"m"},"id":"o3","subject":{"reference":"#x"}}',
    b'{"status":"final","resourceType":"Observation","id":"o4","note":[{"text":"see {\\"id\\":\\"zz\\"}"}]}',
    b'{"resourceType":"Condition","id":"c1","subject":{"reference":"urn:uuid:abc"},'
    b'"asserter":{"reference":"Practitioner?identifier=x|1"},"recorder":{"reference":"https://x.org/fhir/Patient/1"}}',
    b'{"resourceType":"Patient","id":"p\\u0032","gender":"other"}',
    b'{"resourceType":"Patient","id":"nan-and-inf","name":[{"text":"Nancy Infante"}]}',
    b'{"resourceType":"Patient","id":"p9","extension":[{"url":"x","valueDecimal":NaN}]}',
    b'{"resourceType":"Patient","id":"p10","name":[{"family":"X"},]}',
    b'{"resourceType":"Patient","id":null}',
    b'{"resourceType":"Patient","id":"bad id"}',
    b'{"resourceType":7}',
    b'"just a string"',
    b"true",
    b'{"resourceType":"Encounter","id":"e1","subject":{"reference":"Patient/p1"},"participant":[{"individual":'
    b'{"reference":"Practitioner/d1"}},{"individual":{"reference":"Practitioner/d2"}}],"period":{"start":"2020"}}',
    b'\t{"resourceType":"Patient","id":"tabbed"}  \r',
    '{"resourceType":"Patient","id":"u1","name":[{"family":"Ærøskøbing 東京"}]}'.encode(),
]


def _expected(raw: bytes, position: int, sha: str) -> tuple[str, str | None, bytes | None]:
    """(outcome, reason, resource bytes) from the per-unit Python path alone."""
    stripped = raw.strip()
    if not stripped:
        return "skipped", "blank_line", None
    preparer = ResourcePreparer("parity", sha)
    try:
        staged = preparer.prepare(stripped, parse_line(stripped), position)
    except Quarantine as q:
        return "quarantined", q.reason, None
    return "converted", None, staged.json


def _check_file(path: Path, make_config, warehouse) -> int:
    run_pipeline(make_config(path, source_system="parity"))
    con = warehouse()
    sha, _ = sha256_file(path)
    stored = {}
    for (table,) in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'fhir'"
    ).fetchall():
        for pos, text in con.execute(
            f'SELECT unit_position, resource::VARCHAR FROM fhir."{table}" WHERE file_sha256 = ?', [sha]
        ).fetchall():
            stored[pos] = text.encode()
    ledger = {
        pos: (outcome, reason)
        for pos, outcome, reason in con.execute(
            "SELECT unit_position, outcome, reason FROM ops.ledger WHERE file_sha256 = ?", [sha]
        ).fetchall()
    }
    lines = path.read_bytes().split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    for position, raw in enumerate(lines, 1):
        outcome, reason, text = _expected(raw, position, sha)
        assert ledger[position] == (outcome, reason), (position, raw[:80])
        if text is not None and stored[position] != text:
            # The normalize stage rewrote it (a unit made UCUM, a coding added): once what it added is
            # stripped, the content is the converted one, number spellings included.
            normalized = parse_exact(stored[position].decode())[0]
            assert orjson.dumps(strip_added(normalized)) == parse_exact(text.decode())[1], (
                position,
                raw[:80],
            )
    return len(lines)


def test_tricky_lines_agree(tmp_path, make_config, warehouse):
    path = tmp_path / "tricky.ndjson"
    path.write_bytes(b"\n".join(TRICKY) + b"\n\n")
    assert _check_file(path, make_config, warehouse) == len(TRICKY) + 1


@pytest.mark.corpus
def test_corpus_ndjson_agrees(corpus, tmp_path, make_config, warehouse):
    folder = corpus / "fhir-r4" / "cumulus-etl" / "tests" / "data" / "simple" / "input"
    merged = tmp_path / "merged.ndjson"
    with merged.open("wb") as out:
        for f in sorted(folder.glob("*.ndjson")):
            if f.name != "log.ndjson":
                out.write(f.read_bytes().rstrip(b"\n") + b"\n")
        patients = corpus / "fhir-r4" / "sample-bulk-fhir-datasets" / "10-patients" / "Patient.000.ndjson"
        out.write(patients.read_bytes())
    assert _check_file(merged, make_config, warehouse) > 50

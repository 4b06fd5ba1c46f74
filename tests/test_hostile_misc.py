"""Smaller holes: made-up resource types, repeated fullUrls, values in messages, unexpected errors."""

from __future__ import annotations

import orjson
import pytest

from pipelines import cli, formats
from pipelines.common.errors import ExitCode
from pipelines.common.unit import Quarantine
from pipelines.convert.hl7v2.messages import convert_message
from pipelines.convert.hl7v2.tokenizer import parse_message
from pipelines.run import run_pipeline
from tests.conftest import ledger, resource, write_json, write_ndjson


def test_made_up_resource_types_make_no_tables(tmp_path, make_config, warehouse):
    fake = [resource(f"Fake{chr(65 + i)}type", f"f{i}") for i in range(20)]
    write_ndjson(tmp_path / "a.ndjson", resource("Patient", "p1"), *fake, resource("Observation", "o1"))
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": resource("Madeup", "m1")}, {"resource": resource("Patient", "p2")}],
    }
    write_json(tmp_path / "b.json", bundle)
    run = run_pipeline(make_config(tmp_path / "a.ndjson", tmp_path / "b.json"))
    con = warehouse()
    reasons = [r[4] for r in ledger(con)]
    assert reasons == [None] + ["invalid_resource_type"] * 20 + [None] + ["invalid_resource_type", None]
    tables = {
        r[0]
        for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE schema_name = 'fhir'").fetchall()
    }
    assert not any(t.startswith(("Fake", "Madeup")) for t in tables)
    assert run.reconciles


def test_a_repeated_full_url_is_quarantined_and_the_first_entry_converts(tmp_path, make_config, warehouse):
    url = "urn:uuid:11111111-1111-1111-1111-111111111111"
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": url, "resource": resource("Patient", "p1")},
            {"fullUrl": url, "resource": resource("Patient", "p2")},
            {"resource": resource("Observation", "o1", status="final", subject={"reference": url})},
        ],
    }
    write_json(tmp_path / "tx.json", bundle)
    run_pipeline(make_config(tmp_path / "tx.json"))
    con = warehouse()
    assert [(r[1], r[3], r[4]) for r in ledger(con)] == [
        (1, "converted", None),
        (2, "quarantined", "bundle_duplicate_full_url"),
        (3, "converted", None),
    ]
    (message,) = con.execute("SELECT message FROM ops.quarantine").fetchone()
    assert message == "entry fullUrl repeats an earlier entry's"
    obs = orjson.loads(con.execute('SELECT resource::VARCHAR FROM fhir."Observation"').fetchone()[0])
    (pid,) = con.execute("""SELECT id FROM fhir."Patient" WHERE source_id = 'p1'""").fetchone()
    assert obs["subject"]["reference"] == f"Patient/{pid}"


def test_an_unmapped_message_type_is_named_only_when_it_looks_like_one():
    shifted = (
        b"MSH|^~\\&|LAB|FAC|EHR|HOSP|20240131083000+0000|123454^?|ORU^R01|C1|P|2.5.1\r"
        b"PID|1||12345^^^HOSP^MR\r"
    )
    # One field too many before MSH-9: MSH-9 now holds what the sender meant for MSH-10.
    msg = parse_message(shifted.replace(b"|123454^?|ORU^R01|", b"||123454^?|"))
    with pytest.raises(Quarantine) as exc:
        convert_message(msg, "test", "f:1")
    assert exc.value.message == "MSH-9 is not mapped"
    assert "123454" not in exc.value.message
    msg = parse_message(shifted.replace(b"|123454^?|ORU^R01|", b"||BAR^P01|"))
    with pytest.raises(Quarantine) as exc:
        convert_message(msg, "test", "f:1")
    assert exc.value.message == "BAR^P01 is not mapped"


def test_an_unexpected_error_exits_70_without_a_traceback(tmp_path, monkeypatch, capsys):
    src = write_ndjson(tmp_path / "a.ndjson", resource("Patient", "p1"))

    def broken(path, release=None):
        raise RuntimeError("a bug")

    monkeypatch.setattr(formats, "detect", broken)
    warehouse = tmp_path / "w" / "w.duckdb"
    code = cli.main(["run", str(src), "--warehouse", str(warehouse), "--no-progress"])
    assert code == ExitCode.INTERNAL == 70
    err = capsys.readouterr().err
    assert "Traceback" not in err and "a bug" not in err
    assert "internal error (RuntimeError)" in err
    import duckdb

    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        assert con.execute("SELECT status, exit_code FROM ops.runs").fetchall() == [("failed", 70)]
    finally:
        con.close()

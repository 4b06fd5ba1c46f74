"""FHIR R4 ingest end to end: exact ledger rows for good, bad and duplicate units, and idempotent re-runs."""

from __future__ import annotations

import orjson
import pytest

from pipelines.common.ledger import pointer
from pipelines.convert.fhir.prepare import warehouse_id
from pipelines.run import run_pipeline
from tests.conftest import ledger, resource, write_json, write_ndjson


def patient(pid: str, family: str = "Doe", updated: str | None = "2024-01-01T00:00:00Z") -> dict:
    meta = {"lastUpdated": updated} if updated else {}
    return resource("Patient", pid, meta=meta, name=[{"family": family}])


def test_ndjson_units_each_get_one_outcome(tmp_path, make_config, warehouse):
    src = write_ndjson(
        tmp_path / "src" / "Patient.ndjson",
        patient("p1"),
        b'{"resourceType":"Patient","id":"p2"',  # truncated mid-object
        b"",
        b'{"id":"no-type"}',
        b"[1,2,3]",
        b'{"resourceType":"Patient","id":"p3","name":[{"family":"M\xfcller"}]}',
        patient("p1"),  # same bytes again
        patient("p1", family="Other"),  # same id and lastUpdated, different content
        patient("p4"),
    )
    run = run_pipeline(make_config(src))
    con = warehouse()
    assert ledger(con) == [
        ("Patient.ndjson", 1, "ndjson_line", "converted", None, 1),
        ("Patient.ndjson", 2, "ndjson_line", "quarantined", "invalid_json", 0),
        ("Patient.ndjson", 3, "ndjson_line", "skipped", "blank_line", 0),
        ("Patient.ndjson", 4, "ndjson_line", "quarantined", "missing_resource_type", 0),
        ("Patient.ndjson", 5, "ndjson_line", "quarantined", "not_an_object", 0),
        ("Patient.ndjson", 6, "ndjson_line", "quarantined", "invalid_encoding", 0),
        ("Patient.ndjson", 7, "ndjson_line", "skipped", "duplicate_identical", 0),
        ("Patient.ndjson", 8, "ndjson_line", "quarantined", "conflicting_duplicate", 0),
        ("Patient.ndjson", 9, "ndjson_line", "converted", None, 1),
    ]
    assert run.reconciles
    assert run.resources_by_type == {"Patient": 2}
    ids = {r[0] for r in con.execute('SELECT source_id FROM fhir."Patient"').fetchall()}
    assert ids == {"p1", "p4"}
    quarantine = con.execute(
        "SELECT unit_position, reason_code, pointer, message FROM ops.quarantine ORDER BY unit_position"
    ).fetchall()
    sha = con.execute("SELECT file_sha256 FROM ops.files").fetchone()[0]
    assert [(q[0], q[1]) for q in quarantine] == [
        (2, "invalid_json"),
        (4, "missing_resource_type"),
        (5, "not_an_object"),
        (6, "invalid_encoding"),
        (8, "conflicting_duplicate"),
    ]
    line2_offset = len(orjson.dumps(patient("p1"))) + 1
    assert quarantine[0][2] == f"landing/{sha}#ndjson_line=2@{line2_offset}+36"
    # Quarantine pointers are built in SQL for most lines and in Python for some: both match pointer().
    offsets = dict(
        (pos, (off, length))
        for pos, off, length in con.execute(
            "SELECT unit_position, byte_offset, byte_length FROM ops.ledger"
        ).fetchall()
    )
    for pos, _, ptr, _ in quarantine:
        assert ptr == pointer(sha, "ndjson_line", pos, *offsets[pos])
    for _, _, _, message in quarantine:
        assert "Doe" not in message and "ller" not in message and "Other" not in message


def test_rerun_of_the_same_inputs_adds_nothing(tmp_path, make_config, warehouse):
    src = write_ndjson(tmp_path / "src" / "a.ndjson", patient("p1"), b"not json")
    first = run_pipeline(make_config(src))
    second = run_pipeline(make_config(src))
    con = warehouse()
    assert second.files_already_processed == 1
    assert second.totals.units == 0
    assert con.execute("SELECT count(*) FROM ops.ledger").fetchone()[0] == 2
    assert con.execute("SELECT count(*) FROM ops.quarantine").fetchone()[0] == 1
    assert con.execute('SELECT count(*) FROM fhir."Patient"').fetchone()[0] == 1
    assert con.execute("SELECT count(*) FROM ops.files").fetchone()[0] == 1
    assert con.execute("SELECT status FROM ops.runs ORDER BY started_at").fetchall() == [
        ("succeeded",),
        ("succeeded",),
    ]
    assert first.run_id != second.run_id


def test_same_bytes_at_two_paths_land_once(tmp_path, make_config, warehouse):
    a = write_ndjson(tmp_path / "src" / "a.ndjson", patient("p1"))
    b = tmp_path / "src" / "copy" / "b.ndjson"
    b.parent.mkdir()
    b.write_bytes(a.read_bytes())
    run_pipeline(make_config(tmp_path / "src"))
    con = warehouse()
    assert con.execute("SELECT count(*) FROM ops.files").fetchone()[0] == 1
    assert con.execute("SELECT count(*) FROM ops.ledger").fetchone()[0] == 1
    landed = list((tmp_path / "data" / "landing").rglob("*"))
    assert [p.name for p in landed if p.is_file()] == [
        con.execute("SELECT file_sha256 FROM ops.files").fetchone()[0]
    ]


def test_newer_version_in_a_later_export_replaces_and_older_is_superseded(tmp_path, make_config, warehouse):
    v1 = write_ndjson(tmp_path / "e1" / "Patient.ndjson", patient("p1", "Old", "2024-01-01T00:00:00Z"))
    run_pipeline(make_config(v1))
    v2 = write_ndjson(
        tmp_path / "e2" / "Patient.ndjson",
        patient("p1", "New", "2024-06-01T00:00:00Z"),
        patient("p1", "Older", "2023-01-01T00:00:00Z"),
    )
    second = run_pipeline(make_config(v2))
    con = warehouse()
    assert ledger(con, second.run_id) == [
        ("Patient.ndjson", 1, "ndjson_line", "converted", "newer_version", 1),
        ("Patient.ndjson", 2, "ndjson_line", "skipped", "superseded", 0),
    ]
    rows = con.execute("""SELECT id, resource->'name'->0->>'family' FROM fhir."Patient" """).fetchall()
    assert rows == [(warehouse_id("default", "Patient", "p1"), "New")]


def test_bundles_of_each_type_expand_entries_and_resolve_urn_references(tmp_path, make_config, warehouse):
    pat = "urn:uuid:11111111-1111-1111-1111-111111111111"
    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": pat,
                "resource": resource("Patient", "11111111-1111-1111-1111-111111111111"),
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "fullUrl": "urn:uuid:obs-no-id",
                "resource": resource(
                    "Observation",
                    None,
                    status="final",
                    subject={"reference": pat},
                    valueQuantity={"value": 7.10, "unit": "mmol/L"},
                ),
                "request": {"method": "POST", "url": "Observation"},
            },
            {"request": {"method": "DELETE", "url": "Patient/old"}},
            "not an object",
        ],
    }
    write_json(tmp_path / "src" / "tx.json", transaction)
    (tmp_path / "src" / "tx.json").write_bytes(
        (tmp_path / "src" / "tx.json").read_bytes().replace(b"7.1", b"7.10")
    )
    write_json(
        tmp_path / "src" / "search.json",
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [
                {"resource": resource("Condition", "c1"), "search": {"mode": "match"}},
                {"response": {"status": "200"}},
            ],
        },
    )
    for btype in ("collection", "batch"):
        write_json(
            tmp_path / "src" / f"{btype}.json",
            {
                "resourceType": "Bundle",
                "type": btype,
                "entry": [{"resource": resource("Location", f"l-{btype}")}],
            },
        )
    run = run_pipeline(make_config(tmp_path / "src"))
    con = warehouse()
    assert ledger(con) == [
        ("batch.json", 1, "bundle_entry", "converted", None, 1),
        ("collection.json", 1, "bundle_entry", "converted", None, 1),
        ("search.json", 1, "bundle_entry", "converted", None, 1),
        ("search.json", 2, "bundle_entry", "skipped", "bundle_entry_without_resource", 0),
        ("tx.json", 1, "bundle_entry", "converted", None, 1),
        ("tx.json", 2, "bundle_entry", "converted", None, 1),
        ("tx.json", 3, "bundle_entry", "skipped", "bundle_delete_request", 0),
        ("tx.json", 4, "bundle_entry", "quarantined", "invalid_bundle_entry", 0),
    ]
    assert run.by_format["fhir-bundle"].files == 4
    obs = con.execute('SELECT resource::VARCHAR FROM fhir."Observation"').fetchone()[0]
    pid = warehouse_id("default", "Patient", "11111111-1111-1111-1111-111111111111")
    assert orjson.loads(obs)["subject"]["reference"] == f"Patient/{pid}"
    assert '"value":7.10' in obs


def test_bulk_manifest_lands_local_outputs_and_accounts_for_each_entry(tmp_path, make_config, warehouse):
    export = tmp_path / "export"
    write_ndjson(export / "Patient.000.ndjson", patient("p1"), patient("p2"))
    write_json(
        export / "manifest.json",
        {
            "transactionTime": "2024-01-01T00:00:00Z",
            "request": "https://ehr.example.org/$export",
            "requiresAccessToken": False,
            "output": [
                {"type": "Patient", "url": "Patient.000.ndjson", "count": 2},
                {"type": "Observation", "url": "Observation.000.ndjson", "count": 3},
                {"type": "Condition", "url": "https://ehr.example.org/files/c.ndjson"},
                {"type": "Encounter"},
            ],
            "error": [],
        },
    )
    # Only the manifest is named: its local output is landed through it.
    run = run_pipeline(make_config(export / "manifest.json"))
    con = warehouse()
    assert ledger(con) == [
        ("Patient.000.ndjson", 1, "ndjson_line", "converted", None, 1),
        ("Patient.000.ndjson", 2, "ndjson_line", "converted", None, 1),
        ("manifest.json", 1, "manifest_output", "skipped", "manifest_output_landed", 0),
        ("manifest.json", 2, "manifest_output", "quarantined", "manifest_output_missing", 0),
        ("manifest.json", 3, "manifest_output", "quarantined", "manifest_output_remote", 0),
        ("manifest.json", 4, "manifest_output", "quarantined", "invalid_manifest_entry", 0),
    ]
    assert run.reconciles


@pytest.mark.parametrize(
    ("name", "content", "outcome", "reason"),
    [
        ("empty.ndjson", b"", "quarantined", "empty_file"),
        ("notes.txt", b"call the patient back tomorrow\n", "quarantined", "unknown_format"),
        ("utf16.json", '{"resourceType":"Patient"}'.encode("utf-16"), "quarantined", "unsupported_encoding"),
        (
            "broken.json",
            b'{\n "resourceType": "Bundle",\n "type": "collection",\n "entry": [{"resource": {',
            "quarantined",
            "invalid_json",
        ),
        (
            "latin1.json",
            b'{\n "resourceType": "Bundle",\n "type": "collection",\n "entry": '
            b'[{"resource": {"resourceType":"Patient","id":"x","name":[{"family":"M\xfcller"}]}}]}',
            "quarantined",
            "invalid_encoding",
        ),
        ("other.json", b'{\n "PatientId": 12\n}', "quarantined", "json_not_fhir"),
        ("log.ndjson", b'{"exportId":"e","eventId":"kickoff"}\n', "skipped", "export_log"),
        (
            "doc.xml",
            b'<?xml version="1.0"?><ClinicalDocument xmlns="urn:hl7-org:v3"/>',
            "quarantined",
            "ccda_unknown_document_type",
        ),
    ],
)
def test_whole_file_outcomes(tmp_path, make_config, warehouse, name, content, outcome, reason):
    src = tmp_path / "src" / name
    src.parent.mkdir()
    src.write_bytes(content)
    run = run_pipeline(make_config(src))
    con = warehouse()
    assert [row[3:5] for row in ledger(con)] == [(outcome, reason)]
    assert run.reconciles


def test_single_resource_file_is_one_unit(tmp_path, make_config, warehouse):
    write_json(tmp_path / "src" / "charge.json", resource("ChargeItem", "example", status="billable"))
    run_pipeline(make_config(tmp_path / "src"))
    assert ledger(warehouse()) == [("charge.json", 1, "resource", "converted", None, 1)]


def test_hidden_files_are_not_landed(tmp_path, make_config, warehouse):
    write_ndjson(tmp_path / "src" / "a.ndjson", patient("p1"))
    (tmp_path / "src" / ".DS_Store").write_bytes(b"\x00\x01")
    run_pipeline(make_config(tmp_path / "src"))
    assert [r[0] for r in ledger(warehouse())] == ["a.ndjson"]


def test_source_system_namespaces_ids(tmp_path, make_config, warehouse):
    a = write_ndjson(tmp_path / "a" / "Patient.ndjson", patient("1"))
    b = write_ndjson(tmp_path / "b" / "Patient.ndjson", patient("1", family="Else"))
    run_pipeline(make_config(a, source_system="clinic-a"))
    run_pipeline(make_config(b, source_system="clinic-b"))
    rows = warehouse().execute('SELECT source_system, id FROM fhir."Patient" ORDER BY 1').fetchall()
    assert rows == [
        ("clinic-a", warehouse_id("clinic-a", "Patient", "1")),
        ("clinic-b", warehouse_id("clinic-b", "Patient", "1")),
    ]

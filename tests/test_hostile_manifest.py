"""A bulk-export manifest brings in only files inside its own folder; every other form is refused unread."""

from __future__ import annotations

import os

from pipelines.run import run_pipeline
from tests.conftest import ledger, resource, write_json, write_ndjson


def test_manifest_outputs_outside_its_folder_are_quarantined_and_never_read(tmp_path, make_config, warehouse):
    # A valid FHIR file outside the export folder: were it read, it would convert into the warehouse.
    secret = write_ndjson(tmp_path / "secret" / "Patient.ndjson", resource("Patient", "outside"))
    export = tmp_path / "export"
    write_ndjson(export / "Patient.000.ndjson", resource("Patient", "inside"))
    write_ndjson(export / "sub" / "Observation.000.ndjson", resource("Observation", "o1", status="final"))
    os.symlink(secret, export / "link.ndjson")
    os.symlink(tmp_path / "secret", export / "linkdir")
    outputs = [
        "Patient.000.ndjson",  # 1: inside, relative
        (export / "sub" / "Observation.000.ndjson").as_uri(),  # 2: inside, file: URL
        "../secret/Patient.ndjson",  # 3
        str(secret),  # 4: absolute path
        secret.as_uri(),  # 5: file:///...
        "file://localhost" + str(secret),  # 6
        "file://evil.example.org" + str(secret),  # 7
        "link.ndjson",  # 8: symlink to a file outside
        "linkdir/Patient.ndjson",  # 9: through a symlinked folder
        "%2e%2e/secret/Patient.ndjson",  # 10: percent-encoded climb
        "sub/../../secret/Patient.ndjson",  # 11
        "ftp://ehr.example.org/Patient.ndjson",  # 12
        "data:application/fhir+ndjson,{}",  # 13
        "C:/secret/Patient.ndjson",  # 14: a drive path
        "Patient\x00.ndjson",  # 15
        ".",  # 16: the folder itself
    ]
    write_json(
        export / "manifest.json",
        {
            "transactionTime": "2024-01-01T00:00:00Z",
            "request": "https://ehr.example.org/$export",
            "requiresAccessToken": False,
            "output": [{"type": "Patient", "url": url} for url in outputs],
        },
    )
    run = run_pipeline(make_config(export / "manifest.json"))
    con = warehouse()
    outside = "manifest_output_outside"
    rows = [r for r in ledger(con) if r[0] == "manifest.json"]
    assert [(r[1], r[3], r[4]) for r in rows] == [
        (1, "skipped", "manifest_output_landed"),
        (2, "skipped", "manifest_output_landed"),
        (3, "quarantined", outside),
        (4, "quarantined", outside),
        (5, "quarantined", outside),
        (6, "quarantined", outside),
        (7, "quarantined", outside),
        (8, "quarantined", outside),
        (9, "quarantined", outside),
        (10, "quarantined", outside),
        (11, "quarantined", outside),
        (12, "quarantined", "manifest_output_unsupported_url"),
        (13, "quarantined", "manifest_output_unsupported_url"),
        (14, "quarantined", outside),
        (15, "quarantined", "invalid_manifest_entry"),
        (16, "quarantined", outside),
    ]
    messages = dict(con.execute("SELECT unit_position, message FROM ops.quarantine").fetchall())
    assert messages[3] == "output url climbs out of the manifest's folder"
    assert messages[4] == "output url is an absolute path"
    assert messages[5] == "output file: URL names a file outside the manifest's folder"
    assert messages[6] == messages[5]
    assert messages[7] == "output file: URL names another host"
    assert messages[8] == "output url resolves (through a symlink) outside the manifest's folder"
    assert messages[9] == messages[8]
    assert messages[10] == messages[11] == messages[3]
    for message in messages.values():
        assert "secret" not in message and "Patient" not in message
    # Only the two inside files were landed; the outside file never reached the landing zone.
    assert sorted(r[0] for r in con.execute("SELECT original_name FROM ops.files").fetchall()) == [
        "Observation.000.ndjson",
        "Patient.000.ndjson",
        "manifest.json",
    ]
    ids = {r[0] for r in con.execute('SELECT source_id FROM fhir."Patient"').fetchall()}
    assert ids == {"inside"}
    assert run.reconciles

"""Entries under a source folder that are not read (links out, FIFOs, dangling links) get ledger rows."""

from __future__ import annotations

import os

from pipelines.run import run_pipeline
from tests.conftest import ledger, resource, write_ndjson


def test_links_out_fifos_and_dangling_links_are_quarantined_unread(tmp_path, make_config, warehouse):
    src = tmp_path / "src"
    write_ndjson(src / "a.ndjson", resource("Patient", "inside"))
    outside = write_ndjson(tmp_path / "elsewhere" / "b.ndjson", resource("Patient", "outside"))
    os.symlink(outside, src / "out.ndjson")
    os.symlink(tmp_path / "nowhere.ndjson", src / "dangling.ndjson")
    os.symlink(src / "loop", src / "loop")
    os.mkfifo(src / "pipe.ndjson")  # opening it would block the run forever
    os.symlink(src / "a.ndjson", src / "same.ndjson")  # inside the sources: the same file, read once
    config = make_config(src)
    first = run_pipeline(config)
    con = warehouse()
    assert ledger(con) == [
        ("a.ndjson", 1, "ndjson_line", "converted", None, 1),
        ("dangling.ndjson", 0, "file", "quarantined", "source_not_regular_file", 0),
        ("loop", 0, "file", "quarantined", "source_not_regular_file", 0),
        ("out.ndjson", 0, "file", "quarantined", "source_symlink_outside", 0),
        ("pipe.ndjson", 0, "file", "quarantined", "source_not_regular_file", 0),
    ]
    messages = sorted(r[0] for r in con.execute("SELECT message FROM ops.quarantine").fetchall())
    assert messages == [
        "dangling or looping symlink",
        "dangling or looping symlink",
        "not a regular file (FIFO, socket or device)",
        "symlink to a file outside the source folders",
    ]
    ids = {r[0] for r in con.execute('SELECT source_id FROM fhir."Patient"').fetchall()}
    assert ids == {"inside"}
    assert first.reconciles
    con.close()
    # A re-run finds every entry accounted for and adds no row.
    second = run_pipeline(make_config(src))
    con = warehouse()
    assert len(ledger(con)) == 5
    assert second.reconciles

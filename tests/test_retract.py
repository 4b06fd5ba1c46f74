"""A way back to green: retracting a bad batch, and a run's gate override recorded with its reason."""

from __future__ import annotations

import duckdb
import pytest

from pipelines.cli import main
from pipelines.common.errors import ConfigError
from pipelines.demo import generate_demo_data
from pipelines.demo.corrupt import write_corrupt_sources
from pipelines.retract import retract
from pipelines.run import run_pipeline

VIEWS = ("patient", "observation", "condition", "encounter", "observation_coding", "patient_coding")


def _sources(tmp_path):
    generate_demo_data(tmp_path / "demo", patients=10, seed=3)
    good = tmp_path / "demo" / "sources"
    bad = tmp_path / "bad"
    write_corrupt_sources(bad)
    return good, bad / "sources" / "corrupt"


def _batch(tmp_path, seed: int):
    generate_demo_data(tmp_path / f"more-{seed}", patients=6, seed=seed)
    return tmp_path / f"more-{seed}" / "sources"


def _state(path) -> dict[str, list]:
    """Everything an analyst or the back-load sees: resources by content, and the views' rows."""
    with duckdb.connect(str(path), read_only=True) as con:
        tables = [
            r[0]
            for r in con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'fhir'"
            ).fetchall()
        ]
        out = {
            f"fhir.{t}": con.execute(f'SELECT id, content_sha256 FROM fhir."{t}" ORDER BY ALL').fetchall()
            for t in tables
        }
        out = {k: v for k, v in out.items() if v}
        for view in VIEWS:
            out[f"views.{view}"] = con.execute(f"SELECT * FROM views.{view} ORDER BY ALL").fetchall()
        out["person_map"] = con.execute(
            "SELECT patient_id, person_id FROM ops.person_map ORDER BY ALL"
        ).fetchall()
    return out


def test_retract_then_rerun_gives_the_warehouse_that_never_loaded_the_batch(tmp_path, make_config):
    good, bad = _sources(tmp_path)
    later, last = _batch(tmp_path, 4), _batch(tmp_path, 5)
    first = run_pipeline(make_config(good, source_system="demo"))
    assert first.status == "succeeded"
    blocked = run_pipeline(make_config(bad, source_system="demo"))
    assert blocked.status == "blocked"
    # A later run whose data is fine is blocked too while the bad batch is in the views it checks.
    assert run_pipeline(make_config(later, source_system="demo")).status == "blocked"

    warehouse = tmp_path / "data" / "warehouse.duckdb"
    with pytest.raises(SystemExit, match="2"):  # --reason is required
        main(["retract", "--run", blocked.run_id, "--warehouse", str(warehouse)])
    result = retract(warehouse, reason="corrupted export from the lab system", run_id=blocked.run_id)
    assert sum(result.resources.values()) > 0 and result.files == len(list(bad.iterdir()))
    assert result.replaced_units == 0  # the corrupted batch replaced no earlier version
    with pytest.raises(ConfigError, match="already retracted"):
        retract(warehouse, reason="again", run_id=blocked.run_id)
    with duckdb.connect(str(warehouse), read_only=True) as con:
        # The history stays: the blocked run, its ledger and quarantine; the retraction with its reason.
        assert con.execute("SELECT status FROM ops.runs WHERE run_id = ?", [blocked.run_id]).fetchone() == (
            "blocked",
        )
        assert (
            con.execute("SELECT count(*) FROM ops.ledger WHERE run_id = ?", [blocked.run_id]).fetchone()[0]
            > 0
        )
        reasons = con.execute("SELECT DISTINCT reason, run_id FROM ops.retractions").fetchall()
        assert reasons == [("corrupted export from the lab system", blocked.run_id)]
        assert con.execute("SELECT count(*) FROM ops.phi_access WHERE command = 'retract'").fetchone() == (1,)

    # The next run (new data, plus the earlier sources and the bad batch again) is green; the retracted
    # batch is not loaded again.
    again = run_pipeline(make_config(last, good, bad, source_system="demo"))
    assert again.status == "succeeded"

    clean = tmp_path / "clean" / "wh.duckdb"
    for sources in (good, later, last):
        assert run_pipeline(make_config(sources, source_system="demo", warehouse=clean)).status == "succeeded"
    assert _state(warehouse) == _state(clean)


def test_retract_by_file_and_its_errors(tmp_path, make_config):
    good, bad = _sources(tmp_path)
    run_pipeline(make_config(good, bad, source_system="demo"))
    warehouse = tmp_path / "data" / "warehouse.duckdb"
    with duckdb.connect(str(warehouse), read_only=True) as con:
        (sha,) = con.execute(
            "SELECT file_sha256 FROM ops.files WHERE original_name = 'Patient.corrupt.ndjson'"
        ).fetchone()
    result = retract(warehouse, reason="wrong patients", file_sha256=sha)
    assert result.files == 1 and set(result.resources) == {"Patient"}
    with duckdb.connect(str(warehouse), read_only=True) as con:
        assert con.execute('SELECT count(*) FROM fhir."Patient" WHERE file_sha256 = ?', [sha]).fetchone() == (
            0,
        )
    for kwargs, message in (
        ({"reason": " ", "file_sha256": sha}, "needs --reason"),
        ({"reason": "x"}, "either --run ID or --file"),
        ({"reason": "x", "file_sha256": "abc"}, "64 lowercase hex"),
        ({"reason": "x", "file_sha256": "0" * 64}, "no landed file"),
        ({"reason": "x", "run_id": "run-nope"}, "no such run"),
    ):
        with pytest.raises(ConfigError, match=message):
            retract(warehouse, **kwargs)


def test_a_run_gate_override_needs_a_reason_and_is_recorded(tmp_path, capsys):
    _, bad = _sources(tmp_path)
    warehouse = tmp_path / "wh.duckdb"
    base = ["run", str(bad), "--warehouse", str(warehouse), "--source-system", "demo", "--no-progress"]
    assert main([*base, "--override-gate"]) == 5
    assert main([*base, "--reason", "why"]) == 5
    assert main([*base, "--override-gate", "--reason", "known lab defect, accepted by the data owner"]) == 0
    with duckdb.connect(str(warehouse), read_only=True) as con:
        (run_id, status) = con.execute("SELECT run_id, status FROM ops.runs").fetchone()
        assert status == "succeeded"
        row = con.execute("SELECT run_id, reason, critical_failed FROM ops.gate_overrides").fetchone()
    assert row[0] == run_id and row[1] == "known lab defect, accepted by the data owner"
    assert row[2].startswith('["') and "gate overridden" in capsys.readouterr().out

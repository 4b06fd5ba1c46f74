"""The warehouse and the analyst file open in the released DuckDB CLI (an older DuckDB than ehrlift's)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from pipelines.common.warehouse import STORAGE_VERSION, open_warehouse
from pipelines.deid import deidentify
from pipelines.run import run_pipeline
from tests.conftest import resource, write_ndjson

SALT = "compat-salt-0123456789abcdef"


def _cli() -> str:
    # duckdb-cli (a dev dependency) installs its own `duckdb` executable beside the venv's python.
    found = shutil.which("duckdb", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("the duckdb CLI is not installed: `make setup` installs duckdb-cli")
    return found


def _query(cli: str, path: Path, sql: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [cli, "-readonly", "-csv", "-noheader", str(path), "-c", sql],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_cli_is_older_than_the_library_it_must_read_from():
    # Without this the test below proves nothing: the same DuckDB would read any format it writes.
    proc = subprocess.run([_cli(), "-version"], capture_output=True, text=True, timeout=60)
    cli_version = proc.stdout.split()[0].lstrip("v")
    assert tuple(int(x) for x in cli_version.split(".")[:2]) < tuple(
        int(x) for x in duckdb.__version__.split(".")[:2]
    )


def test_warehouse_and_analyst_file_open_in_the_released_cli(tmp_path, make_config):
    cli = _cli()
    patient = resource("Patient", "p1", gender="female", birthDate="1950-01-02")
    obs = resource(
        "Observation",
        "o1",
        status="final",
        subject={"reference": "Patient/p1"},
        code={"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
    )
    config = make_config(write_ndjson(tmp_path / "src" / "x.ndjson", patient, obs))
    run_pipeline(config)
    proc = _query(
        cli, config.warehouse, "SELECT count(*) FROM views.observation; SELECT count(*) FROM ops.ledger"
    )
    assert (proc.returncode, proc.stdout.split()) == (0, ["1", "2"]), proc.stderr

    out = tmp_path / "analyst.duckdb"
    deidentify(config.warehouse, out, salt=SALT)
    proc = _query(cli, out, "SELECT count(*) FROM patient")
    assert (proc.returncode, proc.stdout.split()) == (0, ["1"]), proc.stderr


def test_a_warehouse_in_the_newest_format_is_refused_by_the_released_cli(tmp_path, monkeypatch):
    # The setting is what makes the difference: the same warehouse written in the library's newest format.
    monkeypatch.setenv("EHRLIFT_DUCKDB_STORAGE_VERSION", "latest")
    with open_warehouse(tmp_path / "newest.duckdb"):
        pass
    proc = _query(_cli(), tmp_path / "newest.duckdb", "SELECT 1")
    assert proc.returncode != 0
    assert STORAGE_VERSION == "v1.0.0"

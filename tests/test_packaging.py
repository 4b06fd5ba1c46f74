"""The wheel: the packages with schemas/ and expectations/ inside, the generated R4 schema, no npm tree."""

from __future__ import annotations

import shutil
import subprocess
import zipfile

import pytest

from tests.conftest import REPO


def test_the_wheel_ships_the_data_files_and_not_node_modules(tmp_path):
    bootstrapped = REPO / ".tools" / "bin" / "uv"
    uv = str(bootstrapped) if bootstrapped.exists() else shutil.which("uv")
    if uv is None:
        pytest.skip("no uv to build with (`make setup` installs it)")
    subprocess.run(
        [uv, "build", "--wheel", "--out-dir", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = tmp_path.glob("ehrlift-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    tracked = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "schemas", "expectations"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert {f"pipelines/_shipped/{p}" for p in tracked} <= names
    assert not [n for n in names if "node_modules" in n]
    assert "pipelines/cli.py" in names and "terminology/default/concepts.parquet" in names
    if (REPO / "schemas" / "fhir-r4" / "r4.schema.json").exists():
        assert "pipelines/_shipped/schemas/fhir-r4/r4.schema.json" in names

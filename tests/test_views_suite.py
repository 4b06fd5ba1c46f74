"""Runs the official SQL-on-FHIR v2 test suite through the compiler and requires every test to pass."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipelines.views import run_suite

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("EHRLIFT_CORPUS", REPO.parent / "shared" / "corpus"))
SUITE = CORPUS / "sql-on-fhir" / "sql-on-fhir-v2" / "tests"


@pytest.mark.corpus
def test_official_sql_on_fhir_suite_passes():
    if not SUITE.is_dir():
        pytest.skip(f"SQL-on-FHIR test suite not found at {SUITE} (set EHRLIFT_CORPUS)")
    result = run_suite(SUITE)
    report = "\n".join(f"{f.file} :: {f.title}: {f.reason}" for f in result.failures)
    assert result.total >= 100, f"only {result.total} tests found in {SUITE}"
    assert result.failed == 0, f"{result.summary()}\n{report}"

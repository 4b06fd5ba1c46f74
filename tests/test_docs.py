"""The docs site: generated reference pages are current, and the site builds strict (no broken link)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _generator():
    spec = importlib.util.spec_from_file_location("docs_reference", REPO / "scripts" / "docs_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("page", sorted(_generator().PAGES))
def test_generated_reference_page_is_current(page):
    expected = _generator().PAGES[page]()
    committed = (REPO / "docs" / "reference" / page).read_text(encoding="utf-8")
    assert committed == expected, f"docs/reference/{page} is stale: run `make docs` and commit it"


def test_every_exit_status_is_documented():
    from pipelines.common.errors import EXIT_STATUS_DOCS, ExitCode

    assert set(EXIT_STATUS_DOCS) == set(ExitCode)


def test_the_site_builds_strict(tmp_path):
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The offline plugin writes page.html files, so links work opened from disk.
    page = tmp_path / "site" / "reference" / "cli.html"
    assert "ehrlift run" in page.read_text(encoding="utf-8")

"""Data Docs: written with a relative warehouse path, styled offline without vendored assets, no footers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.cli import main
from pipelines.common.config import RunConfig
from tests.chromium import find_browser, load_page
from tests.conftest import resource, write_ndjson


@pytest.fixture
def relative_run(tmp_path, monkeypatch):
    """`ehrlift run` and `ehrlift report` given relative paths (as `make run` does), no vendored assets."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EHRLIFT_DATA_DOCS_ASSETS", str(tmp_path / "no-assets"))
    write_ndjson(
        Path("src") / "a.ndjson",
        *(resource("Patient", f"p{i}", gender="female") for i in range(3)),
    )
    wh = "data/warehouse.duckdb"
    assert main(["run", "src", "--warehouse", wh, "--no-progress"]) in (0, 7)
    assert main(["report", "--warehouse", wh]) == 0
    (docs,) = (tmp_path / "data" / "reports").glob("*/data-docs")
    return docs


def test_a_relative_warehouse_path_is_made_absolute_once_at_the_edge(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = RunConfig(sources=("x",), warehouse=Path("data/w.duckdb"))
    assert config.warehouse == tmp_path / "data" / "w.duckdb"
    assert config.landing == tmp_path / "data" / "landing"


def test_data_docs_are_written_for_a_relative_warehouse_path(relative_run):
    docs = relative_run
    pages = sorted(p.relative_to(docs).as_posix() for p in docs.rglob("*.html"))
    assert "index.html" in pages
    suites = [p for p in pages if p.startswith("expectations/")]
    results = [p for p in pages if p.startswith("validations/")]
    assert len(suites) >= 10 and len(results) == len(suites)
    index = (docs / "index.html").read_text(encoding="utf-8")
    assert index.count("<tr>") == len(results) + 1  # one row per suite, and the header


def test_data_docs_carry_no_script_no_external_asset_and_no_gx_footer(relative_run):
    docs = relative_run
    pages = list(docs.rglob("*.html"))
    total = sum(p.stat().st_size for p in docs.rglob("*") if p.is_file())
    assert total < 8_000_000  # GX's own images and fonts; no 76 MB vendored assets
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert "<script" not in text, page
        assert "newsletter" not in text and 'id="ge-cta-footer"' not in text, page
        assert "Stay current on everything GX" not in text, page
        assert "<style>\n/* ehrlift's stylesheet for Great Expectations' Data Docs" in text, page


_STYLED = """JSON.stringify({
  font: getComputedStyle(document.body).fontFamily,
  table: (() => { const c = document.querySelector('table td');
                  return c ? getComputedStyle(c).borderTopWidth : null; })(),
  ok: (() => { const i = document.querySelector('.fa-check-circle');
               return i ? getComputedStyle(i, '::before').content : null; })(),
  bad: (() => { const i = document.querySelector('.fa-times');
                return i ? getComputedStyle(i, '::before').content : null; })(),
  scripts: document.querySelectorAll('script').length,
  footer: document.querySelectorAll('footer').length,
  height: document.body.scrollHeight,
})"""


def test_data_docs_render_styled_offline_in_chromium(tmp_path, relative_run):
    browser = find_browser()
    if browser is None:
        pytest.skip("no chromium on PATH: `make test` installs Debian's chromium when run as root")
    docs = relative_run
    (result,) = (docs / "validations" / "patient").rglob("*.html")
    for n, page in enumerate((docs / "index.html", result)):
        loaded = load_page(browser, page.as_uri(), tmp_path / f"profile{n}", {"styled": _STYLED})
        assert loaded.console_errors == [], (page, loaded.requests)
        assert loaded.failed_requests == []
        # Only the page and its own local images: nothing outside the site.
        assert all(url.startswith(docs.as_uri() + "/") for url in loaded.requests), loaded.requests
        styled = json.loads(loaded.values["styled"])
        assert "system-ui" in styled["font"]
        assert styled["table"] == "1px"  # the inlined stylesheet's table borders apply
        assert styled["ok"] == '"✔"'  # status icons drawn as text, not by Font Awesome
        assert styled["scripts"] == 0 and styled["footer"] == 0
    assert styled["bad"] == '"✘"'  # the patient suite failed (no birth dates)

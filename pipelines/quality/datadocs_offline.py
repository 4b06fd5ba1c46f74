"""Data Docs pages made self-contained: styled offline by one inlined stylesheet, no script, no GX footers.

GX's pages load Bootstrap, jQuery, Font Awesome and Vega from CDNs. When a full vendored copy of those
assets exists (scripts/vendor-data-docs-assets.sh, tens of MB) the pages point at it; otherwise, the
default, every external asset and script is removed and expectations/data_docs.css (a few KB covering
the classes the pages use, status icons as text) is inlined, and the index page, which GX fills by
script, is written as a plain table.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import orjson
from markupsafe import escape

from pipelines.common.paths import shipped

log = logging.getLogger(__name__)
_URL = re.compile(r"https?://[^\s\"'()<>]*")
_SCRIPT = re.compile(r"<script\b[^>]*>.*?</script>", re.S | re.I)
# GX includes a newsletter footer in every page, and a tutorials footer unless told not to.
_FOOTERS = (
    re.compile(r"<footer>\s*<p>\s*Stay current on everything GX.*?</footer>", re.S),
    re.compile(r'<footer\b[^>]*id="ge-cta-footer".*?</footer>', re.S),
)


@dataclass(frozen=True)
class SuiteResult:
    """One suite's line on the index page."""

    suite: str
    asset: str
    evaluated: int
    passed: int

    @property
    def success(self) -> bool:
        return self.passed == self.evaluated


def stylesheet() -> str:
    return (shipped("expectations") / "data_docs.css").read_text(encoding="utf-8")


def finish(site: Path, vendored: Path, run_id: str, suites: list[SuiteResult]) -> str:
    """Rewrite every page of the site to make no request; returns the mode used: 'vendored' or 'inline'."""
    manifest = orjson.loads((shipped("expectations") / "data_docs_assets.json").read_bytes())["assets"]
    local: dict[str, Path] = {}
    for asset in manifest:
        package_dir = vendored / re.sub(r"[/@]", "_", asset["package"])
        if (package_dir / asset["file"]).is_file():
            local[asset["url"]] = package_dir / asset["file"]
    mode = "vendored" if len(local) == len(manifest) else "inline"
    if mode == "vendored":
        local = _copy_vendored(site, vendored, manifest)
    else:
        log.info("Data Docs: styled by the inlined stylesheet (no vendored assets)")
        _write_index(site, run_id, suites)
    css = stylesheet()
    logo = site / "static" / "images" / "logo-long.png"
    for page in [*site.rglob("*.html"), *site.rglob("*.css")]:
        if "vendor" in page.relative_to(site).parts:
            continue
        text = page.read_text(encoding="utf-8")
        for footer in _FOOTERS:
            text = footer.sub("", text)
        text = re.sub(r'\s(?:integrity|crossorigin)="[^"]*"', "", text)
        for url in sorted({a["url"] for a in manifest}, key=len, reverse=True):
            escaped = re.escape(url)
            if url in local:
                text = text.replace(url, os.path.relpath(local[url], page.parent))
            else:
                text = re.sub(rf'<script[^>]*src="{escaped}"[^>]*>\s*</script>', "", text)
                text = re.sub(rf'<link[^>]*href="{escaped}"[^>]*>', "", text)
        if mode == "inline" and page.suffix == ".html":
            text = _SCRIPT.sub("", text)  # every script needs jQuery, which is not there
            text = text.replace("</head>", f"<style>\n{css}</style>\n</head>", 1)
        text = re.sub(
            r"https://great-expectations-web-assets\.[^\s\"'()]*\.png[^\s\"'()]*",
            os.path.relpath(logo, page.parent),
            text,
        )
        # GX points deeper pages' favicon one level short; every reference into static/ is made exact.
        static = Path(os.path.relpath(site / "static", page.parent)).as_posix()
        text = re.sub(r'((?:href|src)=")(?:\.\./)*static/', rf"\g<1>{static}/", text)
        text = re.sub(r'\s(?:xmlns(?::\w+)?)="https?://[^"]*"', "", text)  # inline SVG needs none in HTML
        text = re.sub(r'\shref="https?://[^"]*"', "", text)  # links out (GX docs) become text
        text = _URL.sub("", text)
        page.write_text(text, encoding="utf-8")
    return mode


def _copy_vendored(site: Path, vendored: Path, manifest: list[dict]) -> dict[str, Path]:
    local: dict[str, Path] = {}
    for asset in manifest:
        package_dir = vendored / re.sub(r"[/@]", "_", asset["package"])
        target = site / "static" / "vendor" / package_dir.name / asset["file"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(package_dir / asset["file"], target)
        for extra in asset.get("with", []):
            dest = site / "static" / "vendor" / package_dir.name / extra
            if not dest.exists():
                shutil.copytree(package_dir / extra, dest)
        local[asset["url"]] = target
    return local


def _write_index(site: Path, run_id: str, suites: list[SuiteResult]) -> None:
    """The index as a plain table (GX builds its table with script): one row per suite, failures first."""
    rows = []
    for s in sorted(suites, key=lambda s: (s.success, s.suite)):
        pages = sorted((site / "validations" / s.suite).rglob("*.html"))
        result = escape(pages[-1].relative_to(site).as_posix()) if pages else None
        icon = (
            '<i class="fas fa-check-circle text-success ge-success-icon"></i> passed'
            if s.success
            else '<i class="fas fa-times text-danger ge-failed-icon"></i> failed'
        )
        name = escape(s.suite)
        link = f'<a href="{result}">results</a>' if result else ""
        rows.append(
            f'<tr><td>{icon}</td><td><a href="expectations/{name}.html">{name}</a></td>'
            f'<td><code>{escape(s.asset)}</code></td><td class="n">{s.evaluated}</td>'
            f'<td class="n">{s.passed}</td>'
            f"<td>{link}</td></tr>"
        )
    failed = sum(not s.success for s in suites)
    html = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Data Docs · {escape(run_id)}</title>
<link rel="icon" href="static/images/favicon.ico">
</head><body class="ge-index"><div class="container-fluid">
<nav class="navbar"><span class="navbar-brand">
<img src="static/images/logo-long.png" alt="Great Expectations"></span></nav>
<h1>Data Docs for run <code>{escape(run_id)}</code></h1>
<p id="summary">{len(suites)} suites, {failed} with a failed expectation. Each suite's results page lists its
expectations and how many rows each found unexpected (counts only: no record values).</p>
<table class="table table-sm" id="suites"><tr><th>status</th><th>expectation suite</th><th>asset</th>
<th>evaluated</th><th>passed</th><th>validation result</th></tr>
{chr(10).join(rows)}
</table></div></body></html>
"""
    (site / "index.html").write_text(html, encoding="utf-8")

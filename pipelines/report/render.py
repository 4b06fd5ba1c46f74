"""Write the compliance report: one self-contained HTML file plus the canonical data JSON it renders."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from jinja2 import Environment, FileSystemLoader, select_autoescape

from pipelines.common.errors import ConfigError, WarehouseError
from pipelines.common.progress import stage_bar
from pipelines.common.warehouse import open_warehouse
from pipelines.report import charts
from pipelines.report.cli import DECISIONS
from pipelines.report.data import collect, latest_run
from pipelines.report.signoff import signoffs

HTML_NAME = "compliance-report.html"
DATA_NAME = "compliance-report.data.json"
_TEMPLATES = Path(__file__).parent / "templates"
FILES_PER_PAGE = 50  # rows per page of the collapsed per-file table


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    data: Path
    digest: str
    run_id: str
    verdict: str = ""  # one line: the decision, its headline and the counts (as the report's first screen)


def canonical_json(data: dict[str, Any]) -> bytes:
    """The bytes the digest covers: sorted keys, no whitespace, UTF-8 (`sha256sum` of the .data.json)."""
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)


def default_out_dir(warehouse: Path, run_id: str) -> Path:
    """Beside the run's GX Data Docs: <data dir>/reports/<run id>/."""
    return warehouse.parent / "reports" / run_id


def write_report(warehouse: Path, out_dir: Path | None = None, run_id: str | None = None) -> ReportFiles:
    """Read the ops tables, write the data JSON and the HTML that renders it, and return their paths."""
    warehouse = Path(warehouse).absolute()  # Data Docs are written beside it, by a library that changes dirs
    with open_warehouse(warehouse, read_only=True) as con:
        if run_id is None:
            run_id = latest_run(con)
            if run_id is None:
                raise WarehouseError(
                    f"the warehouse {warehouse} has no runs yet", hint="run `ehrlift run` first"
                )
        else:
            found = con.execute("SELECT count(*) FROM ops.runs WHERE run_id = ?", [run_id]).fetchone()
            if not found or not found[0]:
                raise ConfigError(f"no run {run_id!r} in the warehouse", hint="see ops.runs for run ids")
        out = Path(out_dir) if out_dir is not None else default_out_dir(Path(warehouse), run_id)
        docs = default_out_dir(Path(warehouse), run_id) / "data-docs" / "index.html"
        bar = stage_bar("report", "steps")  # Data Docs, the data, the page
        bar.total(3)
        if not docs.is_file():
            # Rendered here rather than by every run: the validate stage spares a run GX's import.
            from pipelines.quality.datadocs import data_docs_from_warehouse

            data_docs_from_warehouse(con, Path(warehouse), run_id)
        bar.advance()
        link = Path(os.path.relpath(docs, out.resolve() if out.exists() else out.absolute())).as_posix()
        data = collect(con, run_id, data_docs=link if docs.is_file() else None)
        payload = canonical_json(data)
        digest = hashlib.sha256(payload).hexdigest()
        # Sign-offs are shown but not part of the digest: they sign it.
        signed = signoffs(con, run_id, digest)
        bar.advance()
    out.mkdir(parents=True, exist_ok=True)
    data_path, html_path = out / DATA_NAME, out / HTML_NAME
    _write_atomic(data_path, payload)
    _write_atomic(html_path, render_html(orjson.loads(payload), digest, signed).encode("utf-8"))
    bar.advance()
    return ReportFiles(html_path, data_path, digest, run_id, verdict_line(data["verdict"]))


def verdict_line(v: dict[str, Any]) -> str:
    c = v["counts"]
    return (
        f"{v['headline']} ({v['critical']} critical, {len(v['failures'])} failures in all); "
        f"{c['units_in']} units in = {c['units_converted']} converted + {c['units_quarantined']} quarantined "
        f"+ {c['units_skipped']} skipped; {c['resources_loaded']} FHIR resources loaded"
    )


def render_html(data: dict[str, Any], digest: str, signed: list[dict[str, Any]] | None = None) -> str:
    env = Environment(
        loader=FileSystemLoader(_TEMPLATES),
        autoescape=select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    template = env.get_template("report.html.j2")
    return template.render(
        d=data,
        digest=digest,
        data_name=DATA_NAME,
        charts=_charts(data),
        signoffs=signed or [],
        decisions=DECISIONS,
        file_pages=_pages(data["reconciliation"]["files"], FILES_PER_PAGE),
    )


def _pages(rows: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def _charts(data: dict[str, Any]) -> dict[str, Any]:
    mapping = data["mapping"]
    methods = ["exact", "crosswalk", "remap", "suggestion-approved"]
    methods += sorted(
        {m for e in mapping["by_source_system"].values() for m in e["methods"]} - {*methods, "unmapped"}
    )
    methods.append("unmapped")
    by_source = charts.stacked_bars(
        "Mapping coverage by source code system",
        [(system, e["methods"]) for system, e in mapping["by_source_system"].items()],
        methods,
    )
    by_target = charts.count_bars(
        "Mapped occurrences by target code system",
        [(system, e["occurrences"]) for system, e in mapping["by_target_system"].items()],
    )
    recon = charts.stacked_bars(
        "Units per format by outcome",
        [
            (fmt, {k: c[k] for k in ("converted", "quarantined", "skipped")})
            for fmt, c in data["reconciliation"]["by_format"].items()
        ],
        ["converted", "skipped", "quarantined"],
    )
    tick = {r["run_id"]: str(i + 1) for i, r in enumerate(data["runs"])}
    trends = {
        suite: charts.trend(
            f"Suite {suite}: share of expectations passed per run",
            [
                (tick.get(p["run_id"], "?"), p["run_id"], p["pass_rate"], p["failed_critical"] > 0)
                for p in points
            ],
        )
        for suite, points in data["validation"]["trends"].items()
    }
    return {"by_source": by_source, "by_target": by_target, "recon": recon, "trends": trends}


def _write_atomic(path: Path, payload: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, path)

"""GX Data Docs for a run beside the warehouse, rewritten to make no external request.

Pages are rendered by GX's own SiteBuilder from the run's aggregated results (counts and record
pointers; GX's sample of unexpected values is never stored, since it would be record values), then made
self-contained by datadocs_offline (an inlined stylesheet, or a vendored copy of GX's CDN assets).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson

from pipelines.common.config import RunConfig
from pipelines.common.paths import shipped
from pipelines.quality.datadocs_offline import SuiteResult, finish
from pipelines.quality.gate import ResultRow
from pipelines.quality.settings import QualitySettings

log = logging.getLogger(__name__)
ASSETS_ENV = "EHRLIFT_DATA_DOCS_ASSETS"
_URL = re.compile(r"https?://[^\s\"'()<>]*")


def data_docs_dir(config: RunConfig) -> Path:
    return config.warehouse.parent / "reports" / config.run_id / "data-docs"


def assets_dir() -> Path:
    env = os.environ.get(ASSETS_ENV)
    return Path(env) if env else shipped("expectations").parent / "vendor" / "data-docs"


def build_data_docs(config: RunConfig, settings: QualitySettings, rows: list[ResultRow]) -> Path:
    """Render the run's suite results as a Data Docs site and make it self-contained."""
    return _build(data_docs_dir(config), config.run_id, settings, rows)


def data_docs_from_warehouse(
    con: duckdb.DuckDBPyConnection, warehouse: Path, run_id: str, settings: QualitySettings | None = None
) -> Path | None:
    """The run's Data Docs rendered from its stored results (ops.validation_results and _counts).

    The validate stage leaves this to the compliance report unless the site asks for it on every run:
    Great Expectations takes seconds to import, which a run should not spend for pages nobody opened.
    None when the run has no suite results to show.
    """
    from pipelines.quality.outcome import Outcome
    from pipelines.quality.settings import load_settings

    settings = settings or load_settings()
    specs = {e["meta"]["name"]: (s.name, e) for s in settings.suites for e in s.expectations}
    rows = []
    for name, severity, success, observed, unexpected, pointers, elements, missing in con.execute(
        """
        SELECT r.expectation, r.severity, r.success, r.observed_value, r.unexpected_count,
               r.record_pointers, c.element_count, c.missing_count
        FROM ops.validation_results r JOIN ops.validation_counts c USING (run_id, expectation)
        WHERE r.run_id = ? ORDER BY r.expectation
        """,
        [run_id],
    ).fetchall():
        if name not in specs:
            continue  # an expectation the current suites no longer have
        suite, spec = specs[name]
        detail = Outcome(suite, name, severity, spec["type"], spec.get("description", ""), 1.0)
        detail.element_count, detail.missing_count, detail.unexpected_count = elements, missing, unexpected
        points = orjson.loads(pointers) if pointers else []
        rows.append(ResultRow(suite, name, severity, success, observed, unexpected, points, detail))
    if not rows:
        return None
    return _build(warehouse.parent / "reports" / run_id / "data-docs", run_id, settings, rows)


def _build(out: Path, run_id: str, settings: QualitySettings, rows: list[ResultRow]) -> Path:
    # GX resolves a relative base_directory inside its temporary project (deleted below): never give it one.
    out = out.absolute()
    if out.exists():
        shutil.rmtree(out)  # a re-validated run gets a fresh site
    out.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="ehrlift-gx-") as root:
        _render(Path(root), out, run_id, settings, rows)
    by_suite: dict[str, list[ResultRow]] = {}
    for row in rows:
        by_suite.setdefault(row.suite, []).append(row)
    suites = [
        SuiteResult(name, _asset(name), len(members), sum(bool(r.success) for r in members))
        for name, members in by_suite.items()
    ]
    finish(out, assets_dir(), run_id, suites)
    return out


def _asset(suite: str) -> str:
    return f"views.{suite}" if suite != "mapping_coverage" else "ops.mapping_log"


def _render(root: Path, out: Path, run_id: str, settings: QualitySettings, rows: list[ResultRow]) -> None:
    import great_expectations as gx
    from great_expectations.core import (
        ExpectationSuite,
        ExpectationSuiteValidationResult,
        ExpectationValidationResult,
    )
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    context = gx.get_context(mode="file", project_root_dir=str(root))
    context.variables.progress_bars = {"globally": False}
    context.add_data_docs_site(
        site_name="ehrlift",
        site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(out)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "show_how_to_buttons": False,
        },
    )
    gx_run = RunIdentifier(run_name=run_id, run_time=datetime.now(UTC))
    specs = {e["meta"]["name"]: e for s in settings.suites for e in s.expectations}
    by_suite: dict[str, list[ResultRow]] = {}
    for row in rows:
        if row.expectation in specs and row.detail is not None:
            by_suite.setdefault(row.suite, []).append(row)
    for suite in settings.suites:
        context.suites.add(
            ExpectationSuite(
                name=suite.name,
                expectations=[
                    ExpectationConfiguration(
                        type=e["type"],
                        kwargs=_substitute(e["kwargs"], settings.parameters),
                        meta=e["meta"],
                        description=e.get("description"),
                        severity=e["severity"],
                    ).to_domain_obj()
                    for e in suite.expectations
                ],
                meta={"notes": suite.spec.get("meta", {}).get("notes", "")},
            )
        )
    for suite, members in by_suite.items():
        results = []
        for row in members:
            spec, o = specs[row.expectation], row.detail
            assert o is not None
            config = ExpectationConfiguration(
                type=spec["type"],
                kwargs=_substitute(spec["kwargs"], settings.parameters),
                meta={**spec["meta"], "record_pointers": row.record_pointers},
                description=spec.get("description"),
                severity=spec["severity"],
            )
            pct = 100.0 * o.unexpected_count / o.nonmissing if o.nonmissing else 0.0
            results.append(
                ExpectationValidationResult(
                    success=row.success,
                    expectation_config=config,
                    result={
                        "element_count": o.element_count,
                        "missing_count": o.missing_count,
                        "unexpected_count": o.unexpected_count,
                        "unexpected_percent": pct,
                        "unexpected_percent_nonmissing": pct,
                        "partial_unexpected_list": [],
                    },
                )
            )
        passed = sum(r.success for r in results)
        asset = _asset(suite)
        result = ExpectationSuiteValidationResult(
            success=passed == len(results),
            results=results,
            suite_name=suite,
            statistics={
                "evaluated_expectations": len(results),
                "successful_expectations": passed,
                "unsuccessful_expectations": len(results) - passed,
                "success_percent": 100.0 * passed / len(results) if results else 100.0,
            },
            meta={
                "run_id": gx_run,
                "active_batch_definition": {"datasource_name": "ehrlift", "data_asset_name": asset},
                "batch_spec": {},
                "batch_markers": {},
            },
        )
        key = ValidationResultIdentifier(
            expectation_suite_identifier=ExpectationSuiteIdentifier(name=suite),
            run_id=gx_run,
            batch_identifier=asset,
        )
        context.validation_results_store.set(key, result)
    context.build_data_docs(site_names=["ehrlift"])


def _substitute(kwargs: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in kwargs.items():
        if isinstance(v, dict) and "$PARAMETER" in v:
            v = str(params.get(v["$PARAMETER"]))
        out[k] = v
    return out

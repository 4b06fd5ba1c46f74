"""Runs GX suites on frames chunk by chunk and adds the per-row results up across chunks."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import duckdb
import pandas as pd

from pipelines.quality.frames import POINTER, chunk_count, iter_chunks, needed_columns
from pipelines.quality.outcome import Outcome, outcomes_for
from pipelines.quality.settings import UNIQUENESS_TYPES, QualitySettings, Suite

log = logging.getLogger(__name__)


class Validator:
    """One ephemeral GX context for the run: a pandas datasource whose batches are our frames."""

    def __init__(self, settings: QualitySettings) -> None:
        import great_expectations as gx

        logging.getLogger("great_expectations").setLevel(logging.WARNING)  # its INFO lines are noise here
        self.settings = settings
        # GX compares the time parameters with datetime64 columns: give it pandas timestamps.
        self.parameters = {
            k: pd.Timestamp(v) if isinstance(v, datetime) else v for k, v in settings.parameters.items()
        }
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = {"globally": False}
        asset = self.context.data_sources.add_pandas("ehrlift").add_dataframe_asset("frame")
        self.batch_definition = asset.add_batch_definition_whole_dataframe("whole frame")

    def validate_frame(self, frame: pd.DataFrame, expectations: list[dict[str, Any]]) -> list[Any]:
        """GX results for one frame, in the order of `expectations`."""
        from great_expectations.core import ExpectationSuite

        suite = ExpectationSuite(name="chunk", expectations=[dict(e) for e in expectations])
        batch = self.batch_definition.get_batch(batch_parameters={"dataframe": frame})
        result = batch.validate(
            suite,
            expectation_parameters=self.parameters,
            result_format={
                "result_format": "SUMMARY",
                "unexpected_index_column_names": [POINTER],
                "partial_unexpected_count": self.settings.max_record_pointers,
                "return_unexpected_index_query": False,
            },
        )
        by_name = {r.expectation_config.meta["name"]: r for r in result.results}
        return [by_name[e["meta"]["name"]] for e in expectations]


def add_chunk(outcome: Outcome, result: Any, max_pointers: int) -> None:
    """Fold one chunk's GX result into the running total; keeps pointers, never the unexpected values."""
    info = result.exception_info or {}
    if info.get("raised_exception"):
        # The exception text can quote data; its type says enough, the log has no more than that.
        outcome.error = str(info.get("exception_message", "")).split(":", 1)[0][:80] or "exception"
        log.warning("expectation %s raised an exception during validation", outcome.name)
        return
    r = result.result or {}
    outcome.element_count += int(r.get("element_count") or 0)
    outcome.missing_count += int(r.get("missing_count") or 0)
    outcome.unexpected_count += int(r.get("unexpected_count") or 0)
    for item in r.get("partial_unexpected_index_list") or r.get("unexpected_index_list") or []:
        if len(outcome.pointers) >= max_pointers:
            break
        if isinstance(item, dict) and item.get(POINTER):
            outcome.pointers.append(str(item[POINTER]))


def validate_frames(
    validator: Validator, suite: Suite, frames: Iterable[pd.DataFrame], outcomes: list[Outcome]
) -> None:
    """Validate each frame with the suite's expectations whose outcomes are given, adding up results."""
    expectations = [e for e in suite.expectations if e["meta"]["name"] in {o.name for o in outcomes}]
    by_name = {o.name: o for o in outcomes}
    for frame in frames:
        for exp, result in zip(expectations, validator.validate_frame(frame, expectations), strict=True):
            add_chunk(by_name[exp["meta"]["name"]], result, validator.settings.max_record_pointers)


def run_view_suite(con: duckdb.DuckDBPyConnection, validator: Validator, suite: Suite) -> list[Outcome]:
    """A view suite over the whole view: one pass per partition key its uniqueness checks need.

    Row-level checks add up over any partitioning; a uniqueness check is only right when every copy
    of a key is in the same chunk, so it runs in a pass hash-partitioned on its own columns.
    """
    outcomes = outcomes_for(suite)
    rows, chunks = chunk_count(con, suite.source["view"], validator.settings.chunk_rows)
    default_key = [suite.source["pointer"]["id"]]
    passes: dict[tuple[str, ...], list[Outcome]] = {}
    for exp, outcome in zip(suite.expectations, outcomes, strict=True):
        key = default_key
        if chunks > 1 and exp["type"] in UNIQUENESS_TYPES:
            kw = exp["kwargs"]
            key = kw.get("column_list") or [kw["column"]]
        passes.setdefault(tuple(key), []).append(outcome)
    for key, members in passes.items():
        names = {o.name for o in members}
        columns = needed_columns(
            Suite(
                suite.name,
                {**suite.spec, "expectations": [e for e in suite.expectations if e["meta"]["name"] in names]},
                suite.source,
            )
        )
        validate_frames(validator, suite, iter_chunks(con, suite, columns, list(key), chunks), members)
    log.info("suite %s: %d rows in %d chunk(s)", suite.name, rows, chunks)
    return outcomes


def mapping_frame(con: duckdb.DuckDBPyConnection, run_id: str, settings: QualitySettings) -> pd.DataFrame:
    """One row per source code system: occurrences in the run's mapping log, unmapped share, threshold."""
    frame = con.execute(
        """
        SELECT coalesce(source_system, '(no system)') AS source_system,
               sum(occurrences) AS occurrences,
               coalesce(sum(occurrences) FILTER (WHERE method = 'unmapped'), 0) AS unmapped_occurrences
        FROM ops.mapping_log WHERE run_id = ? GROUP BY 1 ORDER BY 1
        """,
        [run_id],
    ).df()
    frame["unmapped_share"] = (frame["unmapped_occurrences"] / frame["occurrences"]).astype(float)
    frame["max_unmapped_share"] = [settings.unmapped_threshold(s) for s in frame["source_system"]]
    # A code system URI is not PHI: it is the pointer to the failing row.
    frame[POINTER] = "code-system:" + frame["source_system"].astype(str)
    return frame


def run_mapping_suite(
    con: duckdb.DuckDBPyConnection, validator: Validator, suite: Suite, run_id: str
) -> list[Outcome]:
    outcomes = outcomes_for(suite)
    validate_frames(validator, suite, [mapping_frame(con, run_id, validator.settings)], outcomes)
    return outcomes

"""The suites' checks compiled to DuckDB SQL with GX's counting rules: the validate stage's default engine.

Each expectation becomes three counts over the same rows GX sees (frames.select_sql): rows in its
domain (after a row condition), rows it treats as missing, and unexpected rows. One scan per suite, no
frames, no Great Expectations import; a site file's "engine": "gx" runs the same suites in GX, and
tests/test_quality_sqlcheck.py proves the two agree.
"""

from __future__ import annotations

from typing import Any

import duckdb

from pipelines.quality.frames import POINTER, needed_columns, select_sql
from pipelines.quality.outcome import Outcome, outcomes_for
from pipelines.quality.settings import QualitySettings, Suite


def _lit(value: Any) -> str:
    if hasattr(value, "isoformat"):
        return f"TIMESTAMPTZ '{value.isoformat()}'"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def _param(value: Any, params: dict[str, Any]) -> Any:
    return params[value["$PARAMETER"]] if isinstance(value, dict) and "$PARAMETER" in value else value


def _q(col: str) -> str:
    return f'"{col}"'


def compile_expectation(exp: dict[str, Any], params: dict[str, Any]) -> tuple[str, str, str]:
    """(domain, missing, unexpected) as SQL predicates over the suite's rows, for one expectation."""
    kw, kind = exp["kwargs"], exp["type"]
    domain = "TRUE"
    if kw.get("row_condition"):
        col, value = kw["row_condition"].split("==", 1)
        domain = f"{_q(col.strip())} = {_lit(value.strip().strip(chr(34)))}"
    if kind == "expect_column_values_to_not_be_null":
        return domain, "FALSE", f"{_q(kw['column'])} IS NULL"
    if kind in {"expect_column_values_to_be_unique", "expect_compound_columns_to_be_unique"}:
        raise ValueError("uniqueness is counted by count_unique()")
    if kind == "expect_column_pair_values_a_to_be_greater_than_b":
        a, b = _q(kw["column_A"]), _q(kw["column_B"])
        op = ">=" if kw.get("or_equal") else ">"
        return domain, f"({a} IS NULL OR {b} IS NULL)", f"NOT ({a} {op} {b})"
    col = _q(kw["column"])
    missing = f"{col} IS NULL"
    if kind == "expect_column_values_to_be_in_set":
        values = ", ".join(_lit(v) for v in kw["value_set"])
        return domain, missing, f"{col} NOT IN ({values})"
    if kind == "expect_column_values_to_match_regex":
        return domain, missing, f"NOT regexp_matches(CAST({col} AS VARCHAR), {_lit(kw['regex'])})"
    if kind == "expect_column_values_to_be_between":
        bad = []
        if kw.get("min_value") is not None:
            op = "<=" if kw.get("strict_min") else "<"
            bad.append(f"{col} {op} {_lit(_param(kw['min_value'], params))}")
        if kw.get("max_value") is not None:
            op = ">=" if kw.get("strict_max") else ">"
            bad.append(f"{col} {op} {_lit(_param(kw['max_value'], params))}")
        return domain, missing, " OR ".join(bad) or "FALSE"
    raise ValueError(f"no SQL for {kind}")


def sql_outcomes(
    con: duckdb.DuckDBPyConnection, suite: Suite, settings: QualitySettings, rows_sql: str | None = None
) -> list[Outcome]:
    """Every expectation of a suite counted in DuckDB (one scan, plus one per uniqueness check).

    The rows are the view suite's (frames.select_sql) unless `rows_sql` gives them (the mapping suite).
    """
    outcomes = outcomes_for(suite)
    rows_sql = rows_sql or select_sql(suite, needed_columns(suite))
    con.execute(f"CREATE OR REPLACE TEMP VIEW _rows AS {rows_sql}")
    scalar: list[tuple[Outcome, str, str, str]] = []
    for exp, o in zip(suite.expectations, outcomes, strict=True):
        if exp["type"] in {"expect_column_values_to_be_unique", "expect_compound_columns_to_be_unique"}:
            _count_unique(con, exp, o, settings.max_record_pointers)
        else:
            scalar.append((o, *compile_expectation(exp, settings.parameters)))
    if scalar:
        parts = []
        for dom, miss, bad in (s[1:] for s in scalar):
            parts += [
                f"count(*) FILTER (WHERE {dom})",
                f"count(*) FILTER (WHERE ({dom}) AND ({miss}))",
                f"count(*) FILTER (WHERE ({dom}) AND NOT ({miss}) AND ({bad}))",
            ]
        counts = con.execute(f"SELECT {', '.join(parts)} FROM _rows").fetchone()
        assert counts is not None
        for i, (o, dom, miss, bad) in enumerate(scalar):
            o.element_count, o.missing_count, o.unexpected_count = counts[3 * i : 3 * i + 3]
            if o.unexpected_count:
                o.pointers = [
                    r[0]
                    for r in con.execute(
                        f"SELECT {POINTER} FROM _rows WHERE ({dom}) AND NOT ({miss}) AND ({bad}) "
                        f"LIMIT {int(settings.max_record_pointers)}"
                    ).fetchall()
                ]
    return outcomes


def mapping_rows_sql(run_id: str, settings: QualitySettings) -> str:
    """engine.mapping_frame in SQL: one row per source code system, its unmapped share and threshold."""
    overrides = [(k, v) for k, v in settings.unmapped_share_max.items() if k != "default"]
    values = ", ".join(f"({_lit(k)}, {_lit(float(v))})" for k, v in overrides) or "(NULL, NULL)"
    default = _lit(float(settings.unmapped_share_max["default"]))
    return f"""
        SELECT m.source_system, m.occurrences, m.unmapped_occurrences,
               CAST(m.unmapped_occurrences AS DOUBLE) / nullif(m.occurrences, 0) AS unmapped_share,
               coalesce(t.share, {default}) AS max_unmapped_share,
               'code-system:' || m.source_system AS {POINTER}
        FROM (
            SELECT coalesce(source_system, '(no system)') AS source_system,
                   sum(occurrences) AS occurrences,
                   coalesce(sum(occurrences) FILTER (WHERE method = 'unmapped'), 0) AS unmapped_occurrences
            FROM ops.mapping_log WHERE run_id = {_lit(run_id)} GROUP BY 1
        ) m
        LEFT JOIN (VALUES {values}) t(system, share) ON t.system = m.source_system
        ORDER BY 1
    """


def _count_unique(con: duckdb.DuckDBPyConnection, exp: dict[str, Any], o: Outcome, limit: int) -> None:
    kw = exp["kwargs"]
    cols = [_q(c) for c in (kw.get("column_list") or [kw["column"]])]
    if (
        kw.get("column_list")
        and kw.get("ignore_row_if", "all_values_are_missing") == "all_values_are_missing"
    ):
        missing = " AND ".join(f"{c} IS NULL" for c in cols)
    else:
        missing = " OR ".join(f"{c} IS NULL" for c in cols)
    key = ", ".join(cols)
    row = con.execute(
        f"""
        SELECT count(*), count(*) FILTER (WHERE {missing}),
               count(*) FILTER (WHERE NOT ({missing}) AND _n > 1)
        FROM (SELECT *, count(*) OVER (PARTITION BY {key}) AS _n FROM _rows)
        """
    ).fetchone()
    assert row is not None
    o.element_count, o.missing_count, o.unexpected_count = row
    if o.unexpected_count:
        o.pointers = [
            r[0]
            for r in con.execute(
                f"SELECT {POINTER} FROM (SELECT *, count(*) OVER (PARTITION BY {key}) AS _n FROM _rows) "
                f"WHERE NOT ({missing}) AND _n > 1 LIMIT {int(limit)}"
            ).fetchall()
        ]

"""Rows for a suite, read from DuckDB as pandas frames, in hash-partitioned chunks, with derived columns.

GX validates frames, not DuckDB tables, so what a check needs beyond one view's row (does the reference
resolve, the patient's birth date, the physiologic range for the code and unit, a FHIR date as a
timestamp) is joined in here and checked by an ordinary GX expectation on the derived column.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import duckdb

from pipelines.common.errors import ConfigError
from pipelines.quality.settings import QualitySettings, Suite

if TYPE_CHECKING:
    import pandas as pd

POINTER = "_pointer"
_IDENT = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


def _ident(name: str) -> str:
    if not _IDENT.fullmatch(name):
        raise ConfigError(f"not a safe column or view name in a suite: {name!r}")
    return f'"{name}"'


def _fhir_time(expr: str) -> str:
    """A FHIR date or dateTime (year, year-month, date or instant) as a UTC timestamp: its first moment.
    Typed view columns (DATE, TIMESTAMPTZ) go through their text form, which casts back unchanged."""
    expr = f"CAST({expr} AS VARCHAR)"
    return (
        f"try_cast(CASE length({expr}) WHEN 4 THEN {expr} || '-01-01' WHEN 7 THEN {expr} || '-01' "
        f"ELSE {expr} END AS TIMESTAMPTZ)"
    )


def prepare(con: duckdb.DuckDBPyConnection, settings: QualitySettings) -> None:
    """Session setup: UTC timestamps and the physiologic ranges as a temp table."""
    con.execute("SET TimeZone = 'UTC'")
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _physiologic_ranges "
        "(system VARCHAR, code VARCHAR, unit VARCHAR, lo DOUBLE, hi DOUBLE)"
    )
    if settings.physiologic_ranges:
        con.executemany("INSERT INTO _physiologic_ranges VALUES (?, ?, ?, ?, ?)", settings.physiologic_ranges)


def view_exists(con: duckdb.DuckDBPyConnection, view: str) -> bool:
    rows = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'views' AND table_name = ?",
        [view],
    ).fetchall()
    return bool(rows[0][0])


def needed_columns(suite: Suite) -> set[str]:
    cols: set[str] = set()
    for exp in suite.expectations:
        kw = exp["kwargs"]
        for key in ("column", "column_A", "column_B"):
            if key in kw:
                cols.add(kw[key])
        cols.update(kw.get("column_list", []))
        condition = kw.get("row_condition")
        if condition:
            cols.add(condition.split("==", 1)[0].strip())
    return cols


def select_sql(suite: Suite, columns: set[str]) -> str:
    """SELECT for a view suite's rows: the view's columns it uses, the derived ones, and a record pointer."""
    src = suite.source
    view = _ident(src["view"])
    derive: dict[str, dict[str, Any]] = src.get("derive", {})
    joins: list[str] = []
    select: list[str] = []
    for col in sorted(columns):
        spec = derive.get(col)
        if spec is None:
            select.append(f"t.{_ident(col)}")
            continue
        alias = f"j{len(joins)}"
        if "timestamp" in spec:
            parts = [_fhir_time(f"t.{_ident(c)}") for c in spec["timestamp"]]
            expr = parts[0] if len(parts) == 1 else f"coalesce({', '.join(parts)})"
        elif "resolves" in spec:
            ref, target = _ident(spec["resolves"]["column"]), _ident(spec["resolves"]["view"])
            joins.append(
                f"LEFT JOIN (SELECT DISTINCT id FROM views.{target}) {alias} ON {alias}.id = t.{ref}"
            )
            expr = f"CASE WHEN t.{ref} IS NULL THEN NULL ELSE {alias}.id IS NOT NULL END"
        elif "birth_of" in spec:
            ref = _ident(spec["birth_of"])
            joins.append(
                f"LEFT JOIN (SELECT id, any_value(birth_date) AS birth_date FROM views.patient GROUP BY id) "
                f"{alias} ON {alias}.id = t.{ref}"
            )
            expr = _fhir_time(f"{alias}.birth_date")
        elif "physiologic_range" in spec:
            r = spec["physiologic_range"]
            joins.append(
                f"LEFT JOIN _physiologic_ranges {alias} ON {alias}.system = t.{_ident(r['system'])} "
                f"AND {alias}.code = t.{_ident(r['code'])} AND {alias}.unit = t.{_ident(r['unit'])}"
            )
            expr = f"{alias}.{'lo' if r['bound'] == 'min' else 'hi'}"
        else:
            raise ConfigError(f"{suite.name}: unknown derivation for {col}")
        select.append(f"{expr} AS {_ident(col)}")
    select.append(f"{_pointer_sql(src['pointer'])} AS {POINTER}")
    return f"SELECT {', '.join(select)} FROM views.{view} t {' '.join(joins)}"


def _pointer_sql(pointer: dict[str, str]) -> str:
    """'<Type>/<warehouse id>' (plus '#<label>=<index>' for a row of a nested element): never a value."""
    if not re.fullmatch(r"[A-Z][A-Za-z]+", pointer["type"]):
        raise ConfigError(f"bad pointer type {pointer['type']!r}")
    expr = f"'{pointer['type']}/' || coalesce(t.{_ident(pointer['id'])}, '?')"
    if "index" in pointer:
        label = pointer["label"]
        if not _IDENT.fullmatch(label):
            raise ConfigError(f"bad pointer label {label!r}")
        expr += f" || '#{label}=' || coalesce(CAST(t.{_ident(pointer['index'])} AS VARCHAR), '?')"
    return expr


def chunk_count(con: duckdb.DuckDBPyConnection, view: str, chunk_rows: int) -> tuple[int, int]:
    rows = con.execute(f"SELECT count(*) FROM views.{_ident(view)}").fetchall()[0][0]
    return rows, max(1, -(-rows // chunk_rows))


def iter_chunks(
    con: duckdb.DuckDBPyConnection, suite: Suite, columns: set[str], partition_key: list[str], chunks: int
) -> Iterator[pd.DataFrame]:
    """The suite's rows in `chunks` frames; rows with equal partition keys land in the same frame.

    Hash partitioning (not offsets) is what makes uniqueness checks per chunk add up to the whole table.
    The joined rows are computed once into a temp table tagged with their chunk, so each chunk is a
    cheap scan rather than the whole join again.
    """
    if chunks == 1:
        yield con.execute(select_sql(suite, columns)).df()
        return
    key = ", ".join(_ident(c) for c in partition_key)
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _dq_chunks AS SELECT *, hash({key}) % {int(chunks)} AS _dq_chunk "
        f"FROM ({select_sql(suite, columns | set(partition_key))})"
    )
    try:
        for i in range(chunks):
            yield con.execute(f"SELECT * EXCLUDE (_dq_chunk) FROM _dq_chunks WHERE _dq_chunk = {i}").df()
    finally:
        con.execute("DROP TABLE IF EXISTS _dq_chunks")

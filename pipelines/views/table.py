"""One analyst view as a typed table: standard codes beside source codes, dates typed, every column described.

Types follow the column's declared FHIR type: `date` becomes DATE and `dateTime` TIMESTAMPTZ, each with a
`<name>_precision` sibling (year, month, day or time: FHIR allows partial dates, which are stored as their
first day or first moment in UTC); `instant` becomes TIMESTAMPTZ; `decimal` DECIMAL(38,10). Every column
gets a DuckDB comment (the data dictionary, also generated as a docs page from the same functions).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import duckdb

from . import standard
from .compiler import CompiledView, compile_view, default_table
from .sqlval import quote_ident, sql_string

DECIMAL = "DECIMAL(38,10)"
PARTIAL = ("date", "dateTime")  # FHIR types that allow a year or year-month only
_TYPED = {"date": "DATE", "dateTime": "TIMESTAMPTZ", "instant": "TIMESTAMPTZ", "decimal": DECIMAL}
_STD_TEXT = {
    "system": "standard code system of {col}: the coding normalization chose (NULL: none is standard)",
    "code": "standard code of {col}",
    "display": "display of the standard code of {col}",
    "method": "how the standard code of {col} was found (exact, crosswalk, remap, suggestion-approved), "
    "or why there is none (unmapped)",
}
CODING_TEXT = {
    "id": "the view row's id (the resource's warehouse id)",
    "element": "which coded element of the view (the prefix of its *_std_* columns)",
    "position": "1-based position of the coding in the element (source codings first, added ones after)",
    "system": "code system URI",
    "code": "code",
    "display": "display text (the terminology's when the source sent none)",
    "origin": "source (sent by the source) or normalization (added by ehrlift)",
    "method": "the normalization decision for this coding (exact, crosswalk, remap, unmapped...)",
    "reason": "why, for a source coding (e.g. not_in_loaded_subset, local_code_not_mapped)",
    "is_standard": "true for the one coding the view's *_std_* columns show",
}


@dataclass(frozen=True)
class Column:
    name: str
    sql_type: str
    description: str


def _declared(view: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}

    def walk(node: dict[str, Any]) -> None:
        for column in node.get("column", []):
            out.setdefault(column["name"], column)
        for child in (*node.get("select", []), *node.get("unionAll", [])):
            walk(child)

    walk(view)
    return out


def _describe(column: dict[str, Any]) -> str:
    text = column.get("description") or f"FHIRPath {column['path']}"
    ftype = column.get("type")
    return f"{text} (FHIR {ftype})" if ftype else text


def columns_of(
    view: dict[str, Any], compiled: CompiledView, groups: list[standard.Group]
) -> Iterator[Column]:
    """The view's columns as analysts see them, in order, with their warehouse types and descriptions."""
    declared = _declared(view)
    by_hidden = {g.hidden: g for g in groups}
    for name, sql_type, _ in compiled.columns:
        group = by_hidden.get(name)
        if group is not None:
            for field, out in zip(standard.STD_COLUMNS, group.std_names(), strict=True):
                yield Column(out, "VARCHAR", _STD_TEXT[field].format(col=group.path))
            continue
        spec = declared[name]
        ftype = spec.get("type")
        typed = (
            _TYPED.get(ftype or "", sql_type or "JSON") if not spec.get("collection") else sql_type or "JSON"
        )
        yield Column(name, typed, _describe(spec))
        if ftype in PARTIAL and not spec.get("collection"):
            yield Column(
                f"{name}_precision",
                "VARCHAR",
                f"precision of {name} as the source gave it: year, month, day or time; invalid when the "
                "source value is not a FHIR date (the typed column is then NULL)",
            )


def _typed_sql(name: str, ftype: str | None) -> list[str]:
    col = f"v.{quote_ident(name)}"
    if ftype in PARTIAL:
        fill = (
            f"CASE length({col}) WHEN 4 THEN {col} || '-01-01' WHEN 7 THEN {col} || '-01' ELSE {col} END"
            if ftype == "date"
            else f"CASE length({col}) WHEN 4 THEN {col} || '-01-01T00:00:00Z' WHEN 7 THEN {col} || "
            f"'-01T00:00:00Z' WHEN 10 THEN {col} || 'T00:00:00Z' ELSE {col} END"
        )
        typed = f"TRY_CAST({fill} AS {_TYPED[ftype]})"
        precision = (
            f"CASE WHEN {col} IS NULL THEN NULL WHEN {typed} IS NULL THEN 'invalid' "
            f"WHEN length({col}) = 4 THEN 'year' WHEN length({col}) = 7 THEN 'month' "
            f"WHEN length({col}) = 10 THEN 'day' ELSE 'time' END"
        )
        return [
            f"{typed} AS {quote_ident(name)}",
            f"{precision} AS {quote_ident(name + '_precision')}",
        ]
    if ftype in _TYPED:
        return [f"TRY_CAST({col} AS {_TYPED[ftype]}) AS {quote_ident(name)}"]
    return [col]


def create_view_table(
    con: duckdb.DuckDBPyConnection,
    view: dict[str, Any],
    target: str,
    table_for: Callable[[str], str] = default_table,
    *,
    coding_view: bool = True,
    empty: bool = False,
    only: tuple[str, str] | None = None,
) -> list[Column]:
    """CREATE OR REPLACE `target` (and views.<name>_coding when the view has one row per resource and
    coding_view is set); with `empty`, only the typed shape. Returns the columns, commented in DuckDB.

    only=(key column, SQL selecting resource ids): the existing table keeps its other rows and only
    the rows of those resources are replaced, computed from those resources alone (each view row
    comes from one resource, so the result is the full rebuild's rows, the replaced ones last).
    """
    coded, groups = standard.with_codings(view)
    replaced = None
    if only is not None:
        inner = table_for
        table_for = lambda rtype: f"(SELECT * FROM {inner(rtype)} WHERE id IN ({only[1]}))"  # noqa: E731
        # The rows of those resources, and of any resource no longer stored (a merged party, say).
        replaced = f"IN ({only[1]}) OR {{key}} NOT IN (SELECT id FROM {inner(view['resource'])})"
    compiled = compile_view(coded, table_for)
    columns = list(columns_of(view, compiled, groups))
    long = coding_view and has_coding_view(view, compiled, groups)
    if empty:
        con.execute(f"CREATE OR REPLACE TABLE {target} ({_ddl([(c.name, c.sql_type) for c in columns])})")
        if long:
            con.execute(
                f"CREATE OR REPLACE TABLE views.{quote_ident(view['name'] + '_coding')} "
                f"({_ddl(list(standard.CODING_COLUMNS))})"
            )
    else:
        declared = _declared(view)
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _std_rows AS "
            f"SELECT row_number() OVER () AS __row, * FROM ({compiled.sql})"
        )
        if groups:
            standard.prepare(con, groups, long)
        select, joins = [], []
        by_hidden = {g.hidden: g for g in groups}
        for n, (name, _, collection) in enumerate(compiled.columns):
            if name in by_hidden:
                items, join = standard.select(by_hidden[name], f"_s{n}")
                select += items
                joins.append(join)
            else:
                select += _typed_sql(name, None if collection else declared[name].get("type"))
        rows = f"SELECT {', '.join(select)} FROM _std_rows v {' '.join(joins)} ORDER BY v.__row"
        if only is None:
            con.execute(f"CREATE OR REPLACE TABLE {target} AS {rows}")
        else:
            key = quote_ident(only[0])
            con.execute(f"DELETE FROM {target} WHERE {key} {replaced.format(key=key)}")
            con.execute(f"INSERT INTO {target} {rows}")
        if long:
            standard.create_coding_view(
                con, view["name"], None if replaced is None else replaced.format(key="id")
            )
        standard.drop_temps(con)
    if only is not None:
        return columns  # the table and its comments stay; only rows were replaced
    for column in columns:
        con.execute(
            f"COMMENT ON COLUMN {target}.{quote_ident(column.name)} IS {sql_string(column.description)}"
        )
    if long:
        coding = f"views.{quote_ident(view['name'] + '_coding')}"
        for name, text in CODING_TEXT.items():
            con.execute(f"COMMENT ON COLUMN {coding}.{quote_ident(name)} IS {sql_string(text)}")
    return columns


def has_coding_view(view: dict[str, Any], compiled: CompiledView, groups: list[standard.Group]) -> bool:
    return bool(groups) and standard.one_row_per_resource(view) and "id" in {c[0] for c in compiled.columns}


def _ddl(columns: list[tuple[str, str]]) -> str:
    return ", ".join(f"{quote_ident(name)} {sql_type}" for name, sql_type in columns)

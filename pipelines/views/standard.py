"""The standard form of every coded view column, beside its source form, and the long *_coding views.

A ViewDefinition column tagged `ehrlift/standard` (its value: the FHIRPath of the CodeableConcept, relative
to the column's node) is followed in the view by four columns: `<prefix>_std_system`, `_std_code`,
`_std_display` (the coding normalization chose) and `_std_method` (how: exact, crosswalk, remap,
suggestion-approved; or, with no standard coding, why not: unmapped). The prefix is the tagged column's
name without a trailing `_display`, `_code` or `_system`.

The coding chosen is the first one normalization added (a crosswalk target, a remapped code, a canonical
URI), else the first source coding whose decision in ops.mapping_log is standard. Views with one row per
resource also get `views.<name>_coding`: one row per coding of each tagged element, source and added,
with its method and which one the standard columns show.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import duckdb

from terminology.normalize import EXT_METHOD, STANDARD_METHODS

from .sqlval import quote_ident, sql_string

TAG = "ehrlift/standard"
HIDDEN = "ehrlift__std__"
SUFFIXES = ("_display", "_code", "_system")
STD_COLUMNS = ("system", "code", "display", "method")
CODING_COLUMNS = (
    ("id", "VARCHAR"),
    ("element", "VARCHAR"),
    ("position", "BIGINT"),
    ("system", "VARCHAR"),
    ("code", "VARCHAR"),
    ("display", "VARCHAR"),
    ("origin", "VARCHAR"),
    ("method", "VARCHAR"),
    ("reason", "VARCHAR"),
    ("is_standard", "BOOLEAN"),
)


@dataclass(frozen=True)
class Group:
    """One tagged CodeableConcept: the column it follows, its FHIRPath and the standard columns' prefix."""

    after: str
    path: str
    prefix: str

    @property
    def hidden(self) -> str:
        return f"{HIDDEN}{self.prefix}"

    def std_names(self) -> list[str]:
        return [f"{self.prefix}_std_{c}" for c in STD_COLUMNS]


def prefix_of(column: str) -> str:
    for suffix in SUFFIXES:
        if column.endswith(suffix) and len(column) > len(suffix):
            return column[: -len(suffix)]
    return column


def with_codings(view: dict[str, Any]) -> tuple[dict[str, Any], list[Group]]:
    """A copy of the view with a hidden collection of the codings after every tagged column."""
    view = copy.deepcopy(view)
    groups: list[Group] = []

    def walk(node: dict[str, Any]) -> None:
        columns = []
        for column in node.get("column", []):
            columns.append(column)
            path = next((t.get("value") for t in column.get("tag", []) if t.get("name") == TAG), None)
            if path:
                group = Group(column["name"], path, prefix_of(column["name"]))
                groups.append(group)
                columns.append({"name": group.hidden, "path": f"({path}).coding", "collection": True})
        if "column" in node:
            node["column"] = columns
        for child in (*node.get("select", []), *node.get("unionAll", [])):
            walk(child)

    walk(view)
    return view, groups


def one_row_per_resource(view: dict[str, Any]) -> bool:
    """No forEach, repeat or unionAll anywhere: the view's `id` names its row."""

    def plain(node: dict[str, Any]) -> bool:
        if any(k in node for k in ("forEach", "forEachOrNull", "repeat", "unionAll")):
            return False
        return all(plain(c) for c in node.get("select", []))

    return plain(view)


_DECISIONS = """
CREATE OR REPLACE TEMP TABLE _std_decisions AS
SELECT source_system, source_code, source_display,
       arg_max(method, run_id) AS method, arg_max(reason, run_id) AS reason,
       arg_max(target_system, run_id) AS target_system, arg_max(target_code, run_id) AS target_code,
       arg_max(target_display, run_id) AS target_display
FROM ops.mapping_log WHERE coalesce(kind, 'coding') = 'coding'
GROUP BY ALL
"""
_NO_DECISIONS = """
CREATE OR REPLACE TEMP TABLE _std_decisions (source_system VARCHAR, source_code VARCHAR,
    source_display VARCHAR, method VARCHAR, reason VARCHAR, target_system VARCHAR, target_code VARCHAR,
    target_display VARCHAR)
"""


def _ext(url: str) -> str:
    return (
        "list_filter(CAST(json_extract(u.it, '$.extension') AS JSON[]), "
        f"lambda e: json_extract_string(e, '$.url') = {sql_string(url)})[1]"
    )


def prepare(con: duckdb.DuckDBPyConnection, groups: list[Group], coding_view: bool) -> None:
    """From the view's rows in _std_rows (with their hidden codings columns): every coding with its origin
    and method (_std_codings), and per row and element the coding the standard columns show (_std_chosen)."""
    has_log = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE schema_name = 'ops' AND table_name = 'mapping_log' "
        "AND database_name = current_database()"
    ).fetchall()[0][0]
    con.execute(_DECISIONS if has_log else _NO_DECISIONS)
    standard = ", ".join(sql_string(m) for m in STANDARD_METHODS)
    method = _ext(EXT_METHOD)
    id_sql = "v.id" if coding_view else "NULL"
    parts = [
        f"""SELECT v.__row, {id_sql}::VARCHAR AS id, {sql_string(g.prefix)} AS element, u.ord AS position,
               json_extract_string(u.it, '$.system') AS system, json_extract_string(u.it, '$.code') AS code,
               json_extract_string(u.it, '$.display') AS display,
               json_extract_string({method}, '$.valueCode') AS added_method
        FROM _std_rows v, unnest(v.{quote_ident(g.hidden)}) WITH ORDINALITY AS u(it, ord)"""
        for g in groups
    ]
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _std_codings AS
        WITH c AS ({" UNION ALL ".join(parts)})
        SELECT c.__row, c.id, c.element, c.position, c.system, c.code,
               coalesce(c.display, CASE WHEN c.added_method IS NULL THEN d.target_display END) AS display,
               CASE WHEN c.added_method IS NULL THEN 'source' ELSE 'normalization' END AS origin,
               coalesce(c.added_method, d.method) AS method,
               CASE WHEN c.added_method IS NULL THEN d.reason END AS reason,
               -- a source coding is standard when its decision is standard and names the coding itself
               CASE WHEN c.added_method IS NOT NULL THEN c.added_method IN ({standard})
                    ELSE coalesce(d.method IN ({standard}) AND d.target_system = c.system
                                  AND d.target_code = c.code, FALSE) END AS standard_method
        FROM c LEFT JOIN _std_decisions d
          ON c.added_method IS NULL AND d.source_system IS NOT DISTINCT FROM c.system
         AND d.source_code IS NOT DISTINCT FROM c.code AND d.source_display IS NOT DISTINCT FROM c.display
    """)
    # Per row and element: the chosen coding (added first, then by position), or the first coding's method.
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _std_chosen AS
        SELECT __row, element,
               arg_min(struct_pack(system := system, code := code, display := display, method := method,
                                   standard := standard_method),
                       (NOT standard_method, origin = 'source', position)) AS pick,
               arg_min(position, (NOT standard_method, origin = 'source', position)) AS position
        FROM _std_codings GROUP BY ALL
    """)


def select(group: Group, alias: str) -> tuple[list[str], str]:
    """The four standard columns of a group (SELECT items over _std_rows v) and the join they need."""
    on = f"{alias}.__row = v.__row AND {alias}.element = {sql_string(group.prefix)}"
    chosen = f"{alias}.pick"
    names = group.std_names()
    items = [
        f"CASE WHEN {chosen}.standard THEN {chosen}.{field} END AS {quote_ident(out)}"
        for field, out in zip(("system", "code", "display"), names[:3], strict=True)
    ]
    items.append(f"{chosen}.method AS {quote_ident(names[3])}")
    return items, f"LEFT JOIN _std_chosen {alias} ON {on}"


def create_coding_view(con: duckdb.DuckDBPyConnection, name: str, replaced: str | None = None) -> None:
    """views.<name>_coding from the temp tables; with `replaced` (a condition on `id` following it, such
    as "IN (SELECT ...)"), the rows it selects are deleted and the temp tables' rows added."""
    table = f"views.{quote_ident(name + '_coding')}"
    if replaced is None:
        head = f"CREATE OR REPLACE TABLE {table} AS"
    else:
        con.execute(f"DELETE FROM {table} WHERE id {replaced}")
        head = f"INSERT INTO {table}"
    con.execute(f"""
        {head}
        SELECT c.id, c.element, c.position, c.system, c.code, c.display, c.origin, c.method, c.reason,
               coalesce(c.standard_method AND p.position = c.position, FALSE) AS is_standard
        FROM _std_codings c JOIN _std_chosen p USING (__row, element)
        ORDER BY c.__row, c.element, c.position
    """)


def drop_temps(con: duckdb.DuckDBPyConnection) -> None:
    for temp in ("_std_rows", "_std_codings", "_std_chosen", "_std_decisions"):
        con.execute(f"DROP TABLE IF EXISTS {temp}")

"""Materializes every ViewDefinition in a folder as a table in the warehouse's `views` schema."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import duckdb
import orjson

from .compiler import CompiledView, compile_view, default_table
from .errors import ViewDefinitionError
from .sqlval import quote_ident

_VIEW_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")


def _relation_exists(con: duckdb.DuckDBPyConnection, schema: str, name: str) -> bool:
    # fetchall, not fetchone: DuckDB 2 refuses new statements while a result is still unfinished.
    rows = con.execute(
        "SELECT count(*) FROM information_schema.tables "
        "WHERE table_catalog = current_database() AND table_schema = ? AND table_name = ?",
        [schema, name],
    ).fetchall()
    return bool(rows[0][0])


def _load(path: Path) -> dict:
    try:
        view = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise ViewDefinitionError(f"{path.name}: not valid JSON ({exc})") from None
    if not isinstance(view, dict):
        raise ViewDefinitionError(f"{path.name}: a ViewDefinition must be a JSON object")
    name = view.get("name")
    if not isinstance(name, str) or not _VIEW_NAME.fullmatch(name):
        raise ViewDefinitionError(f"{path.name}: view name {name!r} is not a safe SQL identifier")
    return view


def compile_views(views_dir: Path, table_for: Callable[[str], str] = default_table) -> list[CompiledView]:
    """Compile every *.json ViewDefinition in `views_dir` (sorted by file name), rejecting duplicates."""
    compiled: list[CompiledView] = []
    seen: dict[str, str] = {}
    for path in sorted(Path(views_dir).glob("*.json")):
        view = _load(path)
        if view["name"] in seen:
            raise ViewDefinitionError(
                f"{path.name}: view name {view['name']!r} is also used by {seen[view['name']]}"
            )
        seen[view["name"]] = path.name
        try:
            compiled.append(compile_view(view, table_for))
        except ViewDefinitionError as exc:
            raise ViewDefinitionError(f"{path.name}: {exc}") from None
    return compiled


def materialize_views(con: duckdb.DuckDBPyConnection, views_dir: Path) -> dict[str, int]:
    """CREATE OR REPLACE views.<name> for each ViewDefinition; return the row count of each.

    Every view is compiled before anything is written, so one bad definition leaves the schema untouched.
    When a view's resource table does not exist yet, an empty table with the declared columns is created
    so that analysts always find every view.
    """
    compiled = compile_views(views_dir)
    con.execute("CREATE SCHEMA IF NOT EXISTS views")
    counts: dict[str, int] = {}
    for view in compiled:
        assert view.name is not None  # checked by _load
        target = f"views.{quote_ident(view.name)}"
        if _relation_exists(con, "fhir", view.resource):
            con.execute(f"CREATE OR REPLACE TABLE {target} AS {view.sql}")
        else:
            columns = ", ".join(
                f"{quote_ident(name)} {sql_type or 'JSON'}" for name, sql_type, _ in view.columns
            )
            con.execute(f"CREATE OR REPLACE TABLE {target} ({columns})")
        counts[view.name] = int(con.execute(f"SELECT count(*) FROM {target}").fetchall()[0][0])
    return counts

"""Materializes every ViewDefinition in a folder as a table in the warehouse's `views` schema."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import orjson

from pipelines.common.progress import stage_bar
from pipelines.common.warehouse import transaction

from . import standard
from .compiler import CompiledView, compile_view, default_table
from .errors import ViewDefinitionError
from .sqlval import quote_ident
from .table import create_view_table, has_coding_view

_VIEW_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")


def _relation_exists(con: duckdb.DuckDBPyConnection, schema: str, name: str) -> bool:
    # fetchall, not fetchone: DuckDB 2 refuses new statements while a result is still unfinished.
    # duckdb_tables(), not information_schema: a tenth of the cost, asked once per view.
    rows = con.execute(
        "SELECT count(*) FROM duckdb_tables() "
        "WHERE database_name = current_database() AND schema_name = ? AND table_name = ?",
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


def _definitions(views_dir: Path) -> Iterator[tuple[Path, dict]]:
    """Every *.json ViewDefinition in `views_dir`, sorted by file name; a view name used twice is refused."""
    seen: dict[str, str] = {}
    for path in sorted(Path(views_dir).glob("*.json")):
        view = _load(path)
        if view["name"] in seen:
            raise ViewDefinitionError(
                f"{path.name}: view name {view['name']!r} is also used by {seen[view['name']]}"
            )
        seen[view["name"]] = path.name
        yield path, view


def compile_views(views_dir: Path, table_for: Callable[[str], str] = default_table) -> list[CompiledView]:
    """Compile every *.json ViewDefinition in `views_dir` (sorted by file name), rejecting duplicates."""
    compiled: list[CompiledView] = []
    for path, view in _definitions(views_dir):
        try:
            compiled.append(compile_view(view, table_for))
        except ViewDefinitionError as exc:
            raise ViewDefinitionError(f"{path.name}: {exc}") from None
    return compiled


_STAMP = re.compile(r"^ehrlift-view sha256=([0-9a-f]{64}) run=(\S+)$")


def view_stamps(con: duckdb.DuckDBPyConnection) -> dict[str, tuple[str, str]]:
    """views.<name> -> (sha256 of the ViewDefinition it was built from, run that built it)."""
    out = {}
    for name, comment in con.execute(
        "SELECT table_name, comment FROM duckdb_tables() WHERE schema_name = 'views' "
        "AND database_name = current_database()"
    ).fetchall():
        m = _STAMP.match(comment or "")
        if m:
            out[name] = (m.group(1), m.group(2))
    return out


def materialize_views(
    con: duckdb.DuckDBPyConnection,
    views_dir: Path,
    changed: set[str] | None = None,
    run_id: str = "",
    rows_of: dict[str, str] | None = None,
) -> dict[str, int]:
    """CREATE OR REPLACE views.<name> for each ViewDefinition; return the row count of every view (and of
    every views.<name>_coding).

    With `changed` (the resource types a run wrote), only the views over those types are rebuilt, plus
    any view that is missing or was built from another version of its definition: a view reads one
    resource table, so the others are already what a full rebuild would give. Each rebuilt view is
    stamped with its definition's sha256 and the run that built it (the validate stage reads this).
    Every view to rebuild is compiled before anything is written, so one bad definition leaves the
    schema untouched. When a view's resource table does not exist yet, an empty table with the
    declared columns is created so that analysts always find every view.

    rows_of (resource type -> SQL selecting resource ids) narrows a rebuild to rows: a view over such a
    type, built from this version of its definition and keyed by getResourceKey(), keeps its other rows
    and has only those resources' rows replaced. A view row is computed from its one resource (and the
    terminology decisions, which the caller vouches did not change), so this equals a full rebuild.
    """
    rows_of = rows_of or {}
    stamps = view_stamps(con)
    todo: list[tuple[Path, str, bool]] = []  # (definition, its digest, only some rows)
    names: list[str] = []
    for path, view in _definitions(views_dir):
        names.append(view["name"])
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        stamp = stamps.get(view["name"])
        current = stamp is not None and stamp[0] == digest
        if changed is None or view.get("resource") in changed or not current:
            todo.append((path, digest, current and changed is not None and view.get("resource") in rows_of))
    loaded = _compile_paths([p for p, _, _ in todo])
    con.execute("CREATE SCHEMA IF NOT EXISTS views")
    bar = stage_bar("load", "views")
    bar.total(len(todo))
    for (view, long), (_, digest, narrow) in zip(loaded, todo, strict=True):
        target = f"views.{quote_ident(view['name'])}"
        empty = not _relation_exists(con, "fhir", view["resource"])
        built = [target, *([f"views.{quote_ident(view['name'] + '_coding')}"] if long else [])]
        stamp = f"ehrlift-view sha256={digest} run={run_id or '-'}"
        key = resource_key(view)
        tables = [view["name"], *([view["name"] + "_coding"] if long else [])]
        # The coding view is keyed by the view's id column: narrowed only when that is the resource key.
        narrow = narrow and not empty and key is not None and (key == "id" or not long)
        only = None
        if narrow and all(_relation_exists(con, "views", t) for t in tables):
            only = (key, rows_of[view["resource"]])
        # One transaction per view: its rows, column comments and stamp appear together (and the
        # comments cost one commit, not one each).
        with transaction(con):
            create_view_table(con, view, target, empty=empty, only=only)
            for table in built:
                con.execute(f"COMMENT ON TABLE {table} IS '{stamp}'")
        bar.advance()
    # The *_coding views count too: they are written, audited and checked like the others.
    tables = [t for n in names for t in (n, f"{n}_coding") if t == n or _relation_exists(con, "views", t)]
    return {
        name: int(con.execute(f"SELECT count(*) FROM views.{quote_ident(name)}").fetchall()[0][0])
        for name in tables
    }


def resource_key(view: dict) -> str | None:
    """The column holding getResourceKey() in the view's top level (no forEach), or None."""
    for node in view.get("select", []):
        if any(k in node for k in ("forEach", "forEachOrNull", "unionAll", "repeat")):
            continue
        for column in node.get("column", []):
            if column.get("path") == "getResourceKey()" and not column.get("collection"):
                return column["name"]
    return None


def _compile_paths(paths: list[Path]) -> list[tuple[dict, bool]]:
    """Every view compiled (with its hidden codings) before anything is written; whether it has a
    *_coding view."""
    out = []
    for path in paths:
        try:
            view = _load(path)
            coded, groups = standard.with_codings(view)
            out.append((view, has_coding_view(view, compile_view(coded, default_table), groups)))
        except ViewDefinitionError as exc:
            raise ViewDefinitionError(f"{path.name}: {exc}") from None
    return out


def views_built_by(con: duckdb.DuckDBPyConnection, run_id: str) -> set[str]:
    """The views the given run rebuilt (their stamp names it)."""
    return {name for name, (_, run) in view_stamps(con).items() if run == run_id}

"""Compiles SQL-on-FHIR v2 ViewDefinitions into one set-based DuckDB SELECT over fhir."<Type>" tables."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from . import functions  # noqa: F401 - registers FHIRPath's functions with .translate
from .errors import ViewDefinitionError
from .sqlval import (
    JSON,
    PrefetchedDoc,
    Val,
    as_bool,
    item_val,
    list_as,
    native_of,
    path_val,
    quote_ident,
    singleton,
    sql_string,
)
from .translate import Scope, compile_path
from .validate import constant_value, validate_view

__all__ = ["CompiledView", "ViewDefinitionError", "column_sql_type", "compile_view", "default_table"]

# A runaway repeat (for example over $this) stops at this depth instead of looping forever.
MAX_REPEAT_DEPTH = 64


def default_table(resource_type: str) -> str:
    """The warehouse table holding one resource type: fhir."<ResourceType>"."""
    return f"fhir.{quote_ident(resource_type)}"


def column_sql_type(fhir_type: str) -> str:
    """The DuckDB type of a column declared with a FHIR `type` (dates stay ISO strings)."""
    native = native_of(fhir_type)
    if native is not None:
        return native
    if fhir_type[:1].isupper():
        return JSON
    raise ViewDefinitionError(f"unknown column type {fhir_type!r}")


@dataclass(frozen=True)
class CompiledView:
    """The SELECT statement for a view and its output columns as (name, DuckDB type, collection)."""

    sql: str
    columns: list[tuple[str, str | None, bool]]
    resource: str
    name: str | None = None


@dataclass(frozen=True)
class _Out:
    name: str
    sql: str
    type: str
    collection: bool


@dataclass
class _Part:
    cols: list[_Out] = field(default_factory=list)
    froms: list[str] = field(default_factory=list)

    def add(self, other: _Part) -> None:
        self.cols.extend(other.cols)
        self.froms.extend(other.froms)


def _render(cols: list[_Out], froms: list[str]) -> str:
    select = ", ".join(f"{c.sql} AS {quote_ident(c.name)}" for c in cols)
    return f"SELECT {select}" + (f" FROM {', '.join(froms)}" if froms else "")


def _constant(fhir_type: str, value: object) -> Val:
    if fhir_type == "boolean":
        return Val("TRUE" if value else "FALSE", False, "BOOLEAN", "boolean", const=value)
    if native_of(fhir_type) == "BIGINT":
        return Val(str(int(value)), False, "BIGINT", fhir_type, const=value)
    if fhir_type == "decimal":
        return Val(
            f"CAST({sql_string(repr(float(value)))} AS DOUBLE)", False, "DOUBLE", "decimal", const=value
        )
    return Val(sql_string(str(value)), False, "VARCHAR", fhir_type, const=value)


class _Compiler:
    def __init__(self, view: dict, table_for: Callable[[str], str]):
        self.view = view
        self.table_for = table_for
        self.counter = itertools.count(1)
        self.resource = view["resource"]
        constants = {
            c["name"]: _constant(*constant_value(c, f"constant {c['name']}"))
            for c in view.get("constant", [])
        }
        self.doc = PrefetchedDoc("_r", "_t.resource")
        root = path_val(self.doc, "$", False, self.resource, is_root=True)
        self.scope = Scope(root, root, self.resource, "_r.id", "0", constants, self.fresh)

    def fresh(self, prefix: str) -> str:
        return f"_{prefix}{next(self.counter)}"

    def column(self, column: dict, scope: Scope) -> _Out:
        name = column["name"]
        v = compile_path(column["path"], scope)
        declared = column.get("type")
        if declared:
            target = column_sql_type(declared)
        else:
            target = v.kind if v.kind != JSON else (native_of(v.ftype) or JSON)
        if column.get("collection", False):
            keep = self.fresh("c")
            items = list_as(v, target, self.fresh)
            sql = f"coalesce(list_filter({items}, lambda {keep}: {keep} IS NOT NULL), CAST([] AS {target}[]))"
            return _Out(name, sql, f"{target}[]", True)
        what = f"column {name} (set collection: true to keep several values)"
        return _Out(name, singleton(v, target, what, self.fresh), target, False)

    def node(self, node: dict, scope: Scope) -> _Part:
        if "forEach" in node or "forEachOrNull" in node:
            return self.for_each(node, scope)
        if "repeat" in node:
            return self.repeat(node, scope)
        return self.body(node, scope)

    def body(self, node: dict, scope: Scope) -> _Part:
        part = _Part([self.column(c, scope) for c in node.get("column", [])])
        for child in node.get("select", []):
            part.add(self.node(child, scope))
        if "unionAll" in node:
            part.add(self.union(node["unionAll"], scope))
        return part

    def _iterate(self, node: dict, scope: Scope, alias: str, ftype: str | None, index: str) -> _Part:
        # Inside an iteration $this is the current item and %rowIndex its 0-based position.
        return self.body(node, replace(scope, this=item_val(f"{alias}.it", ftype), index_sql=index))

    def for_each(self, node: dict, scope: Scope) -> _Part:
        or_null = "forEachOrNull" in node
        v = compile_path(node["forEachOrNull" if or_null else "forEach"], scope)
        items = list_as(v, JSON, self.fresh)
        if or_null:
            # One row evaluated against an empty item when there is nothing to iterate.
            items = f"(CASE WHEN coalesce(len({items}), 0) = 0 THEN CAST([NULL] AS JSON[]) ELSE {items} END)"
        alias = self.fresh("fe")
        part = self._iterate(node, scope, alias, v.ftype, f"({alias}.ord - 1)")
        return _Part(part.cols, [f"unnest({items}) WITH ORDINALITY AS {alias}(it, ord)", *part.froms])

    def repeat(self, node: dict, scope: Scope) -> _Part:
        paths = node["repeat"]
        cte, alias = self.fresh("rc"), self.fresh("rp")
        top = [compile_path(p, scope) for p in paths]
        # Items are typed when every path with static metadata agrees; unknown ones stay dynamic JSON.
        kinds = {v.ftype for v in top if v.ftype is not None}
        ftype = kinds.pop() if len(kinds) == 1 else None
        step_scope = scope.at(item_val(f"{cte}.it", ftype))
        step = [compile_path(p, step_scope) for p in paths]
        if ftype is not None and any(v.ftype not in (None, ftype) for v in step):
            ftype = None
            step_scope = scope.at(item_val(f"{cte}.it", None))
            step = [compile_path(p, step_scope) for p in paths]

        def children(vals: list[Val]) -> str:
            # Each child carries [path number, ordinal] so that sorting the key lists gives pre-order.
            parts = []
            for number, v in enumerate(vals, start=1):
                x, i = self.fresh("x"), self.fresh("i")
                items = f"coalesce({list_as(v, JSON, self.fresh)}, CAST([] AS JSON[]))"
                parts.append(f"list_transform({items}, lambda {x}, {i}: {{'it': {x}, 'k': [{number}, {i}]}})")
            combined = parts[0]
            for extra in parts[1:]:
                combined = f"list_concat({combined}, {extra})"
            return combined

        s1, s2 = self.fresh("s"), self.fresh("s")
        recursive = (
            f"WITH RECURSIVE {cte}(it, k) AS ("
            f"SELECT {s1}.c.it, {s1}.c.k FROM unnest({children(top)}) AS {s1}(c) UNION ALL "
            f"SELECT {s2}.c.it, list_concat({cte}.k, {s2}.c.k) "
            f"FROM {cte}, unnest({children(step)}) AS {s2}(c) "
            f"WHERE len({cte}.k) < {2 * MAX_REPEAT_DEPTH}) "
            f"SELECT it, row_number() OVER (ORDER BY k) - 1 AS ix FROM {cte}"
        )
        part = self._iterate(node, scope, alias, ftype, f"{alias}.ix")
        return _Part(part.cols, [f"LATERAL ({recursive}) AS {alias}", *part.froms])

    def union(self, branches: list[dict], scope: Scope) -> _Part:
        parts = [self.node(b, scope) for b in branches]
        alias = self.fresh("un")
        shape: list[_Out] = []
        for position, first in enumerate(parts[0].cols):
            variants = {p.cols[position].type for p in parts}
            flags = {p.cols[position].collection for p in parts}
            if len(flags) > 1:
                raise ViewDefinitionError(
                    f"unionAll column {first.name}: collection differs between branches"
                )
            kind = first.type if len(variants) == 1 else ("VARCHAR[]" if first.collection else "VARCHAR")
            shape.append(_Out(first.name, "", kind, first.collection))
        selects = []
        for p in parts:
            cols = [
                _Out(
                    c.name, c.sql if c.type == s.type else f"CAST({c.sql} AS {s.type})", s.type, c.collection
                )
                for c, s in zip(p.cols, shape, strict=True)
            ]
            selects.append(_render(cols, p.froms))
        sql = " UNION ALL ".join(f"({s})" for s in selects)
        cols = [_Out(s.name, f"{alias}.{quote_ident(s.name)}", s.type, s.collection) for s in shape]
        return _Part(cols, [f"LATERAL ({sql}) AS {alias}"])

    def compile(self) -> CompiledView:
        part = _Part()
        for node in self.view["select"]:
            part.add(self.node(node, self.scope))
        conditions = [
            as_bool(compile_path(w["path"], self.scope), f"where[{i}] path", self.fresh)
            for i, w in enumerate(self.view.get("where", []))
        ]
        source = ", ".join(["_t.*", *self.doc.projection()])
        table = f"(SELECT {source} FROM {self.table_for(self.resource)} AS _t) AS _r"
        sql = _render(part.cols, [table, *part.froms])
        if conditions:
            sql += " WHERE " + " AND ".join(conditions)
        columns = [(c.name, c.type, c.collection) for c in part.cols]
        return CompiledView(sql, columns, self.resource, self.view.get("name"))


def compile_view(view: dict, table_for: Callable[[str], str] = default_table) -> CompiledView:
    """Validate a ViewDefinition and compile it to a DuckDB SELECT (raises ViewDefinitionError)."""
    validate_view(view)
    return _Compiler(view, table_for).compile()

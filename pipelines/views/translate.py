"""Compiles parsed FHIRPath expressions to DuckDB SQL over JSON resources (navigation and operators)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from . import fhirpath as ast
from . import schema
from .errors import ViewDefinitionError
from .sqlval import (
    EMPTY,
    JSON,
    Doc,
    Fresh,
    Val,
    as_bool,
    bool_val,
    domain,
    fhir_of_native,
    json_key,
    list_as,
    path_val,
    singleton,
    sql_string,
    to_list,
    typed_null,
)

# FHIRPath's functions and the is/as operators live in .functions, which builds on this module and
# registers them here when imported (the compiler imports both): this module never imports it back.
_FUNCTIONS: dict[str, Callable[..., Any]] = {}


def register(name: str, fn: Callable[..., Any]) -> None:
    _FUNCTIONS[name] = fn


def _functions(name: str) -> Callable[..., Any]:
    try:
        return _FUNCTIONS[name]
    except KeyError:
        raise RuntimeError("pipelines.views.functions is not imported: import the compiler") from None


@dataclass(frozen=True)
class Scope:
    """What an expression is evaluated against: $this, the resource, %rowIndex and the constants."""

    this: Val
    root: Val
    resource_type: str
    key_sql: str
    index_sql: str
    constants: Mapping[str, Val]
    fresh: Fresh

    def at(self, this: Val) -> Scope:
        return replace(self, this=this)


def compile_path(text: object, scope: Scope) -> Val:
    """Parse and compile one FHIRPath expression."""
    return translate(ast.parse(text), scope)


def translate(node: object, scope: Scope) -> Val:
    if isinstance(node, ast.Literal):
        return literal(node)
    if isinstance(node, ast.This):
        return scope.this
    if isinstance(node, ast.Const):
        return constant(node.name, scope)
    if isinstance(node, ast.Ident):
        if node.name == scope.resource_type and scope.this.is_root:
            return scope.root
        return navigate(scope.this, node.name, scope.fresh)
    if isinstance(node, ast.Member):
        return navigate(translate(node.target, scope), node.name, scope.fresh)
    if isinstance(node, ast.Index):
        return indexer(translate(node.target, scope), translate(node.index, scope), scope)
    if isinstance(node, ast.Call):
        target = scope.this if node.target is None else translate(node.target, scope)
        return _functions("call")(node, target, node.target is None, scope)
    if isinstance(node, ast.Unary):
        return unary(node, scope)
    if isinstance(node, ast.Binary):
        return binary(node, scope)
    if isinstance(node, ast.TypeOp):
        operand = translate(node.operand, scope)
        typed = _functions("of_type")(operand, node.type_name, scope.fresh)
        if node.op == "as":
            return typed
        exists = f"({to_list(typed)} IS NOT NULL AND len({to_list(typed)}) > 0)"
        return bool_val(f"(CASE WHEN {to_list(operand)} IS NULL THEN NULL ELSE {exists} END)")
    raise ViewDefinitionError(f"unsupported FHIRPath construct {node!r}")


def literal(node: ast.Literal) -> Val:
    kind, value = node.kind, node.value
    if kind == "empty":
        return EMPTY
    if kind == "boolean":
        return Val("TRUE" if value else "FALSE", False, "BOOLEAN", "boolean", const=value)
    if kind == "integer":
        return Val(str(int(value)), False, "BIGINT", "integer", const=int(value))
    if kind == "decimal":
        return Val(f"CAST({sql_string(str(value))} AS DOUBLE)", False, "DOUBLE", "decimal", const=value)
    return Val(sql_string(str(value)), False, "VARCHAR", "string" if kind == "string" else kind, const=value)


def constant(name: str, scope: Scope) -> Val:
    if name == "rowIndex":
        return Val(scope.index_sql, False, "BIGINT", "integer")
    if name in ("resource", "rootResource"):
        return scope.root
    if name in scope.constants:
        return scope.constants[name]
    raise ViewDefinitionError(f"undefined constant %{name}")


def _dynamic_children(child: str) -> str:
    # Without FHIR metadata, arrays are told apart from single values at query time.
    return (
        f"(CASE coalesce(json_type({child}), 'NULL') WHEN 'ARRAY' THEN json_extract({child}, '$[*]') "
        f"WHEN 'NULL' THEN CAST([] AS JSON[]) ELSE [{child}] END)"
    )


def navigate(v: Val, key: str, fresh: Fresh) -> Val:
    """`v.key`: child elements, flattening arrays as FHIRPath does."""
    if v.empty:
        return EMPTY
    json_key(key)
    if v.kind != JSON:
        raise ViewDefinitionError(f"cannot navigate to {key!r} from a {v.ftype or v.kind} value")
    element = schema.element(v.ftype, key)
    origin = {"parent": v, "field": key}
    if element is not None and element.choices:
        # value[x] without ofType(): whichever of the typed keys is present.
        def pick(item: str) -> str:
            keys = ", ".join(f"json_extract({item}, {sql_string('$.' + k)})" for k, _ in element.choices)
            return f"coalesce({keys})"

        # Built lazily: ofType() usually replaces this with a single typed key.
        if not v.many:
            return Val(lambda: pick(v.sql), False, JSON, **origin)
        var, keep = fresh("x"), fresh("x")

        def pick_each() -> str:
            mapped = f"list_transform({v.sql}, lambda {var}: {pick(var)})"
            return f"list_filter({mapped}, lambda {keep}: {keep} IS NOT NULL)"

        return Val(pick_each, True, JSON, **origin)
    if element is None:
        if not v.many:
            doc = v.base if v.base is not None and v.path == "$" else Doc(v.sql)
            return Val(_dynamic_children(doc.extract(f"$.{key}")), True, JSON, **origin)
        var = fresh("x")
        child = Doc(var).extract(f"$.{key}")
        return Val(
            f"flatten(list_transform({v.sql}, lambda {var}: {_dynamic_children(child)}))",
            True,
            JSON,
            **origin,
        )
    step = f".{key}[*]" if element.many else f".{key}"
    if v.base is not None:
        return path_val(v.base, v.path + step, v.many or element.many, element.type, **origin)
    if not v.many:
        return path_val(Doc(v.sql), "$" + step, element.many, element.type, **origin)
    var = fresh("x")
    if element.many:
        sql = f"flatten(list_transform({v.sql}, lambda {var}: json_extract({var}, {sql_string('$' + step)})))"
    else:
        keep = fresh("x")
        mapped = f"list_transform({v.sql}, lambda {var}: json_extract({var}, {sql_string('$' + step)}))"
        sql = f"list_filter({mapped}, lambda {keep}: {keep} IS NOT NULL)"
    return Val(sql, True, JSON, element.type, **origin)


def indexer(v: Val, index: Val, scope: Scope) -> Val:
    if v.empty or index.empty:
        return EMPTY
    if index.kind not in ("BIGINT",) and domain(index) != "BIGINT":
        raise ViewDefinitionError("an indexer must be an integer")
    if isinstance(index.const, int) and not isinstance(index.const, bool):
        position = index.const
        if position < 0:
            return EMPTY
        if v.many and v.base is not None and v.path.count("[*]") == 1 and v.path.endswith("[*]"):
            return path_val(v.base, v.path[:-3] + f"[{position}]", False, v.ftype)
        if not v.many:
            return v if position == 0 else EMPTY
        return Val(f"({v.sql})[{position + 1}]", False, v.kind, v.ftype)
    i = singleton(index, "BIGINT", "indexer", scope.fresh)
    return Val(f"(CASE WHEN {i} >= 0 THEN ({to_list(v)})[{i} + 1] END)", False, v.kind, v.ftype)


def unary(node: ast.Unary, scope: Scope) -> Val:
    v = translate(node.operand, scope)
    if v.empty:
        return EMPTY
    dom = domain(v) or "DOUBLE"
    if dom not in ("BIGINT", "DOUBLE"):
        raise ViewDefinitionError(f"unary {node.op} needs a number")
    item = singleton(v, dom, f"unary {node.op}", scope.fresh)
    const = v.const
    if node.op == "-" and isinstance(const, int) and not isinstance(const, bool):
        const = -const
    return Val(f"({node.op}{item})", False, dom, fhir_of_native(dom), const=const)


_COMPARE = {"=": "=", "!=": "<>", "<": "<", ">": ">", "<=": "<=", ">=": ">="}
_NUMERIC = ("BIGINT", "DOUBLE")


def _common_domain(a: Val, b: Val, op: str) -> str | None:
    da, db = domain(a), domain(b)
    if da is None or db is None:
        return da or db
    if da == db:
        return da
    if da in _NUMERIC and db in _NUMERIC:
        return "DOUBLE"
    raise ViewDefinitionError(f"cannot apply {op!r} to {a.ftype or da} and {b.ftype or db}")


def _dynamic_compare(a: str, b: str, op: str) -> str:
    numbers = "('BIGINT', 'UBIGINT', 'DOUBLE')"
    return (
        f"(CASE WHEN json_type({a}) IN {numbers} AND json_type({b}) IN {numbers} "
        f"THEN TRY_CAST({a} AS DOUBLE) {op} TRY_CAST({b} AS DOUBLE) "
        f"WHEN json_type({a}) = 'VARCHAR' AND json_type({b}) = 'VARCHAR' "
        f"THEN json_extract_string({a}, '$') {op} json_extract_string({b}, '$') "
        f"ELSE CAST({a} AS VARCHAR) {op} CAST({b} AS VARCHAR) END)"
    )


def compare(op: str, a: Val, b: Val, fresh: Fresh) -> Val:
    if a.empty or b.empty:
        return bool_val(typed_null("BOOLEAN"))
    sql_op = _COMPARE[op]
    dom = _common_domain(a, b, op)
    if op in ("=", "!=") and (a.many or b.many):
        # Collection equality: same items in the same order.
        target = dom or "VARCHAR"
        left, right = list_as(a, target, fresh), list_as(b, target, fresh)
        equal = (
            f"(CASE WHEN coalesce(len({left}), 0) = 0 OR coalesce(len({right}), 0) = 0 THEN NULL "
            f"ELSE {left} = {right} END)"
        )
        return bool_val(equal if op == "=" else f"(NOT {equal})")
    if dom is None:
        left, right = singleton(a, JSON, op, fresh), singleton(b, JSON, op, fresh)
        return bool_val(_dynamic_compare(left, right, sql_op))
    left, right = singleton(a, dom, op, fresh), singleton(b, dom, op, fresh)
    return bool_val(f"({left} {sql_op} {right})")


def arithmetic(op: str, a: Val, b: Val, fresh: Fresh) -> Val:
    if op == "&":
        left, right = singleton(a, "VARCHAR", op, fresh), singleton(b, "VARCHAR", op, fresh)
        return Val(f"(coalesce({left}, '') || coalesce({right}, ''))", False, "VARCHAR", "string")
    if a.empty or b.empty:
        return EMPTY
    da, db = domain(a) or "DOUBLE", domain(b) or "DOUBLE"
    if op == "+" and da == db == "VARCHAR":
        left, right = singleton(a, "VARCHAR", op, fresh), singleton(b, "VARCHAR", op, fresh)
        return Val(f"({left} || {right})", False, "VARCHAR", "string")
    if da not in _NUMERIC or db not in _NUMERIC:
        raise ViewDefinitionError(f"cannot apply {op!r} to {a.ftype or da} and {b.ftype or db}")
    integral = da == db == "BIGINT" and op != "/"
    kind = "BIGINT" if integral else "DOUBLE"
    left, right = singleton(a, kind, op, fresh), singleton(b, kind, op, fresh)
    if op in ("/", "div", "mod"):
        # FHIRPath division by zero is empty, not an error.
        right = f"nullif({right}, 0)"
    sql_op = {"+": "+", "-": "-", "*": "*", "/": "/", "div": "//", "mod": "%"}[op]
    sql = f"({left} {sql_op} {right})"
    if op == "div" and not integral:
        sql = f"CAST(trunc({sql}) AS BIGINT)"
        kind = "BIGINT"
    return Val(sql, False, kind, fhir_of_native(kind))


def _union(a: Val, b: Val, fresh: Fresh) -> Val:
    if a.empty:
        return b
    if b.empty:
        return a
    kind = a.kind if a.kind == b.kind else JSON
    ftype = a.ftype if a.ftype == b.ftype else None
    whole, var, i = fresh("l"), fresh("x"), fresh("i")

    def sql() -> str:
        left, right = list_as(a, kind, fresh), list_as(b, kind, fresh)
        empty = f"CAST([] AS {kind}[])"
        both = f"list_concat(coalesce({left}, {empty}), coalesce({right}, {empty}))"
        # Order-preserving de-duplication: keep an item unless it already appeared earlier. The list is
        # bound once through an outer lambda so that DuckDB does not recompute it for every item.
        keep = f"NOT list_contains(list_slice({whole}, 1, {i} - 1), {var})"
        dedup = f"list_filter({whole}, lambda {var}, {i}: {keep})"
        return f"(list_transform([{both}], lambda {whole}: {dedup}))[1]"

    return Val(sql, True, kind, ftype, union_of=(a, b))


def _membership(item: Val, collection: Val, op: str, fresh: Fresh) -> Val:
    if item.empty:
        return bool_val(typed_null("BOOLEAN"))
    dom = _common_domain(item, collection, op) or "VARCHAR"
    one = singleton(item, dom, op, fresh)
    found = f"coalesce(list_contains({list_as(collection, dom, fresh)}, {one}), FALSE)"
    return bool_val(f"(CASE WHEN {one} IS NULL THEN NULL ELSE {found} END)")


def binary(node: ast.Binary, scope: Scope) -> Val:
    a, b = translate(node.left, scope), translate(node.right, scope)
    op, fresh = node.op, scope.fresh
    if op in ("and", "or", "xor", "implies"):
        left, right = as_bool(a, f"operand of {op!r}", fresh), as_bool(b, f"operand of {op!r}", fresh)
        sql = {
            "and": f"({left} AND {right})",
            "or": f"({left} OR {right})",
            "xor": f"({left} <> {right})",
            "implies": f"((NOT {left}) OR {right})",
        }[op]
        return bool_val(sql)
    if op in _COMPARE:
        return compare(op, a, b, fresh)
    if op in ("~", "!~"):
        left, right = singleton(a, "VARCHAR", op, fresh), singleton(b, "VARCHAR", op, fresh)
        same = f"(coalesce(lower(trim({left})), '') = coalesce(lower(trim({right})), ''))"
        return bool_val(same if op == "~" else f"(NOT {same})")
    if op == "|":
        return _union(a, b, fresh)
    if op == "in":
        return _membership(a, b, op, fresh)
    if op == "contains":
        return _membership(b, a, op, fresh)
    return arithmetic(op, a, b, fresh)


def item_scope(v: Val, scope: Scope) -> tuple[str | None, Scope]:
    """A scope whose $this is one element of `v` (a lambda variable when `v` is a list)."""
    if not v.many:
        return None, scope.at(v)
    var = scope.fresh("x")
    base = Doc(var) if v.kind == JSON else None
    return var, scope.at(Val(var, False, v.kind, v.ftype, base=base))

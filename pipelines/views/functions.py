"""The FHIRPath functions SQL-on-FHIR requires, compiled to DuckDB SQL."""

from __future__ import annotations

import re

from . import fhirpath as ast
from . import schema
from .errors import ViewDefinitionError
from .sqlval import (
    EMPTY,
    JSON,
    Fresh,
    Val,
    as_bool,
    bool_val,
    item_as,
    list_as,
    native_of,
    path_val,
    singleton,
    sql_string,
    to_list,
)
from .translate import Scope, item_scope, navigate, register, translate

# FHIRPath System types named in ofType()/is/as, mapped to the FHIR types they hold.
_SYSTEM_TYPES = {
    "String": "string",
    "Boolean": "boolean",
    "Integer": "integer",
    "Decimal": "decimal",
    "Date": "date",
    "DateTime": "dateTime",
    "Time": "time",
}
_TYPE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")
# The id part of a literal reference ("Patient/1", "https://host/fhir/Patient/1/_history/2").
_JSON_TYPES = {
    "boolean": "('BOOLEAN')",
    "integer": "('BIGINT', 'UBIGINT')",
    "decimal": "('BIGINT', 'UBIGINT', 'DOUBLE')",
}


def type_name(text: str) -> str:
    """A FHIRPath type specifier normalised to the FHIR type name (FHIR.string -> string)."""
    namespace, _, name = text.rpartition(".")
    if namespace not in ("", "FHIR", "System") or not _TYPE_NAME.fullmatch(name):
        raise ViewDefinitionError(f"unsupported type specifier {text!r}")
    if namespace in ("", "System") and name in _SYSTEM_TYPES:
        return _SYSTEM_TYPES[name]
    return name


def _type_arg(node: ast.Call) -> str:
    if len(node.args) != 1:
        raise ViewDefinitionError(f"{node.name}() takes one type argument")
    arg = node.args[0]
    parts: list[str] = []
    while isinstance(arg, ast.Member):
        parts.insert(0, arg.name)
        arg = arg.target
    if not isinstance(arg, ast.Ident):
        raise ViewDefinitionError(f"{node.name}() takes a type name, not an expression")
    return type_name(".".join([arg.name, *parts]))


def of_type(v: Val, wanted: str, fresh: Fresh) -> Val:
    """ofType(T): choose value[x] keys by type, or filter items by their (static or JSON) type."""
    wanted = type_name(wanted)
    if v.empty:
        return EMPTY
    if v.parent is not None and v.field is not None:
        element = schema.element(v.parent.ftype, v.field)
        if element is None or element.choices:
            key = v.field + wanted[0].upper() + wanted[1:]
            if element is not None and key not in dict(element.choices):
                return EMPTY
            found = navigate(v.parent, key, fresh)
            return Val(found.text, found.many, found.kind, wanted, base=found.base, path=found.path)
    if v.ftype is not None:
        resource = wanted in ("Resource", "DomainResource") and schema.is_resource(v.ftype)
        return v if v.ftype == wanted or resource else EMPTY
    if v.kind != JSON:
        return v if native_of(wanted) == v.kind else EMPTY
    var = fresh("x")
    if wanted in _JSON_TYPES:
        test = f"json_type({var}) IN {_JSON_TYPES[wanted]}"
    elif native_of(wanted) == "VARCHAR":
        test = f"json_type({var}) = 'VARCHAR'"
    elif schema.is_resource(wanted):
        test = f"json_extract_string({var}, '$.resourceType') = {sql_string(wanted)}"
    else:
        test = f"json_type({var}) = 'OBJECT'"
    return Val(f"list_filter({to_list(v)}, lambda {var}: {test})", True, JSON, wanted)


def where(v: Val, criteria: object, scope: Scope) -> Val:
    if v.empty:
        return EMPTY
    var, inner = item_scope(v, scope)
    test = as_bool(translate(criteria, inner), "where() criteria", scope.fresh)
    if var is None:
        return Val(f"(CASE WHEN {test} THEN {v.sql} END)", False, v.kind, v.ftype)
    return Val(f"list_filter({v.sql}, lambda {var}: {test})", True, v.kind, v.ftype)


def exists(v: Val) -> str:
    if v.empty:
        return "FALSE"
    if v.many:
        return f"(coalesce(len({v.sql}), 0) > 0)"
    return f"({v.sql} IS NOT NULL)"


def first(v: Val) -> Val:
    if not v.many:
        return v
    if v.union_of is not None and v.union_of[0].kind == v.union_of[1].kind == v.kind:
        # (a | b).first() is a.first() when a has items, else b.first(): no need to build the union.
        a, b = (first(part) for part in v.union_of)
        return Val(f"coalesce({a.sql}, {b.sql})", False, v.kind, v.ftype)
    if v.base is not None and v.path.endswith("[*]") and v.path.count("[*]") == 1:
        return path_val(v.base, v.path[:-3] + "[0]", False, v.ftype)
    return Val(f"({v.sql})[1]", False, v.kind, v.ftype)


def _string_arg(node: ast.Call, scope: Scope, default: str | None) -> str:
    if not node.args:
        if default is None:
            raise ViewDefinitionError(f"{node.name}() needs an argument")
        return sql_string(default)
    if len(node.args) != 1:
        raise ViewDefinitionError(f"{node.name}() takes one argument")
    arg = translate(node.args[0], scope)
    if arg.kind != "VARCHAR" or not isinstance(arg.const, str):
        raise ViewDefinitionError(f"{node.name}() takes a string literal or constant")
    return arg.sql


def _reference_key(ref: Val, wanted: str | None, fresh: Fresh) -> Val:
    reference = navigate(ref, "reference", fresh)

    def key(text: str) -> str:
        # Literal references only: "Type/id", optionally absolute and/or with /_history/version.
        # Conditional references ("Patient?identifier=...") and fragments ("#med1") have no key.
        # split_part is used rather than one regular expression because it is an order of magnitude faster.
        history = f"(split_part({text}, '/', -2) = '_history')"
        kind = f"(CASE WHEN {history} THEN split_part({text}, '/', -4) ELSE split_part({text}, '/', -2) END)"
        key = f"(CASE WHEN {history} THEN split_part({text}, '/', -3) ELSE split_part({text}, '/', -1) END)"
        type_ok = f"{kind} = {sql_string(wanted)}" if wanted else f"regexp_full_match({kind}, '[A-Za-z]+')"
        return (
            f"(CASE WHEN strpos({text}, '?') = 0 AND strpos({text}, '#') = 0 AND {type_ok} "
            f"AND regexp_full_match({key}, '[A-Za-z0-9\\-\\.]{{1,64}}') THEN {key} END)"
        )

    if not reference.many:
        return Val(key(item_as(reference, "VARCHAR")), False, "VARCHAR", "string")
    var, keep = fresh("x"), fresh("x")
    strings = list_as(reference, "VARCHAR", fresh)
    mapped = f"list_transform({strings}, lambda {var}: {key(var)})"
    return Val(f"list_filter({mapped}, lambda {keep}: {keep} IS NOT NULL)", True, "VARCHAR", "string")


def _pad_time(text: str, low: bool) -> str:
    fill = ("00", "00", "000", "0") if low else ("59", "59", "999", "9")
    hour = "00" if low else "23"
    return (
        f"(CASE length({text}) WHEN 0 THEN '{hour}:{fill[0]}:{fill[1]}.{fill[2]}' "
        f"WHEN 2 THEN {text} || ':{fill[0]}:{fill[1]}.{fill[2]}' "
        f"WHEN 5 THEN {text} || ':{fill[1]}.{fill[2]}' "
        f"WHEN 8 THEN {text} || '.{fill[2]}' ELSE rpad({text}, 12, '{fill[3]}') END)"
    )


def _date_bound(text: str, low: bool) -> str:
    date = f"regexp_extract({text}, '^[0-9]{{4}}(-[0-9]{{2}}(-[0-9]{{2}})?)?', 0)"
    if low:
        year, month = f"{date} || '-01-01'", f"{date} || '-01'"
    else:
        year, month = f"{date} || '-12-31'", f"strftime(last_day(CAST({date} || '-01' AS DATE)), '%Y-%m-%d')"
    return f"(CASE length({date}) WHEN 4 THEN {year} WHEN 7 THEN {month} ELSE {date} END)"


def boundary(v: Val, low: bool, scope: Scope) -> Val:
    """lowBoundary()/highBoundary() for decimals (by written precision), dates, dateTimes and times."""
    if v.empty:
        return EMPTY
    ftype = v.ftype
    name = "lowBoundary()" if low else "highBoundary()"
    if ftype in ("decimal", "integer") or (ftype is None and v.kind in ("DOUBLE", "BIGINT")):
        item = singleton(v, v.kind if v.kind != JSON else JSON, name, scope.fresh)
        # The precision is the number of decimals written in the source JSON text.
        text = f"CAST({item} AS VARCHAR)"
        places = f"(CASE WHEN strpos({text}, '.') > 0 THEN length({text}) - strpos({text}, '.') ELSE 0 END)"
        sign = "-" if low else "+"
        sql = f"round(CAST({item} AS DOUBLE) {sign} 0.5 * pow(10, -{places}), CAST({places} + 1 AS INTEGER))"
        return Val(sql, False, "DOUBLE", "decimal")
    text = singleton(v, "VARCHAR", name, scope.fresh)
    if ftype is None:
        return _dynamic_boundary(v, text, low, scope)
    if ftype == "date":
        return Val(_date_bound(text, low), False, "VARCHAR", "date")
    if ftype == "time":
        return Val(_pad_time(text, low), False, "VARCHAR", "time")
    if ftype in ("dateTime", "instant"):
        clock = f"regexp_extract({text}, 'T([0-9:.]*)', 1)"
        zone = f"regexp_extract({text}, '(Z|[+-][0-9]{{2}}:[0-9]{{2}})$', 1)"
        default_zone = "'+14:00'" if low else "'-12:00'"
        sql = (
            f"(CASE WHEN {text} IS NULL THEN NULL ELSE {_date_bound(text, low)} || 'T' || "
            f"{_pad_time(clock, low)} || (CASE WHEN {zone} = '' THEN {default_zone} ELSE {zone} END) END)"
        )
        return Val(sql, False, "VARCHAR", ftype)
    raise ViewDefinitionError(f"{name} is not defined for {ftype}")


def _dynamic_boundary(v: Val, text: str, low: bool, scope: Scope) -> Val:
    # Without a static type the JSON value decides: numbers by precision, strings by their shape.
    item = singleton(v, JSON, "boundary", scope.fresh)
    number = boundary(Val(item, False, JSON, "decimal"), low, scope)
    stamp = boundary(Val(text, False, "VARCHAR", "dateTime"), low, scope)
    time = boundary(Val(text, False, "VARCHAR", "time"), low, scope)
    date = boundary(Val(text, False, "VARCHAR", "date"), low, scope)
    sql = (
        f"(CASE WHEN json_type({item}) IN ('BIGINT', 'UBIGINT', 'DOUBLE') THEN CAST({number.sql} AS VARCHAR) "
        f"WHEN regexp_matches({text}, '^[0-9]{{2}}:') THEN {time.sql} "
        f"WHEN strpos({text}, 'T') > 0 THEN {stamp.sql} ELSE {date.sql} END)"
    )
    return Val(sql, False, "VARCHAR", None)


def call(node: ast.Call, target: Val, implicit: bool, scope: Scope) -> Val:
    name, args, fresh = node.name, node.args, scope.fresh

    def arity(*allowed: int) -> None:
        if len(args) not in allowed:
            raise ViewDefinitionError(f"{name}() takes {' or '.join(map(str, allowed))} argument(s)")

    if name == "where":
        arity(1)
        return where(target, args[0], scope)
    if name in ("exists", "empty"):
        arity(*((0, 1) if name == "exists" else (0,)))
        found = exists(where(target, args[0], scope) if args else target)
        return bool_val(found if name == "exists" else f"(NOT {found})")
    if name == "first":
        arity(0)
        return first(target)
    if name == "last":
        arity(0)
        return target if not target.many else Val(f"({target.sql})[-1]", False, target.kind, target.ftype)
    if name == "count":
        arity(0)
        if target.empty:
            return Val("0", False, "BIGINT", "integer")
        count = f"coalesce(len({to_list(target)}), 0)"
        return Val(count, False, "BIGINT", "integer")
    if name == "not":
        arity(0)
        return bool_val(f"(NOT {as_bool(target, 'not()', fresh)})")
    if name == "join":
        arity(0, 1)
        separator = _string_arg(node, scope, "")
        strings = list_as(target, "VARCHAR", fresh)
        return Val(f"coalesce(array_to_string({strings}, {separator}), '')", False, "VARCHAR", "string")
    if name == "ofType":
        return of_type(target, _type_arg(node), fresh)
    if name == "extension":
        arity(1)
        url = _string_arg(node, scope, None)
        extensions = navigate(target, "extension", fresh)
        if extensions.empty:
            return EMPTY
        var = fresh("x")
        test = f"json_extract_string({var}, '$.url') = {url}"
        return Val(f"list_filter({to_list(extensions)}, lambda {var}: {test})", True, JSON, "Extension")
    if name == "getResourceKey":
        arity(0)
        if implicit or target.is_root:
            return Val(scope.key_sql, False, "VARCHAR", "id")
        return navigate(target, "id", fresh)
    if name == "getReferenceKey":
        arity(0, 1)
        wanted = _type_arg(node) if args else None
        return EMPTY if target.empty else _reference_key(target, wanted, fresh)
    if name in ("lowBoundary", "highBoundary"):
        arity(0)
        return boundary(target, name == "lowBoundary", scope)
    raise ViewDefinitionError(f"unsupported FHIRPath function {name}()")


register("call", call)
register("of_type", of_type)

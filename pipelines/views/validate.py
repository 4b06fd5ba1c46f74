"""Structural validation of SQL-on-FHIR v2 ViewDefinitions, run before any SQL is generated."""

from __future__ import annotations

import math
import re

from .errors import ViewDefinitionError
from .fhirpath import parse

NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
RESOURCE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
TYPE = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")

_SELECT_KEYS = {"column", "select", "forEach", "forEachOrNull", "repeat", "unionAll", "id", "extension"}
_COLUMN_KEYS = {"name", "path", "description", "collection", "type", "tag", "id", "extension"}
_ITERATORS = ("forEach", "forEachOrNull", "repeat")

# constant value[x] keys and the Python types their JSON values must have.
_STRING_CONSTANTS = (
    "Base64Binary",
    "Canonical",
    "Code",
    "Date",
    "DateTime",
    "Id",
    "Instant",
    "Markdown",
    "Oid",
    "String",
    "Time",
    "Uri",
    "Url",
    "Uuid",
)
_INTEGER_CONSTANTS = ("Integer", "Integer64", "PositiveInt", "UnsignedInt")


def _fail(where: str, message: str) -> ViewDefinitionError:
    return ViewDefinitionError(f"{where}: {message}")


def _parse(text: str, where: str) -> None:
    try:
        parse(text)
    except ViewDefinitionError as exc:
        raise _fail(where, str(exc)) from None


def _list_of_objects(value: object, where: str, *, allow_empty: bool = False) -> list[dict]:
    if not isinstance(value, list) or (not value and not allow_empty):
        raise _fail(where, "must be a non-empty array")
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise _fail(f"{where}[{i}]", "must be an object")
    return value


def constant_value(constant: dict, where: str) -> tuple[str, object]:
    """The (FHIR type, value) of a constant, checking it holds exactly one well-typed value[x]."""
    keys = [k for k in constant if k.startswith("value") and k[5:6].isupper()]
    if len(keys) != 1:
        raise _fail(where, "a constant needs exactly one value[x]")
    suffix = keys[0][5:]
    value = constant[keys[0]]
    ok = False
    if suffix in _STRING_CONSTANTS:
        ok = isinstance(value, str)
    elif suffix == "Boolean":
        ok = isinstance(value, bool)
    elif suffix in _INTEGER_CONSTANTS:
        ok = isinstance(value, int) and not isinstance(value, bool)
        if suffix == "PositiveInt":
            ok = ok and value > 0
        if suffix == "UnsignedInt":
            ok = ok and value >= 0
    elif suffix == "Decimal":
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    else:
        raise _fail(where, f"unsupported constant type value{suffix}")
    if not ok:
        raise _fail(where, f"value{suffix} has the wrong JSON type")
    return suffix[0].lower() + suffix[1:], value


def _validate_column(column: dict, where: str) -> None:
    unknown = set(column) - _COLUMN_KEYS
    if unknown:
        raise _fail(where, f"unknown column properties {sorted(unknown)}")
    name = column.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise _fail(where, f"column name {name!r} must match {NAME.pattern}")
    if not isinstance(column.get("path"), str) or not column["path"].strip():
        raise _fail(where, "column path must be a non-empty string")
    if "collection" in column and not isinstance(column["collection"], bool):
        raise _fail(where, "collection must be true or false")
    _parse(column["path"], where)
    if "type" in column and (not isinstance(column["type"], str) or not TYPE.fullmatch(column["type"])):
        raise _fail(where, f"column type {column['type']!r} is not a FHIR type name")


def _validate_select(node: dict, where: str) -> list[str]:
    """Validate a select node; return the column names it outputs, in order."""
    unknown = set(node) - _SELECT_KEYS
    if unknown:
        raise _fail(where, f"unknown select properties {sorted(unknown)}")
    iterators = [k for k in _ITERATORS if k in node]
    if len(iterators) > 1:
        raise _fail(where, f"{' and '.join(iterators)} cannot be combined")
    for key in ("forEach", "forEachOrNull"):
        if key in node:
            if not isinstance(node[key], str) or not node[key].strip():
                raise _fail(where, f"{key} must be a FHIRPath string")
            _parse(node[key], f"{where}.{key}")
    if "repeat" in node:
        paths = node["repeat"]
        if (
            not isinstance(paths, list)
            or not paths
            or not all(isinstance(p, str) and p.strip() for p in paths)
        ):
            raise _fail(where, "repeat must be a non-empty array of FHIRPath strings")
        for i, path in enumerate(paths):
            _parse(path, f"{where}.repeat[{i}]")
    names: list[str] = []
    for i, column in enumerate(_list_of_objects(node.get("column", []), f"{where}.column", allow_empty=True)):
        _validate_column(column, f"{where}.column[{i}]")
        names.append(column["name"])
    for i, child in enumerate(_list_of_objects(node.get("select", []), f"{where}.select", allow_empty=True)):
        names.extend(_validate_select(child, f"{where}.select[{i}]"))
    if "unionAll" in node:
        branches = _list_of_objects(node["unionAll"], f"{where}.unionAll")
        shapes = [_validate_select(b, f"{where}.unionAll[{i}]") for i, b in enumerate(branches)]
        for i, shape in enumerate(shapes[1:], start=1):
            if shape != shapes[0]:
                raise _fail(
                    f"{where}.unionAll[{i}]",
                    f"columns {shape} differ from the first branch's {shapes[0]} (same names, same order)",
                )
        names.extend(shapes[0])
    return names


def validate_view(view: object) -> list[str]:
    """Check a ViewDefinition's structure; return its output column names in order."""
    if not isinstance(view, dict):
        raise ViewDefinitionError("a ViewDefinition must be a JSON object")
    if view.get("resourceType", "ViewDefinition") != "ViewDefinition":
        raise _fail("resourceType", "must be ViewDefinition")
    resource = view.get("resource")
    if not isinstance(resource, str) or not RESOURCE.fullmatch(resource):
        raise _fail("resource", f"must name a FHIR resource type, not {resource!r}")
    if "name" in view and (not isinstance(view["name"], str) or not NAME.fullmatch(view["name"])):
        raise _fail("name", f"{view['name']!r} must match {NAME.pattern}")
    seen: set[str] = set()
    for i, constant in enumerate(_list_of_objects(view.get("constant", []), "constant", allow_empty=True)):
        name = constant.get("name")
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise _fail(f"constant[{i}]", f"name {name!r} must match {NAME.pattern}")
        if name in seen or name == "rowIndex":
            raise _fail(f"constant[{i}]", f"constant %{name} is defined twice or reserved")
        seen.add(name)
        constant_value(constant, f"constant[{i}]")
    for i, where in enumerate(_list_of_objects(view.get("where", []), "where", allow_empty=True)):
        if not isinstance(where.get("path"), str) or not where["path"].strip():
            raise _fail(f"where[{i}]", "path must be a non-empty FHIRPath string")
        _parse(where["path"], f"where[{i}]")
    names: list[str] = []
    for i, node in enumerate(_list_of_objects(view.get("select"), "select")):
        names.extend(_validate_select(node, f"select[{i}]"))
    if not names:
        raise _fail("select", "the view has no columns")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise _fail("select", f"column names must be unique, repeated: {duplicates}")
    return names

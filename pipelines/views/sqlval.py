"""Typed SQL fragments for FHIRPath collections, with safe quoting and DuckDB type conversions."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from .errors import ViewDefinitionError
from .schema import PRIMITIVE_TYPES

JSON = "JSON"
KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

_INTEGER_TYPES = {"integer", "positiveInt", "unsignedInt", "integer64"}
_FHIR_TO_SQL = {"boolean": "BOOLEAN", "decimal": "DOUBLE", **dict.fromkeys(_INTEGER_TYPES, "BIGINT")}
_NATIVE_TO_FHIR = {"BOOLEAN": "boolean", "BIGINT": "integer", "DOUBLE": "decimal", "VARCHAR": "string"}


class Doc:
    """A JSON document in SQL (an unnested item, a lambda variable) that paths are extracted from."""

    def __init__(self, sql: str):
        self.sql = sql

    def extract(self, path: str, *, string: bool = False) -> str:
        if path == "$" and not string:
            return self.sql
        function = "json_extract_string" if string else "json_extract"
        return f"{function}({self.sql}, {sql_string(path)})"


class PrefetchedDoc(Doc):
    """The resource document: its paths are pulled out with one multi-path extraction per row.

    DuckDB parses a JSON document again for every json_extract call, which dominates the cost of wide
    views; asking for all paths at once parses each resource once or twice instead of once per column.
    Multi-path extraction cannot take wildcards, so a path is split at its first [*] and only the
    prefix is prefetched.
    """

    def __init__(self, alias: str, source: str):
        super().__init__(f"{alias}.resource")
        self.alias = alias
        self.source = source
        self.json_paths: dict[str, int] = {}
        self.string_paths: dict[str, int] = {}

    def _slot(self, path: str, string: bool) -> str:
        table, column = (self.string_paths, "_s") if string else (self.json_paths, "_j")
        index = table.setdefault(path, len(table) + 1)
        return f"{self.alias}.{column}[{index}]"

    def extract(self, path: str, *, string: bool = False) -> str:
        if path == "$":
            return super().extract(path, string=string)
        head, star, rest = path.partition("[*]")
        if not star:
            return self._slot(path, string)
        function = "json_extract_string" if string else "json_extract"
        return f"{function}({self._slot(head, False)}, {sql_string('$[*]' + rest)})"

    def projection(self) -> list[str]:
        """The select-list items that compute the prefetched path lists from the raw document."""
        items = []
        for column, function, table in (
            ("_j", "json_extract", self.json_paths),
            ("_s", "json_extract_string", self.string_paths),
        ):
            if table:
                paths = ", ".join(sql_string(p) for p in table)
                items.append(f"{function}({self.source}, [{paths}]) AS {column}")
        return items


@dataclass(frozen=True)
class Val:
    """A compiled FHIRPath collection.

    `many` values are SQL lists (NULL counts as empty); others are one item or NULL. `kind` is JSON or
    the DuckDB type of the items. For JSON navigations `base`/`path` keep the JSONPath so that chains
    compile to one json_extract, and `parent`/`field` let ofType() resolve value[x] keys.
    """

    text: str | Callable[[], str] | None
    many: bool
    kind: str
    ftype: str | None = None
    base: Doc | None = None
    path: str = "$"
    parent: Val | None = None
    field: str | None = None
    const: object = None
    is_root: bool = False
    empty: bool = False
    union_of: tuple[Val, Val] | None = None

    @property
    def sql(self) -> str:
        """The SQL; for paths it is extracted on demand so that unused intermediate steps cost nothing."""
        if callable(self.text):
            return self.text()
        if self.text is not None:
            return self.text
        assert self.base is not None
        return self.base.extract(self.path)


Fresh = Callable[[str], str]

EMPTY = Val("NULL", False, JSON, empty=True)


def sql_string(text: str) -> str:
    """A DuckDB string literal; DuckDB treats backslashes literally, so doubling quotes suffices."""
    if "\x00" in text:
        raise ViewDefinitionError("string values must not contain NUL characters")
    return "'" + text.replace("'", "''") + "'"


def quote_ident(name: str) -> str:
    """A quoted SQL identifier; anything but letters, digits and underscores is refused outright."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ViewDefinitionError(f"not a safe SQL identifier: {name!r}")
    return f'"{name}"'


def json_key(name: str) -> str:
    if not KEY.fullmatch(name):
        raise ViewDefinitionError(f"unsupported element name in path: {name!r}")
    return name


def path_val(base: Doc, path: str, many: bool, ftype: str | None, **extra: object) -> Val:
    return Val(None, many, JSON, ftype, base=base, path=path, **extra)


def item_val(sql: str, ftype: str | None) -> Val:
    """One JSON item held in a SQL expression (a column of an unnest, a lambda variable)."""
    return Val(sql, False, JSON, ftype, base=Doc(sql))


def native_of(ftype: str | None) -> str | None:
    """The DuckDB type a FHIR primitive compares and outputs as (None for complex or unknown)."""
    if ftype is None:
        return None
    if ftype in _FHIR_TO_SQL:
        return _FHIR_TO_SQL[ftype]
    return "VARCHAR" if ftype in PRIMITIVE_TYPES else None


def domain(v: Val) -> str | None:
    return native_of(v.ftype) if v.kind == JSON else v.kind


def fhir_of_native(kind: str) -> str | None:
    return _NATIVE_TO_FHIR.get(kind)


def typed_null(kind: str) -> str:
    return f"CAST(NULL AS {kind})"


def to_list(v: Val) -> str:
    """The value as a SQL list (NULL when empty is fine for every consumer)."""
    if v.empty:
        return f"CAST(NULL AS {v.kind}[])"
    if v.many:
        return v.sql
    return f"(CASE WHEN {v.sql} IS NULL THEN NULL ELSE [{v.sql}] END)"


def item_as(v: Val, target: str) -> str:
    """One item converted to `target` (JSON or a DuckDB type); failed conversions become NULL."""
    if v.empty:
        return typed_null(target)
    if v.kind == target:
        return v.sql
    if v.kind == JSON:
        if target == "VARCHAR":
            if v.base is not None and not v.many:
                return v.base.extract(v.path, string=True)
            return f"json_extract_string({v.sql}, '$')"
        return f"TRY_CAST({v.sql} AS {target})"
    if target == JSON:
        return f"to_json({v.sql})"
    return f"TRY_CAST({v.sql} AS {target})"


def list_as(v: Val, target: str, fresh: Fresh) -> str:
    """The value as a SQL list of `target` items."""
    if v.empty:
        return f"CAST(NULL AS {target}[])"
    if not v.many:
        if v.const is not None:
            return f"[{item_as(v, target)}]"
        return f"(CASE WHEN {v.sql} IS NULL THEN NULL ELSE [{item_as(v, target)}] END)"
    if v.kind == target:
        return v.sql
    if v.kind == JSON and target == "VARCHAR" and v.base is not None:
        return v.base.extract(v.path, string=True)
    var = fresh("x")
    item = Val(var, False, v.kind, v.ftype)
    return f"list_transform({v.sql}, lambda {var}: {item_as(item, target)})"


def singleton(v: Val, target: str, what: str, fresh: Fresh) -> str:
    """One item as `target`, raising at query time when the collection holds several (FHIRPath rule)."""
    if not v.many:
        return item_as(v, target)
    items = list_as(v, target, fresh)
    message = sql_string(f"{what}: expression returned more than one value")
    return f"(CASE WHEN len({items}) > 1 THEN error({message}) ELSE ({items})[1] END)"


def as_bool(v: Val, what: str, fresh: Fresh) -> str:
    """The value in a boolean context, rejecting expressions whose static type is not boolean."""
    if v.empty:
        return typed_null("BOOLEAN")
    dom = domain(v)
    if dom == "BOOLEAN":
        return singleton(v, "BOOLEAN", what, fresh)
    if dom is not None or (v.kind == JSON and v.ftype is not None):
        raise ViewDefinitionError(f"{what} must be boolean, but it returns {v.ftype or dom}")
    item = singleton(v, JSON, what, fresh)
    message = sql_string(f"{what}: expression returned a non-boolean value")
    return (
        f"(CASE WHEN {item} IS NULL THEN NULL WHEN json_type({item}) = 'BOOLEAN' "
        f"THEN CAST({item} AS BOOLEAN) ELSE error({message}) END)"
    )


def bool_val(sql: str) -> Val:
    return Val(sql, False, "BOOLEAN", "boolean")

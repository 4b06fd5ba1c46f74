"""Structural FHIR validation of every resource a run stored, compiled: the R4 JSON Schema on jsonschema-rs.

The schema is generated from R4's own StructureDefinitions (pipelines/quality/r4schema.py), so this is
an R4 check (cardinality, element names, types, primitive formats, choice types, contained resources),
not the R4B approximation of the pydantic models. Compiled once per type, it costs microseconds per
resource; errors are explained only for the resources that fail. Without the definitions installed
(`make setup` installs them) it falls back to fhir.resources' R4B models, object by object; types
neither knows are reported as not checked, never as passed.
"""

from __future__ import annotations

import binascii
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache

import duckdb
import orjson

from pipelines.common.ledger import pointer
from pipelines.common.warehouse import rows_per_table
from pipelines.quality.r4schema import r4_schema
from pipelines.resume.marks import run_filter

log = logging.getLogger(__name__)
SUITE = "fhir_structure"
_BATCH = 5_000
# jsonschema-rs error kinds as finding kinds (the first two are the names the pydantic check used).
_KINDS = {"required": "missing", "additionalProperties": "extra_forbidden", "minItems": "empty_array"}

Check = Callable[[str], Iterable[str] | None]  # resource JSON -> findings (None or empty when valid)


@dataclass
class TypeResult:
    """One resource type's structural result for a run: counts, finding kinds, failing records."""

    resource_type: str
    checked: int = 0
    invalid: int = 0
    findings: Counter[str] = field(default_factory=Counter)
    pointers: list[str] = field(default_factory=list)
    no_model: bool = False
    checker: str = "R4 schema"

    @property
    def name(self) -> str:
        return f"{SUITE}.{self.resource_type}"

    def observed_value(self) -> str:
        if self.no_model:
            return f"not checked: no {self.checker} for {self.resource_type} ({self.checked} resources)"
        top = "; ".join(f"{k} x{n}" for k, n in self.findings.most_common(5))
        return f"{self.invalid} of {self.checked} resources invalid" + (f": {top}" if top else "")


def _validator(resource_type: str, nested: frozenset[str]):
    """The compiled check of one type whose nested resources (contained, Bundle entries, Parameters)
    are of the types in `nested`. A check keeps only its latest (see _schema_check).

    The resource is validated wrapped as {resourceType: resource}. Only the definitions reachable from
    the type are compiled, and R4's ResourceList (what a nested resource is checked against) picks the
    definition only of the types in `nested`: its `if resourceType is T then T` clauses for other types
    can never apply to such a resource, so the findings are those of the whole schema. Compiling the
    whole of R4 took ~40 MB and 0.07 s; one type takes a few MB and milliseconds.
    """
    import jsonschema_rs

    schema = r4_schema()
    assert schema is not None
    defs = dict(schema["$defs"])
    listed = defs["ResourceList"]
    clauses = [c for c in listed["allOf"] if _clause_type(c) in nested]
    defs["ResourceList"] = {k: v for k, v in listed.items() if k != "allOf"} | (
        {"allOf": clauses} if clauses else {}  # an empty allOf is not a valid schema
    )
    root = {
        "$schema": schema["$schema"],
        "$defs": {name: defs[name] for name in _reachable(defs, resource_type)},
        "type": "object",
        "properties": {resource_type: {"$ref": f"#/$defs/{resource_type}"}},
    }
    return jsonschema_rs.validator_for(root, pattern_options=jsonschema_rs.RegexOptions())


@cache
def _whole():
    """Every R4 type in one validator (~40 MB): what checks a resource holding a nested resource without
    a resourceType, which R4's ResourceList checks against every type. Compiled only if one is met."""
    import jsonschema_rs

    schema = r4_schema()
    assert schema is not None
    root = {
        "$schema": schema["$schema"],
        "$defs": schema["$defs"],
        "type": "object",
        "properties": {t: {"$ref": f"#/$defs/{t}"} for t in schema["x-resource-types"]},
    }
    return jsonschema_rs.validator_for(root, pattern_options=jsonschema_rs.RegexOptions())


def _clause_type(clause: dict) -> str:
    return clause["if"]["properties"]["resourceType"]["const"]


def _reachable(defs: dict, start: str) -> set[str]:
    """The definitions a definition refers to, directly or not (itself included)."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        stack: list = [defs[name]]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                ref = node.get("$ref")
                if isinstance(ref, str):
                    todo.append(ref.rsplit("/", 1)[-1])
                stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)
    return seen


# A resourceType member as JSON text writes it; with an escape (\uXXXX) in the text the parsed
# resource is searched instead, so a nested resource is never left out of the compiled types.
_TYPE_MEMBER = re.compile(r'"resourceType"\s*:\s*"([A-Za-z]+)"')


def _nested_types(text: str, obj: object) -> set[str]:
    """The resourceType of every resource nested in this one (contained, entries, parameters)."""
    if "\\u" not in text:
        names = _TYPE_MEMBER.findall(text)
        if isinstance(obj, dict) and obj.get("resourceType") in names:
            names.remove(obj["resourceType"])  # its own (a nested one of the same type stays)
        return set(names)
    found: set[str] = set()
    stack = list(obj.values()) if isinstance(obj, dict) else [obj]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("resourceType"), str):
                found.add(node["resourceType"])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def _untyped_nested(errors: list) -> bool:
    """Is a nested resource missing its resourceType? R4's ResourceList then checks it against every type."""
    return any(
        e.kind.name == "required" and str(e.kind.property) == "resourceType" and len(e.instance_path) > 1
        for e in errors
    )


@cache
def schema_check(resource_type: str) -> Check | None:
    """The compiled R4 JSON Schema check of one type, or None without the schema or for a type R4 lacks."""
    return _schema_check(resource_type)


def _schema_check(resource_type: str) -> Check | None:
    schema = r4_schema()
    if schema is None or resource_type not in schema["x-resource-types"]:
        return None
    known = frozenset(schema["x-resource-types"])
    # The nested types met so far: the validator is recompiled when a resource brings new ones (at most
    # once per R4 type), and the one it replaces is dropped.
    state = {"nested": frozenset(), "validator": _validator(resource_type, frozenset())}

    def check(text: str) -> list[str] | None:
        # Keyed by the table's type: a resource stored under the wrong type fails its resourceType const.
        try:
            doc = {resource_type: orjson.loads(text)}
        except orjson.JSONDecodeError:
            # Valid JSON that no double can hold (a 1,000-digit number): FHIR's decimal cannot carry it.
            return [f"{resource_type}: number_out_of_range"]
        more = (_nested_types(text, doc[resource_type]) & known) - state["nested"]
        if more:
            state["nested"] = state["nested"] | more
            state["validator"] = _validator(resource_type, state["nested"])
        validator = state["validator"]
        long_findings: list[str] = []
        if len(text) > _LONG_STRING:
            doc = {resource_type: _shorten(doc[resource_type], resource_type, long_findings)}
        if validator.is_valid(doc) and not long_findings:
            return None
        errors = list(validator.iter_errors(doc))
        if _untyped_nested(errors):
            errors = list(_whole().iter_errors(doc))
        found = [f for e in errors for f in _schema_findings(resource_type, e)]
        return found + [f for f in long_findings if f not in found]

    return check


# Strings past this length (an embedded PDF's base64, a long narrative) are not handed whole to the
# compiled validator: its pattern match over tens of megabytes can exhaust a thread's stack and crash the
# process. Such a string is checked here in linear time, an Attachment's or Binary's `data` as strict
# base64 and any other as FHIR's string, and the validator sees a prefix that keeps whole base64 groups.
_LONG_STRING = 1 << 16
_FHIR_STRING = re.compile(r"[ \r\n\t\S]+")
_WHITESPACE = re.compile(r"\s+")


def _long_string_ok(path: str, value: str) -> bool:
    if path.rsplit(".", 1)[-1] != "data":
        return _FHIR_STRING.fullmatch(value) is not None
    try:
        binascii.a2b_base64(_WHITESPACE.sub("", value), strict_mode=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _shorten(value: object, path: str, findings: list[str]) -> object:
    if isinstance(value, dict):
        return {k: _shorten(v, f"{path}.{k}", findings) for k, v in value.items()}
    if isinstance(value, list):
        return [_shorten(v, path, findings) for v in value]
    if not isinstance(value, str) or len(value) <= _LONG_STRING:
        return value
    if not _long_string_ok(path, value):
        findings.append(f"{path}: pattern")
    prefix = value[:_LONG_STRING]
    groups = sum(1 for c in prefix if not c.isspace())
    while groups % 4:  # end on a whole base64 group (4 characters, whitespace between groups only)
        groups -= not prefix[-1].isspace()
        prefix = prefix[:-1]
    return prefix


def _schema_findings(resource_type: str, error) -> list[str]:
    """Element path and error kind only: the error's message would quote the record's values."""
    parts = [str(p) for p in list(error.instance_path)[1:] if not isinstance(p, int)]
    kind = error.kind.name
    if kind == "required":
        leaves = [str(error.kind.property)]
    elif kind == "additionalProperties":
        leaves = sorted(str(u) for u in error.kind.unexpected)  # element names, not values
    else:
        leaves = [""]
    out = []
    for leaf in leaves:
        path = ".".join([*parts, leaf] if leaf else parts)
        out.append(f"{resource_type}{'.' + path if path else ''}: {_KINDS.get(kind, kind)}")
    return out


def _model_check(resource_type: str) -> Check | None:
    try:
        from fhir.resources.R4B import get_fhir_model_class
        from pydantic import ValidationError

        model = get_fhir_model_class(resource_type)
    except (KeyError, ValueError, ImportError):
        return None

    def check(text: str) -> list[str] | None:
        try:
            model.model_validate_json(text)
        except ValidationError as exc:
            return [_model_finding(resource_type, e) for e in exc.errors()]
        return None

    return check


def _model_finding(resource_type: str, error: dict) -> str:
    path = ".".join(str(p) for p in error.get("loc", ()) if not isinstance(p, int))
    kind = str(error.get("type", "invalid")).rsplit(".", 1)[-1]  # fhir.resources prefixes its own
    return f"{resource_type}{'.' + path if path else ''}: {kind}"


def validate_structure(
    con: duckdb.DuckDBPyConnection, run_ids: str | Sequence[str], max_pointers: int
) -> list[TypeResult]:
    """Validate every resource these runs stored (what back-load will send next), one type at a time."""
    runs = [run_ids] if isinstance(run_ids, str) else list(run_ids)
    where, params = run_filter(runs)
    compiled = r4_schema() is not None
    if not compiled:
        log.warning("FHIR R4 definitions not installed: structure checked with the R4B models, slowly")
    results = []
    # Only the types these runs stored, each compiled on first use (pipelines.quality.structure._validator).
    for rtype in rows_per_table(con, where, params):
        result = TypeResult(rtype, checker="R4 definition" if compiled else "R4B model")
        check = _schema_check(rtype) if compiled else _model_check(rtype)
        failed: list[str] = []
        cur = con.cursor()
        cur.execute(
            f'SELECT id, resource FROM fhir."{rtype}" WHERE {where} ORDER BY file_sha256, unit_position, id',
            params,
        )
        while rows := cur.fetchmany(_BATCH):
            result.checked += len(rows)
            if check is None:
                continue
            for rid, text in rows:
                findings = check(text)
                if findings:
                    result.invalid += 1
                    result.findings.update(set(findings))
                    if len(failed) < max_pointers:
                        failed.append(rid)
        cur.close()
        result.pointers = _pointers(con, rtype, runs, failed)
        result.no_model = check is None
        if result.checked:
            results.append(result)
        log.info("structure %s: %d checked, %d invalid", rtype, result.checked, result.invalid)
    return results


def _pointers(con: duckdb.DuckDBPyConnection, rtype: str, runs: list[str], ids: list[str]) -> list[str]:
    """'<Type>/<id> landing/<sha256>#<unit>' for the failing resources, found in the ledger afterwards."""
    if not ids:
        return []
    rows = con.execute(
        f"""
        SELECT r.id, r.file_sha256, r.unit_position, l.unit_kind, l.byte_offset, l.byte_length
        FROM fhir."{rtype}" r
        LEFT JOIN ops.ledger l
          ON l.run_id = r.run_id AND l.file_sha256 = r.file_sha256 AND l.unit_position = r.unit_position
        WHERE list_contains(?, r.run_id) AND list_contains(?, r.id)
        """,
        [runs, ids],
    ).fetchall()
    where = {rid: pointer(sha, kind or "unit", pos, off, length) for rid, sha, pos, kind, off, length in rows}
    return [f"{rtype}/{rid} {where[rid]}" for rid in ids if rid in where]

"""FHIR R4 element metadata (cardinality, types, choice groups) for the ViewDefinition compiler.

Read from the R4 schema generated from R4's StructureDefinitions (pipelines/quality/r4schema.py) when
they are installed, else from fhir.resources' R4B models (slower to load, R4B rather than R4).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from functools import lru_cache

# FHIR primitive types by the marker class fhir.resources puts in typing.Annotated.
_MARKERS = {
    "String": "string",
    "Code": "code",
    "Uri": "uri",
    "Id": "id",
    "DateTime": "dateTime",
    "Markdown": "markdown",
    "Decimal": "decimal",
    "Date": "date",
    "PositiveInt": "positiveInt",
    "Canonical": "canonical",
    "Integer": "integer",
    "Integer64": "integer64",
    "UnsignedInt": "unsignedInt",
    "Instant": "instant",
    "Time": "time",
    "Url": "url",
    "EncodedBytes": "base64Binary",
    "Base64Binary": "base64Binary",
    "Oid": "oid",
    "UuidVersion": "uuid",
    "Uuid": "uuid",
    "Xhtml": "xhtml",
    "Boolean": "boolean",
}

PRIMITIVE_TYPES = frozenset(_MARKERS.values())


@dataclass(frozen=True)
class Element:
    """One element of a FHIR type: whether it repeats, its type, and for value[x] its JSON keys."""

    many: bool
    type: str | None
    choices: tuple[tuple[str, str], ...] = ()


def _unwrap(annotation: object) -> tuple[bool, object]:
    many = False
    node = annotation
    for _ in range(4):
        args = [a for a in typing.get_args(node) if a is not type(None)]
        origin = typing.get_origin(node)
        if origin in (list, typing.List):  # noqa: UP006 - fhir.resources annotates with typing.List
            many = True
            node = args[0]
        elif origin is typing.Annotated:
            return many, node
        elif args and origin is not None and len(args) == 1:
            node = args[0]
        else:
            break
    return many, node


def _type_name(node: object) -> str | None:
    if typing.get_origin(node) is typing.Annotated:
        return _MARKERS.get(type(node.__metadata__[0]).__name__)
    if node is bool:
        return "boolean"
    if isinstance(node, type):
        name = node.__name__
        # fhir.resources names its abstract field types "<FHIR type>Type".
        return name[: -len("Type")] if name.endswith("Type") else None
    return None


@lru_cache(maxsize=1)
def _loader() -> typing.Callable[[str], type] | None:
    try:
        from fhir.resources.R4B import get_fhir_model_class
    except ImportError:  # the compiler still works without metadata, with dynamic JSON typing
        return None
    return get_fhir_model_class


def _r4_elements(defs: dict[str, typing.Any], type_name: str) -> dict[str, Element] | None:
    spec = defs.get(type_name)
    if not isinstance(spec, dict) or "properties" not in spec:
        return None
    out: dict[str, Element] = {}
    for key, prop in spec["properties"].items():
        if key.startswith("_") or key == "resourceType":
            continue
        many = prop.get("type") == "array"
        node = prop["items"] if many else prop
        if "anyOf" in node:  # a repeating primitive: its type or null
            node = node["anyOf"][0]
        ref = node.get("$ref", "").rsplit("/", 1)[-1] or None
        out[key] = Element(many=many, type="Resource" if ref == "ResourceList" else ref)
    for group, choice in spec.get("x-choices", {}).items():
        keys = tuple((k, t) for k, t in choice["keys"])
        out.setdefault(group, Element(many=choice["many"], type=None, choices=keys))
    return out


@lru_cache(maxsize=2048)
def elements(type_name: str) -> dict[str, Element] | None:
    """JSON key -> Element for a FHIR resource, datatype or backbone element, or None when unknown."""
    from pipelines.quality.r4schema import r4_schema

    r4 = r4_schema()
    if r4 is not None:
        return _r4_elements(r4["$defs"], type_name) if type_name[:1].isupper() else None
    load = _loader()
    if load is None or not type_name[:1].isupper():
        return None
    try:
        cls = load(type_name)
    except Exception:  # unknown to R4B (for example an R5-only resource): no metadata
        return None
    out: dict[str, Element] = {}
    choices: dict[str, list[tuple[str, str]]] = {}
    choice_many: dict[str, bool] = {}
    for attr, field in cls.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if not extra.get("element_property"):
            continue
        key = field.alias or attr
        many, node = _unwrap(field.annotation)
        ftype = _type_name(node)
        out[key] = Element(many=many, type=ftype)
        group = extra.get("one_of_many")
        if isinstance(group, str) and ftype is not None:
            choices.setdefault(group, []).append((key, ftype))
            choice_many[group] = many
    for group, keys in choices.items():
        out.setdefault(group, Element(many=choice_many[group], type=None, choices=tuple(keys)))
    return out


def element(type_name: str | None, key: str) -> Element | None:
    """The Element `key` of FHIR type `type_name`, or None when either is unknown."""
    if not type_name:
        return None
    table = elements(type_name)
    return None if table is None else table.get(key)


def is_resource(type_name: str) -> bool:
    """Whether R4 knows `type_name` as a resource (it has a resourceType element)."""
    table = elements(type_name)
    return table is not None and "implicitRules" in table

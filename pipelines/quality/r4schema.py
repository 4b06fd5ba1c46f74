"""The FHIR R4 JSON Schema, generated from the R4 StructureDefinitions that a registry package ships.

The schema is what the structural check compiles (jsonschema-rs): cardinality (required elements,
arrays for repeating ones, no empty arrays), element names (no unknown property), data types, primitive
formats (the regular expressions R4 publishes for each primitive type), choice types and contained
resources. A required primitive is satisfied by its value or by its `_element` extension, as R4's JSON
rules say; a required choice element by any one of its typed names.

The StructureDefinitions come from the npm package pinned in schemas/fhir-r4/package.json (installed by
`make setup`); $EHRLIFT_FHIR_R4_DEFINITIONS may name another folder holding profiles-types.json and
profiles-resources.json of FHIR 4.0.1. `python -m pipelines.quality.r4schema` writes the generated
schema to schemas/fhir-r4/r4.schema.json so a run need not generate it again.
"""

from __future__ import annotations

import os
from collections import defaultdict
from functools import cache
from pathlib import Path
from typing import Any

import orjson

from pipelines.common.paths import shipped

DEFINITIONS_ENV = "EHRLIFT_FHIR_R4_DEFINITIONS"
FHIR_VERSION = "4.0.1"
GENERATOR = 2  # bumped when the generated schema's shape changes, so an older file is regenerated
_BASE = "http://hl7.org/fhir/StructureDefinition/"
_PACKAGE_DIR = ("node_modules", "@medplum", "definitions", "dist", "fhir", "r4")
_FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
_REGEX_EXT = "http://hl7.org/fhir/StructureDefinition/regex"
# JSON representation of the primitives that are not JSON strings (R4 "JSON representation of primitives").
_JSON_TYPES: dict[str, dict[str, Any]] = {
    "boolean": {"type": "boolean"},
    "integer": {"type": "integer"},
    "positiveInt": {"type": "integer", "minimum": 1},
    "unsignedInt": {"type": "integer", "minimum": 0},
    "decimal": {"type": "number"},
}
_SYSTEM_TYPES = {"String": "string", "Boolean": "boolean", "Integer": "integer", "Decimal": "decimal"}


def definitions_dir() -> Path | None:
    """The folder with R4's profiles-types.json and profiles-resources.json, if installed."""
    env = os.environ.get(DEFINITIONS_ENV)
    folder = Path(env) if env else shipped("schemas") / "fhir-r4" / Path(*_PACKAGE_DIR)
    return folder if (folder / "profiles-resources.json").is_file() else None


def generated_path() -> Path:
    return shipped("schemas") / "fhir-r4" / "r4.schema.json"


@cache
def r4_schema() -> dict[str, Any] | None:
    """The generated schema (the file `make setup` wrote, else built now); None without definitions."""
    folder = definitions_dir()
    if folder is None:
        return None
    path = generated_path()
    if not os.environ.get(DEFINITIONS_ENV) and path.is_file():
        schema = orjson.loads(path.read_bytes())
        if schema.get("x-definitions-mtime") == _mtime(folder) and schema.get("x-generator") == GENERATOR:
            return schema
    return build_schema(folder)


def _mtime(folder: Path) -> int:
    return int((folder / "profiles-resources.json").stat().st_mtime)


def _structure_definitions(folder: Path) -> list[dict[str, Any]]:
    out = []
    for name in ("profiles-types.json", "profiles-resources.json"):
        bundle = orjson.loads((folder / name).read_bytes())
        for entry in bundle.get("entry", []):
            sd = entry.get("resource", {})
            if (
                sd.get("resourceType") == "StructureDefinition"
                and sd.get("fhirVersion") == FHIR_VERSION
                and sd.get("url", "").startswith(_BASE)
                and sd.get("kind") in ("primitive-type", "complex-type", "resource")
                and sd.get("derivation", "specialization") == "specialization"
            ):
                out.append(sd)
    return out


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/$defs/{name}"}


def _primitive(sd: dict[str, Any]) -> dict[str, Any]:
    if sd["id"] in _JSON_TYPES:
        return dict(_JSON_TYPES[sd["id"]])
    schema: dict[str, Any] = {"type": "string"}
    for el in sd["snapshot"]["element"]:
        if el["path"] == f"{sd['id']}.value":
            for ext in (el.get("type") or [{}])[0].get("extension", []):
                if ext.get("url") == _REGEX_EXT:
                    schema["pattern"] = f"^(?:{ext['valueString']})$"
    return schema


def _type_code(t: dict[str, Any]) -> str:
    code = t["code"]
    if code.startswith("http://hl7.org/fhirpath/System."):
        for ext in t.get("extension", []):
            if ext.get("url") == _FHIR_TYPE_EXT:
                return ext["valueUrl"]
        return _SYSTEM_TYPES.get(code.rsplit(".", 1)[1], "string")
    return code


class _Builder:
    def __init__(self, sds: list[dict[str, Any]]) -> None:
        self.primitives = {sd["id"] for sd in sds if sd["kind"] == "primitive-type"}
        self.resources = sorted(sd["id"] for sd in sds if sd["kind"] == "resource" and not sd["abstract"])
        self.defs: dict[str, Any] = {sd["id"]: _primitive(sd) for sd in sds if sd["kind"] == "primitive-type"}

    def structure(self, sd: dict[str, Any]) -> None:
        children: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for el in sd["snapshot"]["element"][1:]:
            children[el["path"].rpartition(".")[0]].append(el)
        self._object(sd["id"], children, sd["id"] if sd["kind"] == "resource" else None)

    def _object(self, path: str, children: dict[str, list[dict[str, Any]]], resource: str | None) -> None:
        props: dict[str, Any] = {}
        required: list[str] = []
        conditions: list[dict[str, Any]] = []
        choices: dict[str, dict[str, Any]] = {}
        if resource:
            props["resourceType"] = {"const": resource}
            required.append("resourceType")
        for el in children[path]:
            if el.get("max") == "0":
                continue
            name = el["path"].rsplit(".", 1)[1]
            many = el["max"] != "1"
            variants: dict[str, tuple[dict[str, Any], bool]] = {}
            types = [_type_code(t) for t in el.get("type", [])]
            if "contentReference" in el:
                variants[name] = (_ref(el["contentReference"].lstrip("#")), False)
            elif name.endswith("[x]"):
                for code in types:
                    variants[name[:-3] + code[0].upper() + code[1:]] = (
                        self._type(code),
                        code in self.primitives,
                    )
            elif types and types[0] in ("BackboneElement", "Element") and children.get(el["path"]):
                self._object(el["path"], children, None)
                variants[name] = (_ref(el["path"]), False)
            else:
                code = types[0] if types else "string"
                variants[name] = (self._type(code), code in self.primitives)
            names = []
            for prop, (schema, primitive) in variants.items():
                names.append(prop)
                if primitive:
                    names.append(f"_{prop}")
                    ext = _ref("Element")
                    if many:  # a repeating primitive's value or extension may be null at any index
                        schema = {"anyOf": [schema, {"type": "null"}]}
                        ext = {"anyOf": [ext, {"type": "null"}]}
                    props[f"_{prop}"] = {"type": "array", "minItems": 1, "items": ext} if many else ext
                props[prop] = {"type": "array", "minItems": 1, "items": schema} if many else schema
            if el["min"] >= 1:
                if len(names) == 1:
                    required.append(names[0])
                else:
                    # Any one of the names satisfies it; when none is there the finding names the element.
                    conditions.append(
                        {
                            "if": {"not": {"anyOf": [{"required": [n]} for n in names]}},
                            "then": {"required": [name]},
                        }
                    )
        schema: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
        if required:
            schema["required"] = required
        if conditions:
            schema["allOf"] = conditions
        if choices:
            schema["x-choices"] = choices
        self.defs[path] = schema

    def _type(self, code: str) -> dict[str, Any]:
        if code == "Resource":
            return _ref("ResourceList")
        return _ref(code)

    def resource_list(self) -> None:
        self.defs["ResourceList"] = {
            "type": "object",
            "required": ["resourceType"],
            "properties": {"resourceType": {"enum": self.resources}},
            "allOf": [
                {"if": {"properties": {"resourceType": {"const": r}}}, "then": _ref(r)}
                for r in self.resources
            ],
        }


def build_schema(folder: Path) -> dict[str, Any]:
    """One schema whose $defs hold every R4 data type, backbone element and resource."""
    sds = _structure_definitions(folder)
    builder = _Builder(sds)
    for sd in sds:
        if sd["kind"] != "primitive-type":
            builder.structure(sd)
    builder.resource_list()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "x-fhir-version": FHIR_VERSION,
        "x-generator": GENERATOR,
        "x-definitions-mtime": _mtime(folder),
        "x-resource-types": builder.resources,
        "$defs": builder.defs,
    }


def main() -> None:
    folder = definitions_dir()
    if folder is None:
        print("FHIR R4 definitions are not installed (run `make setup`): no schema generated")
        return
    path = generated_path()
    path.write_bytes(orjson.dumps(build_schema(folder), option=orjson.OPT_SORT_KEYS))
    print(f"wrote {path.name}")


if __name__ == "__main__":
    main()

"""FHIR R4 CodeSystem JSON loader (any system): concepts, hierarchy, status, designations, properties."""

from __future__ import annotations

from pathlib import Path

import orjson

from terminology.loaders import Release, TerminologyLoadError, sha256_files

INACTIVE_WORDS = {"retired", "inactive"}


def read_json_resource(path: Path, resource_type: str) -> dict:
    if path.is_dir():
        raise TerminologyLoadError(path, None, f"expected one {resource_type} JSON file, got a folder")
    data = path.read_bytes()
    try:
        resource = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        line = data[: exc.pos].count(b"\n") + 1
        raise TerminologyLoadError(path, line, f"not valid JSON ({exc.msg}); truncated file?") from None
    if not isinstance(resource, dict) or resource.get("resourceType") != resource_type:
        found = resource.get("resourceType") if isinstance(resource, dict) else type(resource).__name__
        raise TerminologyLoadError(path, 1, f"expected a {resource_type} resource, found {found!r}")
    return resource


def read(path: Path) -> Release:
    cs = read_json_resource(path, "CodeSystem")
    url = cs.get("url")
    if not url:
        raise TerminologyLoadError(path, None, "the CodeSystem has no url")
    if cs.get("content") in ("not-present", "supplement") or cs.get("supplements"):
        raise TerminologyLoadError(
            path, None, f"CodeSystem content is {cs.get('content')!r}: no concepts to load"
        )
    release = Release(
        kind="codesystem",
        system=url,
        version=cs.get("version") or "unversioned",
        source=str(path.resolve()),
        sha256=sha256_files([path]),
        content="fragment" if cs.get("content") == "fragment" else "complete",
    )
    seen: set[str] = set()
    stack = [(c, None) for c in reversed(cs.get("concept") or [])]
    while stack:
        concept, parent = stack.pop()
        code = concept.get("code") if isinstance(concept, dict) else None
        if not isinstance(code, str) or not code:
            raise TerminologyLoadError(path, None, f"a concept without a code (under {parent or 'the root'})")
        if code in seen:
            raise TerminologyLoadError(path, None, f"code {code!r} appears twice")
        seen.add(code)
        props = {p.get("code"): _value(p) for p in concept.get("property") or [] if isinstance(p, dict)}
        word = props.get("status")
        if word is None and props.get("inactive") in ("true", True):
            word = "inactive"
        if word is None and "deprecationDate" in props:
            word = "deprecated"
        status = "inactive" if str(word or "").lower() in INACTIVE_WORDS else "active"
        release.concepts.append((code, concept.get("display"), status, word))
        if parent is not None:
            release.properties.append((code, "parent", parent))
        for name, value in props.items():
            if name not in ("status", "inactive") and name and value is not None:
                release.properties.append((code, name, str(value)))
        for d in concept.get("designation") or []:
            if isinstance(d, dict) and d.get("value"):
                release.designations.append((code, d["value"], (d.get("use") or {}).get("code")))
        stack.extend((child, code) for child in reversed(concept.get("concept") or []))
    if not seen:
        raise TerminologyLoadError(path, None, "the CodeSystem has no concepts")
    return release


def _value(prop: dict):
    for key, value in prop.items():
        if key.startswith("value"):
            if isinstance(value, bool):
                return "true" if value else "false"
            if isinstance(value, dict):  # valueCoding
                return value.get("code")
            return value
    return None

"""What a target refuses in one resource: the not_sendable reason and the element names (never values)."""

from __future__ import annotations

from typing import Any

from pipelines.backload.profiles import TargetProfile, accepts
from terminology.normalize import EXT_METHOD

OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"


def check_resource(
    rtype: str, original: dict[str, Any], body: dict[str, Any], target: TargetProfile
) -> tuple[str, str | None] | None:
    """(reason code, element names) when the target cannot take the resource; None when it can.

    original is the stored resource (to tell source codings from added ones), body what would be sent."""
    rule = target.rule(rtype)
    if rule is None or "create" not in rule.interactions:
        return "backload_type_not_writable", None
    refused = sorted(k for k in body if k in target.never_accepted)
    if rule.accepted is not None:
        refused = sorted(
            set(refused) | {k for k in body if k != "resourceType" and not accepts(k, rule.accepted)}
        )
    if refused:
        return "backload_element_not_accepted", ", ".join(refused)
    if target.codings.mix == "forbidden":
        mixed = source_mixed_arrays(original, target)
        if mixed:
            return "backload_would_mix_codings", ", ".join(mixed)
    missing = [r for r in rule.required if not any(accepts(k, (r,)) and _present(v) for k, v in body.items())]
    if missing:
        return "backload_required_element_missing", ", ".join(missing)
    if rule.categories is not None:
        codes = [
            c.get("code")
            for cc in body.get("category") or []
            for c in (cc.get("coding") or [] if isinstance(cc, dict) else [])
            if isinstance(c, dict) and c.get("system") == OBSERVATION_CATEGORY
        ]
        too_many = rule.max_categories is not None and len(body.get("category") or []) > rule.max_categories
        if too_many or not any(c in rule.categories for c in codes):
            return "backload_observation_category", "category"
    return None


def _present(value: Any) -> bool:
    return value not in (None, "", [], {})


def source_mixed_arrays(resource: dict[str, Any], target: TargetProfile) -> list[str]:
    """Coding arrays where the source itself asserted both a standard and a code-set code.

    When one side was only added by normalization (marked with the mapping-method extension), the target
    rules drop it and nothing the source said is lost; when both came from the source, keeping one would
    silently change the record, and sending both is what the server answers with 422."""
    found: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                here = f"{path}.{k}" if path else k
                if k == "coding" and isinstance(v, list):
                    kinds = {
                        target.codings.kind(c.get("system"))
                        for c in v
                        if isinstance(c, dict) and not _added(c)
                    }
                    if {"standard", "codeset"} <= kinds:
                        found.append(here)
                else:
                    walk(v, here)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")

    walk(resource, "")
    return found


def _added(coding: dict[str, Any]) -> bool:
    return any(isinstance(e, dict) and e.get("url") == EXT_METHOD for e in coding.get("extension") or [])


def references(body: dict[str, Any]) -> list[tuple[str, str]]:
    """(element path, "Type/id") for every relative reference in the body; contained (#) ones are local."""
    out: list[tuple[str, str]] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            ref = node.get("reference")
            if isinstance(ref, str) and not ref.startswith("#"):
                out.append((path, _relative(ref)))
            for k, v in node.items():
                if k != "contained":
                    walk(v, f"{path}.{k}" if path else k)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")

    walk(body, "")
    return out


def _relative(ref: str) -> str:
    parts = ref.split("/_history/")[0].rstrip("/").split("/")
    return "/".join(parts[-2:]) if len(parts) >= 2 else ref


def rewrite_references(node: Any, resolve: Any) -> Any:
    """A copy with each relative reference replaced by resolve("Type/id") (a server reference or urn:uuid)."""
    if isinstance(node, dict):
        out = {k: (v if k == "contained" else rewrite_references(v, resolve)) for k, v in node.items()}
        ref = node.get("reference")
        if isinstance(ref, str) and not ref.startswith("#"):
            out["reference"] = resolve(_relative(ref))
        return out
    if isinstance(node, list):
        return [rewrite_references(v, resolve) for v in node]
    return node

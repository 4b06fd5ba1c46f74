"""Shared machinery of the release upgrades: element moves, code maps, cross-version extensions."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import orjson

from pipelines.common.unit import Quarantine

MAPS = Path(__file__).with_name("maps")
_ELEMENT = re.compile(r"_?[a-z][A-Za-z0-9]{0,63}")
RELEASE_NAMES = {"1.0": "DSTU2", "3.0": "STU3", "4.0": "R4"}
# Elements every DomainResource carries in all three releases, copied as they are.
RESOURCE_BASE = ("id", "implicitRules", "language", "text", "extension", "modifierExtension")


@cache
def value_sets() -> dict[str, Any]:
    return orjson.loads((MAPS / "value_sets.json").read_bytes())


@cache
def resource_types() -> dict[str, Any]:
    return orjson.loads((MAPS / "resource_types.json").read_bytes())


@cache
def required_elements() -> dict[str, list[str]]:
    return orjson.loads((MAPS / "required.json").read_bytes())["required"]


def system(name: str) -> str:
    return value_sets()["systems"][name]


def extension_url(release: str, path: str) -> str:
    """HL7's cross-version extension for an element with no home in the next release."""
    return f"http://hl7.org/fhir/{release}/StructureDefinition/extension-{path}"


class Mover:
    """Builds the next release's resource from one source resource, element by element.

    Every source element must be claimed by a rule (copied, renamed, converted or turned into an
    extension); whatever is left when finish() runs has no rule, and the resource is quarantined
    rather than guessed at.
    """

    def __init__(self, src: dict[str, Any], release: str, rtype: str, path: str | None = None) -> None:
        self.src = dict(src)
        # Primitive extension siblings (_status) are rare: most resources skip looking for them.
        self._siblings = any(k[:1] == "_" for k in self.src)
        self.release = release
        self.rtype = rtype
        self.path = path or rtype
        self.out: dict[str, Any] = {}

    def has(self, name: str) -> bool:
        return name in self.src

    def peek(self, name: str) -> Any:
        return self.src.get(name)

    def take(self, name: str) -> Any:
        """Claim an element (and its primitive extension sibling, which then moves with nothing)."""
        self._claim_sibling(name, None)
        return self.src.pop(name, None)

    def same(self, *names: str) -> Mover:
        for name in names:
            if name in self.src:
                self.out[name] = self.src.pop(name)
            self._claim_sibling(name, name)
        return self

    def rename(self, old: str, new: str, convert: Callable[[Any], Any] | None = None) -> Mover:
        if old in self.src:
            value = self.src.pop(old)
            self.out[new] = convert(value) if convert else value
        self._claim_sibling(old, new)
        return self

    def choice(self, stem: str, new_stem: str | None = None, allowed: tuple[str, ...] | None = None) -> Mover:
        """Move a choice element (stem[x]) whatever its type; allowed limits the types the target has."""
        for key in [k for k in self.src if k.startswith(stem) and k[len(stem) : len(stem) + 1].isupper()]:
            suffix = key[len(stem) :]
            if allowed is not None and suffix not in allowed:
                self.fail(
                    "upgrade_no_target_type",
                    f"{self.path}.{stem}[x] of type {suffix} has no counterpart in the next release",
                )
            self.rename(key, (new_stem or stem) + suffix)
        return self

    def base(self) -> Mover:
        self.take("resourceType")  # the caller names the next release's type
        self.same(*RESOURCE_BASE)
        meta = self.take("meta")
        if isinstance(meta, dict):
            meta = dict(meta)
            profiles = meta.pop("profile", None)
            if profiles:
                # A profile of an older release is no R4 profile; keep what the source claimed.
                meta.setdefault("extension", []).extend(
                    {"url": extension_url(self.release, "Meta.profile"), "valueUri": p} for p in profiles
                )
            if meta:
                self.out["meta"] = meta
        return self

    def to_extension(self, name: str, value_type: str, path: str | None = None) -> Mover:
        """An element with no home in the next release becomes HL7's cross-version extension."""
        if name in self.src:
            value = self.src.pop(name)
            url = extension_url(self.release, f"{self.path}.{path or name}")
            values = value if isinstance(value, list) else [value]
            self.out.setdefault("extension", []).extend({"url": url, f"value{value_type}": v} for v in values)
        self._claim_sibling(name, None)
        return self

    def add_extension(self, path: str, value_type: str, value: Any) -> None:
        url = extension_url(self.release, f"{self.path}.{path}")
        self.out.setdefault("extension", []).append({"url": url, f"value{value_type}": value})

    def code(self, name: str, value_map: str, new: str | None = None) -> Mover:
        """Move a code through a value-set map from maps/value_sets.json."""
        if name in self.src:
            self.out[new or name] = self.map_code(self.src.pop(name), value_map, name)
        self._claim_sibling(name, new or name)
        return self

    def map_code(self, value: Any, value_map: str, name: str) -> str:
        table = value_sets()["maps"][value_map]
        if not isinstance(value, str) or value not in table:
            # The value itself is not quoted: a sender may have put free text where a code belongs.
            self.fail(
                "upgrade_unmappable_code", f"{self.path}.{name} code has no counterpart in the next release"
            )
        return table[value]

    def each(self, name: str, convert: Callable[[Mover], None], new: str | None = None) -> Mover:
        """Move a backbone element (one or a list) through convert, each item with its own leftovers check."""
        if name in self.src:
            value = self.src.pop(name)
            items = value if isinstance(value, list) else [value]
            moved = []
            for item in items:
                if not isinstance(item, dict):
                    self.fail("upgrade_invalid_element", f"{self.path}.{name} is not an object")
                child = Mover(item, self.release, self.rtype, f"{self.path}.{name}")
                child.same("id", "extension", "modifierExtension")
                convert(child)
                moved.append(child.finish())
            self.out[new or name] = moved if isinstance(value, list) else moved[0]
        return self

    def fail(self, reason: str, message: str) -> None:
        raise Quarantine(reason, f"{RELEASE_NAMES[self.release]} {message}", self.rtype)

    def finish(self) -> dict[str, Any]:
        if self.src:
            # Keys come from the data: only element-shaped names are quoted (a stray key could hold PHI).
            names = ", ".join(
                sorted({k.lstrip("_") if _ELEMENT.fullmatch(k) else "(key)" for k in self.src})[:5]
            )
            self.fail("upgrade_unmapped_element", f"{self.path} element(s) without an upgrade rule: {names}")
        return self.out

    def _claim_sibling(self, name: str, new: str | None) -> None:
        if not self._siblings:
            return
        sibling = self.src.pop("_" + name, None)
        if sibling is not None and new is not None:
            self.out["_" + new] = sibling


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def coded(system_name: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": system(system_name), "code": code}]}

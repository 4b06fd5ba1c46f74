"""Target profiles for back-load (terminology/targets/<name>.json): writable types, elements, write style."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from typing import Any

import orjson

from pipelines.common.errors import ConfigError
from terminology.target_codings import TARGETS, Profile
from terminology.target_codings import profile as coding_profile

ANY_TYPE = "*"


@dataclass(frozen=True)
class TypeRule:
    interactions: tuple[str, ...]
    accepted: frozenset[str] | None  # None: every element
    required: tuple[str, ...]
    categories: frozenset[str] | None
    max_categories: int | None
    match: dict[str, str] | None  # search parameter -> element, to find an in-doubt create on the server
    patch: tuple[tuple[str, str], ...] | None = None  # documented JSON Patch (op, path) pairs


@dataclass(frozen=True)
class TargetProfile:
    name: str
    fhir_version: str
    docs_date: str
    codings: Profile
    server_managed: tuple[str, ...]
    never_accepted: tuple[str, ...]
    transaction_chunk: int | None
    conditional_create: bool
    order: tuple[str, ...]
    types: dict[str, TypeRule] | None  # None: every type, with default_interactions
    default_interactions: tuple[str, ...]
    send_stand_ins: bool  # reference-only stand-ins written as they are (else not_sendable)
    sha256: str
    conflict_retries: int = 3  # re-reads after a 412 (version conflict) before the write is failed

    def rule(self, resource_type: str) -> TypeRule | None:
        if self.types is None:
            return TypeRule(self.default_interactions, None, (), None, None, None)
        return self.types.get(resource_type)

    def rank(self, resource_type: str) -> int:
        return self.order.index(resource_type) if resource_type in self.order else len(self.order)


@cache  # asked for every key of every planned resource, against a few fixed element sets
def accepts(name: str, elements: frozenset[str] | tuple[str, ...]) -> bool:
    """Is a JSON key one of the elements, choice types (`value[x]`) included?"""
    if name in elements:
        return True
    return any(
        e.endswith("[x]") and name.startswith(e[:-3]) and name[len(e) - 3 :][:1].isupper() for e in elements
    )


@cache
def target_profile(name: str) -> TargetProfile:
    path = TARGETS / f"{name}.json"
    known = sorted(p.stem for p in TARGETS.glob("*.json") if "types" in orjson.loads(p.read_bytes()))
    if not path.is_file():
        raise ConfigError(f"no back-load profile {name!r}", hint=f"known profiles: {', '.join(known)}")
    raw = path.read_bytes()
    data: dict[str, Any] = orjson.loads(raw)
    if "types" not in data:
        raise ConfigError(
            f"{name!r} holds coding rules only, not a back-load profile", hint=f"use one of {known}"
        )
    types = None
    if data["types"] != ANY_TYPE:
        types = {
            t: TypeRule(
                tuple(r["interactions"]),
                frozenset(r["accepted"]) if "accepted" in r else None,
                tuple(r.get("required", ())),
                frozenset(r["categories"]) if "categories" in r else None,
                r.get("max_categories"),
                r.get("match"),
                tuple((op, path) for op, path in r["patch"]["operations"]) if "patch" in r else None,
            )
            for t, r in data["types"].items()
        }
    return TargetProfile(
        name=data["name"],
        fhir_version=data["fhir_version"],
        docs_date=data["docs"]["date"],
        codings=coding_profile(data["codings"]),
        server_managed=tuple(data.get("server_managed", ())),
        never_accepted=tuple(data.get("never_accepted", ())),
        transaction_chunk=data.get("transaction_chunk"),
        conditional_create=bool(data.get("conditional_create")),
        order=tuple(data.get("order", ())),
        types=types,
        default_interactions=tuple(data.get("default_interactions", ("create", "update"))),
        send_stand_ins=bool(data.get("send_stand_ins")),
        sha256=hashlib.sha256(raw).hexdigest(),
        conflict_retries=int(data.get("conflict_retries", 3)),
    )

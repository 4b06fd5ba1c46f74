"""Turning a source FHIR resource into its warehouse form: deterministic id, rewritten references.

Edits are made on the JSON text, not by re-serializing a parsed dict, because FHIR decimals carry
precision in their spelling ("1.50" is not "1.5") and a float round trip would lose it.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import orjson

from pipelines.common.unit import Quarantine, StagedResource
from pipelines.common.warehouse import RESOURCE_TYPE
from pipelines.intake import jsondepth
from pipelines.intake.fhirtypes import known_resource_types

FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
# A JSON string can hold no unescaped quote, so this matches only real "reference" members.
_REFERENCE = re.compile(rb'"reference"\s*:\s*"((?:[^"\\]|\\.)*)"')
_ID_MEMBER = re.compile(rb'"id"\s*:\s*"((?:[^"\\]|\\.)*)"')
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_JSON_KIND = {list: "array", str: "string", bool: "boolean", type(None): "null"}
_RELATIVE = re.compile(r"([A-Z][A-Za-z]{1,63})/([A-Za-z0-9\-.]{1,64})(/_history/[A-Za-z0-9\-.]{1,64})?")


def warehouse_id(source_system: str, resource_type: str, source_key: str) -> str:
    """Deterministic id: the same source system, type and source identifier always give the same id."""
    digest = hashlib.sha256(f"{source_system}\x1f{resource_type}\x1f{source_key}".encode()).hexdigest()
    return digest[:32]


class ResourcePreparer:
    """Prepares resources of one file; urn_map resolves a Bundle's fullUrl references to its entries."""

    def __init__(self, source_system: str, file_sha256: str, urn_map: dict[str, str] | None = None) -> None:
        self.source_system = source_system
        self.file_sha256 = file_sha256
        self.urn_map = urn_map or {}
        self._refs: dict[bytes, bytes] = {}

    def prepare(self, raw: bytes, obj: Any, position: int) -> StagedResource:
        """raw is the resource's JSON text, obj the same parsed; raises Quarantine for a non-resource."""
        if not isinstance(obj, dict):
            raise Quarantine(
                "not_an_object", f"JSON {_JSON_KIND.get(type(obj), 'number')} where a resource object belongs"
            )
        rtype = obj.get("resourceType")
        if rtype is None:
            raise Quarantine("missing_resource_type", "JSON object without resourceType")
        if (
            not isinstance(rtype, str)
            or not RESOURCE_TYPE.fullmatch(rtype)
            or rtype not in known_resource_types()
        ):
            # Checked against the lists, not only the spelling: any made-up name would become a table.
            raise Quarantine("invalid_resource_type", "resourceType is not a FHIR resource type name")
        source_id = obj.get("id")
        if "id" not in obj:
            new_id = warehouse_id(self.source_system, rtype, f"{self.file_sha256}:{position}")
        elif isinstance(source_id, str) and FHIR_ID.fullmatch(source_id):
            new_id = warehouse_id(self.source_system, rtype, source_id)
        else:
            raise Quarantine("invalid_id", "resource id is not a FHIR id", rtype)
        text = _REFERENCE.sub(self._rewrite_reference, raw) if b'"reference"' in raw else raw
        text = _set_top_level_id(text, new_id.encode())
        meta = obj.get("meta")
        last_updated = meta.get("lastUpdated") if isinstance(meta, dict) else None
        return StagedResource(
            rtype, new_id, source_id, last_updated if isinstance(last_updated, str) else None, text
        )

    def _rewrite_reference(self, match: re.Match[bytes]) -> bytes:
        value = match.group(1)
        new = self._refs.get(value)
        if new is None:
            new = self._new_reference(value)
            if len(self._refs) < 100_000:  # bounded: memory must not grow with file size
                self._refs[value] = new
        return b'"reference":"' + new + b'"'

    def _new_reference(self, value: bytes) -> bytes:
        # Senders may escape "/" as "\/"; any other escape means an unusual reference we leave as is.
        text = value.replace(b"\\/", b"/")
        if b"\\" in text:
            return value
        ref = text.decode("utf-8", errors="replace")
        mapped = self.urn_map.get(ref)
        if mapped is not None:
            return mapped.encode()
        m = _RELATIVE.fullmatch(ref)
        if m is None:
            # Contained (#x), conditional (Type?query), absolute URLs to other servers and unresolved
            # urn:uuid references are kept exactly as the source wrote them.
            return value
        rtype, source_id, history = m.groups()
        return f"{rtype}/{warehouse_id(self.source_system, rtype, source_id)}{history or ''}".encode()


def _set_top_level_id(text: bytes, new_id: bytes) -> bytes:
    for m in _ID_MEMBER.finditer(text):
        if _depth(text[: m.start()]) == 1:
            return text[: m.start(1)] + new_id + text[m.end(1) :]
    brace = text.index(b"{")
    return text[: brace + 1] + b'"id":"' + new_id + b'",' + text[brace + 1 :]


def _depth(prefix: bytes) -> int:
    """Object/array nesting depth at the end of prefix (strings removed first: they may hold braces)."""
    bare = _STRING.sub(b"", prefix)
    return bare.count(b"{") + bare.count(b"[") - bare.count(b"}") - bare.count(b"]")


def parse_line(raw: bytes) -> Any:
    """Parse one JSON text, turning decode errors into quarantine reasons without quoting the data."""
    if jsondepth.exceeds(raw):
        raise Quarantine(jsondepth.REASON, jsondepth.message())
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as uexc:
            raise Quarantine("invalid_encoding", f"byte {uexc.start} is not valid UTF-8") from None
        raise Quarantine(
            "invalid_json", f"JSON syntax error at byte {exc.pos}: {_safe_msg(exc.msg)}"
        ) from None
    if isinstance(obj, dict):
        # orjson keeps the last of a repeated member silently; the strict parse says whether one was.
        pairs = jsondepth.RepeatedNames()
        json.loads(raw, object_pairs_hook=pairs)
        if pairs.repeated:
            raise Quarantine(jsondepth.DUPLICATE, jsondepth.DUPLICATE_MESSAGE)
    return obj


def _safe_msg(msg: str) -> str:
    # orjson's messages describe structure; cut any quoted fragment in case a future version adds one.
    return msg.split("'")[0].split('"')[0].strip().rstrip(":")

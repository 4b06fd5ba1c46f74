"""FHIR Bundles (collection, transaction, batch, searchset, …): each entry is one unit, read streaming."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import ijson
import simplejson

from pipelines import formats
from pipelines.common.unit import (
    Converter,
    FileContext,
    Quarantine,
    Skip,
    StagedResource,
    Unit,
    UnreadableFile,
)
from pipelines.convert.fhir.prepare import FHIR_ID, RESOURCE_TYPE, ResourcePreparer, warehouse_id
from pipelines.convert.fhir.release import check_bundle_release, check_release, declared
from pipelines.intake import jsondepth

_IJSON_ERRORS = (ijson.JSONError, ijson.IncompleteJSONError, UnicodeDecodeError)
_REPEATED_FULL_URL = object()  # stands for an entry whose fullUrl an earlier entry already has


def dumps_exact(obj: Any) -> bytes:
    """Compact JSON keeping decimals as written (ijson/simplejson hand them over as Decimal)."""
    return simplejson.dumps(obj, use_decimal=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class FhirBundleConverter(Converter):
    name = "fhir-bundle"
    formats = frozenset({formats.FHIR_BUNDLE})

    def units(self, ctx: FileContext) -> Iterator[Unit]:
        # Pass 1 maps every entry's fullUrl to its warehouse reference, so urn:uuid references between
        # entries of a transaction Bundle resolve; pass 2 streams the entries themselves.
        self._top: dict[str, Any] = {"profile": []}  # the Bundle's own fhirVersion and meta.profile
        self._preparer = ResourcePreparer(ctx.source_system, ctx.file_sha256, self._urn_map(ctx))
        check_bundle_release("Bundle", self._top.get("fhirVersion"), self._top["profile"], ctx)
        try:
            with formats.open_json(ctx.path) as fh:
                for position, entry in enumerate(jsondepth.items(fh, "entry.item"), 1):
                    if position in self._repeated:
                        entry = _REPEATED_FULL_URL  # never converted: which of the two is meant is unknown
                    yield Unit(position, "bundle_entry", entry)
        except _IJSON_ERRORS:
            raise _unreadable(ctx) from None

    def convert(self, unit: Unit, ctx: FileContext) -> list[StagedResource]:
        entry = unit.payload
        if entry is jsondepth.TOO_DEEP_ITEM:
            raise Quarantine(jsondepth.REASON, jsondepth.message())
        if entry is jsondepth.REPEATED_ITEM:
            raise Quarantine(jsondepth.DUPLICATE, jsondepth.DUPLICATE_MESSAGE)
        if entry is _REPEATED_FULL_URL:
            raise Quarantine("bundle_duplicate_full_url", "entry fullUrl repeats an earlier entry's")
        if not isinstance(entry, dict):
            raise Quarantine("invalid_bundle_entry", "Bundle entry is not a JSON object")
        request = entry.get("request")
        if isinstance(request, dict) and str(request.get("method", "")).upper() == "DELETE":
            raise Skip("bundle_delete_request")
        resource = entry.get("resource")
        if resource is None:
            raise Skip("bundle_entry_without_resource")
        # The release was told from the first entries (or declared); a later one must agree too.
        check_release(resource, "4.0", declared(ctx))
        return [self._preparer.prepare(dumps_exact(resource), resource, unit.position)]

    def entry_type(self, rtype: str | None) -> str | None:
        """The type an entry's resource is stored as (an upgrade may rename it)."""
        return rtype

    def _urn_map(self, ctx: FileContext) -> dict[str, str]:
        urn_map: dict[str, str] = {}
        seen: set[str] = set()
        self._repeated: set[int] = set()
        position = 0
        full_url = rtype = rid = None
        try:
            with formats.open_json(ctx.path) as fh:
                for prefix, event, value in jsondepth.parse(fh):
                    if prefix == "entry.item" and event == "start_map":
                        position += 1
                        full_url = rtype = rid = None
                    elif prefix == "entry.item.fullUrl" and event == "string":
                        full_url = value
                        # bdl-7: a fullUrl is unique in a Bundle (a history Bundle repeats it per version).
                        if value in seen and self._top.get("type") != "history":
                            self._repeated.add(position)
                        seen.add(value)
                    elif prefix == "type" and event == "string":
                        self._top["type"] = value
                    elif prefix == "entry.item.resource.resourceType" and event == "string":
                        rtype = value
                    elif prefix == "entry.item.resource.id" and event == "string":
                        rid = value
                    elif prefix == "fhirVersion" and event == "string":
                        self._top["fhirVersion"] = value
                    elif prefix == "meta.profile.item" and event == "string":
                        self._top["profile"].append(value)
                    elif event == jsondepth.TOO_DEEP and not prefix.startswith("entry.item"):
                        # Too deep outside any entry: the Bundle itself is refused, nothing built.
                        raise UnreadableFile(jsondepth.message(), jsondepth.REASON)
                    elif prefix == "entry.item" and event == "end_map":
                        ref = _entry_reference(ctx, position, self.entry_type(rtype), rid)
                        if full_url and ref and full_url not in urn_map:
                            urn_map[full_url] = ref
        except _IJSON_ERRORS:
            raise _unreadable(ctx) from None
        return urn_map


def _entry_reference(ctx: FileContext, position: int, rtype: str | None, rid: str | None) -> str | None:
    """The warehouse reference of a Bundle entry's resource, computed as prepare() will compute its id."""
    if not rtype or not RESOURCE_TYPE.fullmatch(rtype):
        return None
    if rid is None:
        return f"{rtype}/{warehouse_id(ctx.source_system, rtype, f'{ctx.file_sha256}:{position}')}"
    if not FHIR_ID.fullmatch(rid):
        return None  # the entry itself is quarantined as invalid_id
    return f"{rtype}/{warehouse_id(ctx.source_system, rtype, rid)}"


def _unreadable(ctx: FileContext) -> UnreadableFile:
    offset = formats.first_utf8_error(ctx.path)
    if offset is not None:
        return UnreadableFile(f"byte {offset} is not valid UTF-8", "invalid_encoding")
    return UnreadableFile("Bundle JSON breaks off or has a syntax error", "invalid_json")

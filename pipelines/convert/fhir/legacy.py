"""DSTU2 and STU3 inputs (and R4 files carrying units of another release): each unit upgraded to R4.

Units are read like their R4 siblings (an NDJSON line, a Bundle entry, a whole file), upgraded in
Python, then prepared exactly as R4 resources are (deterministic ids, rewritten references). A unit whose
shape cannot be in the file's release is quarantined: a file is converted in one release only.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import simplejson

from pipelines import formats
from pipelines.common.unit import Converter, FileContext, Quarantine, Skip, StagedResource, Unit
from pipelines.common.warehouse import RESOURCE_TYPE
from pipelines.convert.fhir.bundle import FhirBundleConverter, dumps_exact
from pipelines.convert.fhir.ndjson import _line_batches
from pipelines.convert.fhir.prepare import ResourcePreparer
from pipelines.convert.fhir.release import check_release, declared
from pipelines.convert.fhir.resource import FhirResourceConverter
from pipelines.convert.fhir.upgrade import renamed_type, upgrade
from pipelines.convert.fhir.upgrade.base import resource_types
from pipelines.intake import jsondepth

RELEASE_OF_FORMAT = {
    formats.FHIR_NDJSON_DSTU2: "1.0",
    formats.FHIR_BUNDLE_DSTU2: "1.0",
    formats.FHIR_RESOURCE_DSTU2: "1.0",
    formats.FHIR_NDJSON_STU3: "3.0",
    formats.FHIR_BUNDLE_STU3: "3.0",
    formats.FHIR_RESOURCE_STU3: "3.0",
    formats.FHIR_NDJSON_MIXED: "4.0",
    formats.FHIR_BUNDLE_MIXED: "4.0",
}


def upgrade_unit(
    obj: Any, release: str, preparer: ResourcePreparer, position: int, declared: bool = False
) -> list[StagedResource]:
    """Check a unit belongs to its file's release, upgrade it and prepare what results."""
    rtype = obj.get("resourceType") if isinstance(obj, dict) else None
    if not isinstance(rtype, str) or not RESOURCE_TYPE.fullmatch(rtype):
        return [preparer.prepare(b"", obj, position)]  # raises the same quarantine as for R4 input
    check_release(obj, release, declared)
    return [preparer.prepare(dumps_exact(r), r, position) for r in upgrade(obj, release)]


class LegacyNdjsonConverter(Converter):
    name = "fhir-ndjson-upgrade"
    formats = frozenset({formats.FHIR_NDJSON_DSTU2, formats.FHIR_NDJSON_STU3, formats.FHIR_NDJSON_MIXED})
    chunked = True

    def units(self, ctx: FileContext) -> Iterator[Unit]:
        self._preparer = ResourcePreparer(ctx.source_system, ctx.file_sha256)
        for batch, _ in _line_batches(ctx.path):
            rows = zip(*(batch[c].to_pylist() for c in ("pos", "off", "len", "txt", "enc_err")), strict=True)
            for pos, off, length, txt, enc_err in rows:
                yield Unit(pos, "ndjson_line", (txt, enc_err), off, length)

    def convert(self, unit: Unit, ctx: FileContext) -> list[StagedResource]:
        txt, enc_err = unit.payload
        if txt is None:
            raise Quarantine("invalid_encoding", f"byte {enc_err} is not valid UTF-8")
        if not txt:
            raise Skip("blank_line")
        if jsondepth.exceeds(txt):
            raise Quarantine(jsondepth.REASON, jsondepth.message())
        pairs = jsondepth.RepeatedNames()
        try:
            obj = simplejson.loads(txt, use_decimal=True, object_pairs_hook=pairs)
        except simplejson.JSONDecodeError as exc:
            raise Quarantine("invalid_json", f"JSON syntax error at character {exc.pos}") from None
        if pairs.repeated and isinstance(obj, dict):
            raise Quarantine(jsondepth.DUPLICATE, jsondepth.DUPLICATE_MESSAGE)
        return upgrade_unit(obj, RELEASE_OF_FORMAT[ctx.format], self._preparer, unit.position, declared(ctx))


class LegacyBundleConverter(FhirBundleConverter):
    name = "fhir-bundle-upgrade"
    formats = frozenset({formats.FHIR_BUNDLE_DSTU2, formats.FHIR_BUNDLE_STU3, formats.FHIR_BUNDLE_MIXED})

    def units(self, ctx: FileContext) -> Iterator[Unit]:
        self._release = RELEASE_OF_FORMAT[ctx.format]
        yield from super().units(ctx)

    def entry_type(self, rtype: str | None) -> str | None:
        return renamed_type(self._release, rtype) if rtype else rtype

    def _urn_map(self, ctx: FileContext) -> dict[str, str]:
        urn_map = super()._urn_map(ctx)
        # An absolute fullUrl names the old type; references to it are renamed before lookup.
        renames = resource_types()["reference_renames"] if self._release != "4.0" else {}
        for old, new in renames.items():
            for url in [u for u in urn_map if f"/{old}/" in u]:
                urn_map[url.replace(f"/{old}/", f"/{new}/")] = urn_map[url]
        return urn_map

    def convert(self, unit: Unit, ctx: FileContext) -> list[StagedResource]:
        entry = unit.payload
        if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
            request = entry.get("request")
            deleting = isinstance(request, dict) and str(request.get("method", "")).upper() == "DELETE"
            if not deleting:
                return upgrade_unit(
                    entry["resource"], self._release, self._preparer, unit.position, declared(ctx)
                )
        return super().convert(unit, ctx)


class LegacyResourceConverter(FhirResourceConverter):
    name = "fhir-resource-upgrade"
    formats = frozenset({formats.FHIR_RESOURCE_DSTU2, formats.FHIR_RESOURCE_STU3})

    def convert(self, unit: Unit, ctx: FileContext) -> list[StagedResource]:
        obj = self.read_object(ctx)
        preparer = ResourcePreparer(ctx.source_system, ctx.file_sha256)
        return upgrade_unit(obj, RELEASE_OF_FORMAT[ctx.format], preparer, unit.position, declared(ctx))

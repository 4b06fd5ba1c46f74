"""A JSON file holding one FHIR resource (not a Bundle): the whole file is one unit."""

from __future__ import annotations

from collections.abc import Iterator

import simplejson

from pipelines import formats
from pipelines.common.unit import Converter, FileContext, Quarantine, StagedResource, Unit
from pipelines.convert.fhir.bundle import dumps_exact
from pipelines.convert.fhir.prepare import ResourcePreparer
from pipelines.convert.fhir.release import check_release, declared
from pipelines.fhir_structure import check_ambiguous
from pipelines.intake import jsondepth


class FhirResourceConverter(Converter):
    name = "fhir-resource"
    formats = frozenset({formats.FHIR_RESOURCE})

    def units(self, ctx: FileContext) -> Iterator[Unit]:
        yield Unit(1, "resource", None, 0, ctx.path.stat().st_size)

    def convert(self, unit: Unit, ctx: FileContext) -> list[StagedResource]:
        obj = self.read_object(ctx)
        check_release(obj, "4.0", declared(ctx))
        if not declared(ctx):
            check_ambiguous(obj)
        preparer = ResourcePreparer(ctx.source_system, ctx.file_sha256)
        return [preparer.prepare(dumps_exact(obj), obj, unit.position)]

    @staticmethod
    def read_object(ctx: FileContext) -> object:
        """The file's one JSON document, decimals kept exact; bad bytes or syntax -> Quarantine."""
        raw = ctx.path.read_bytes().removeprefix(formats.UTF8_BOM)
        if jsondepth.exceeds(raw):
            raise Quarantine(jsondepth.REASON, jsondepth.message())
        pairs = jsondepth.RepeatedNames()
        try:
            obj = simplejson.loads(raw.decode("utf-8"), use_decimal=True, object_pairs_hook=pairs)
        except UnicodeDecodeError as exc:
            raise Quarantine("invalid_encoding", f"byte {exc.start} is not valid UTF-8") from None
        except simplejson.JSONDecodeError as exc:
            raise Quarantine("invalid_json", f"JSON syntax error at byte {exc.pos}") from None
        if pairs.repeated:
            raise Quarantine(jsondepth.DUPLICATE, jsondepth.DUPLICATE_MESSAGE)
        return obj

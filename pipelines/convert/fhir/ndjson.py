"""FHIR NDJSON (bulk export): one resource per line; each line is one unit."""

from __future__ import annotations

from collections.abc import Iterator

from pipelines import formats
from pipelines.common.unit import Converter, FileContext, Skip, StagedResource, Unit
from pipelines.convert.fhir.prepare import ResourcePreparer, parse_line


class FhirNdjsonConverter(Converter):
    name = "fhir-ndjson"
    formats = frozenset({formats.FHIR_NDJSON})

    def units(self, ctx: FileContext) -> Iterator[Unit]:
        self._preparer = ResourcePreparer(ctx.source_system, ctx.file_sha256)
        offset = 0
        with ctx.path.open("rb") as fh:
            for lineno, line in enumerate(fh, 1):
                yield Unit(lineno, "ndjson_line", line, offset, len(line))
                offset += len(line)

    def convert(self, unit: Unit, ctx: FileContext) -> list[StagedResource]:
        raw: bytes = unit.payload
        if unit.position == 1:
            raw = raw.removeprefix(formats.UTF8_BOM)
        raw = raw.strip()
        if not raw:
            raise Skip("blank_line")
        obj = parse_line(raw)
        return [self._preparer.prepare(raw, obj, unit.position)]

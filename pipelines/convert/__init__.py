"""The convert stage: every landed file of a run goes to the one handler registered for its format."""

from __future__ import annotations

from collections.abc import Iterator

from pipelines import formats
from pipelines.common.unit import BatchConverter, Converter, FileContext, Quarantine, Skip, Unit
from pipelines.convert.ccda.converter import CcdaConverter
from pipelines.convert.fhir.bundle import FhirBundleConverter
from pipelines.convert.fhir.legacy import (
    LegacyBundleConverter,
    LegacyNdjsonConverter,
    LegacyResourceConverter,
)
from pipelines.convert.fhir.ndjson import FhirNdjsonConverter
from pipelines.convert.fhir.resource import FhirResourceConverter
from pipelines.convert.hl7v2.converter import Hl7v2Converter


class WholeFileOutcome(Converter):
    """A file ehrlift does not convert: one unit (position 0, the file) with a documented outcome."""

    formats = frozenset()

    def __init__(self, outcome: str, reason: str, message: str) -> None:
        self.outcome = outcome
        self.reason = reason
        self.message = message
        self.name = f"{outcome}:{reason}"

    def units(self, ctx: FileContext) -> Iterator[Unit]:
        yield Unit(0, "file", None, 0, ctx.path.stat().st_size)

    def convert(self, unit: Unit, ctx: FileContext) -> list:
        if self.outcome == "skipped":
            raise Skip(self.reason)
        detail = f" ({ctx.format_detail})" if ctx.format_detail else ""
        raise Quarantine(self.reason, self.message + detail)


# The one explicit list of converters; each format has exactly one.
CONVERTERS: tuple[Converter | BatchConverter, ...] = (
    FhirNdjsonConverter(),
    FhirBundleConverter(),
    FhirResourceConverter(),
    LegacyNdjsonConverter(),
    LegacyBundleConverter(),
    LegacyResourceConverter(),
    Hl7v2Converter(),
    CcdaConverter(),  # also reads xml-other: a C-CDA fragment is skipped, other XML quarantined
)

WHOLE_FILE: dict[str, WholeFileOutcome] = {
    formats.EMPTY: WholeFileOutcome("quarantined", "empty_file", "file is empty"),
    formats.UNKNOWN: WholeFileOutcome(
        "quarantined", "unknown_format", "content matches no format ehrlift reads"
    ),
    formats.UNSUPPORTED_ENCODING: WholeFileOutcome(
        "quarantined", "unsupported_encoding", "file is not UTF-8"
    ),
    formats.JSON_OTHER: WholeFileOutcome("quarantined", "json_not_fhir", "JSON that is not FHIR"),
    formats.JSON_INVALID: WholeFileOutcome("quarantined", "invalid_json", "JSON document is not valid"),
    formats.FHIR_EXPORT_LOG: WholeFileOutcome("skipped", "export_log", ""),
    formats.FHIR_EXPORT_ERRORS: WholeFileOutcome("skipped", "export_error_file", ""),
    formats.FHIR_UNSUPPORTED_VERSION: WholeFileOutcome(
        "quarantined", "unsupported_fhir_version", "FHIR release is neither DSTU2, STU3 nor R4"
    ),
}


def handler_for(fmt: str) -> Converter:
    for converter in CONVERTERS:
        if fmt in converter.formats:
            return converter
    if fmt in WHOLE_FILE:
        return WHOLE_FILE[fmt]
    return WholeFileOutcome("quarantined", "unknown_format", f"format {fmt!r} has no handler")

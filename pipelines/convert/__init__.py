"""The convert stage: every landed file of a run goes to the one handler registered for its format."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from functools import cache

from pipelines import formats
from pipelines.common.unit import BatchConverter, Converter, FileContext, Quarantine, Skip, Unit


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


# The one explicit list of converters (module, class, the formats it reads); each format has exactly one.
# A converter's module is imported only when a run has a file of its formats: HL7 v2 brings pyarrow and
# python-hl7, C-CDA lxml, and a one-file NDJSON run needs neither (a test checks the formats agree).
REGISTRY: tuple[tuple[str, str, frozenset[str]], ...] = (
    ("pipelines.convert.fhir.ndjson", "FhirNdjsonConverter", frozenset({formats.FHIR_NDJSON})),
    ("pipelines.convert.fhir.bundle", "FhirBundleConverter", frozenset({formats.FHIR_BUNDLE})),
    ("pipelines.convert.fhir.resource", "FhirResourceConverter", frozenset({formats.FHIR_RESOURCE})),
    (
        "pipelines.convert.fhir.legacy",
        "LegacyNdjsonConverter",
        frozenset({formats.FHIR_NDJSON_DSTU2, formats.FHIR_NDJSON_STU3, formats.FHIR_NDJSON_MIXED}),
    ),
    (
        "pipelines.convert.fhir.legacy",
        "LegacyBundleConverter",
        frozenset({formats.FHIR_BUNDLE_DSTU2, formats.FHIR_BUNDLE_STU3, formats.FHIR_BUNDLE_MIXED}),
    ),
    (
        "pipelines.convert.fhir.legacy",
        "LegacyResourceConverter",
        frozenset({formats.FHIR_RESOURCE_DSTU2, formats.FHIR_RESOURCE_STU3}),
    ),
    ("pipelines.convert.hl7v2.converter", "Hl7v2Converter", frozenset({formats.HL7V2})),
    # also reads xml-other: a C-CDA fragment is skipped, other XML quarantined
    ("pipelines.convert.ccda.converter", "CcdaConverter", frozenset({formats.CCDA, formats.XML_OTHER})),
)


@cache
def _converter(module: str, name: str) -> Converter | BatchConverter:
    return getattr(importlib.import_module(module), name)()


def __getattr__(name: str):
    # CONVERTERS (every converter, instantiated) imports them all: only for whoever asks for the list.
    if name == "CONVERTERS":
        return tuple(_converter(module, cls) for module, cls, _ in REGISTRY)
    raise AttributeError(name)


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
    listed = globals().get("CONVERTERS")  # a list set on the module (tests substitute a converter) wins
    for converter in listed or ():
        if fmt in converter.formats:
            return converter
    for module, cls, reads in REGISTRY:
        if fmt in reads:
            return _converter(module, cls)
    if fmt in WHOLE_FILE:
        return WHOLE_FILE[fmt]
    return WholeFileOutcome("quarantined", "unknown_format", f"format {fmt!r} has no handler")

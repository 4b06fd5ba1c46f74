"""C-CDA files: each is one document unit; XML that is not a document is set aside with a reason."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from typing import Any

from pipelines import formats
from pipelines.common.unit import Converted, Converter, FileContext, Quarantine, Skip, Unit
from pipelines.convert.ccda import composition, header, parse, parties, places
from pipelines.convert.ccda.document import Doc
from pipelines.convert.ccda.parse import CcdaRejected, check_document, document_type, parse_xml
from pipelines.convert.ccda.sections import convert_sections


def convert_document(
    data: bytes, source_system: str, unit_key: str, url: str | None = None
) -> tuple[Converted, Doc]:
    """One C-CDA document's bytes -> its resources and accounting; raises CcdaRejected or Quarantine."""
    root = parse_xml(data)
    had_namespace = root.tag.startswith("{")
    check_document(root)
    doc_type, _template = document_type(root)
    doc = Doc(root, doc_type, source_system, unit_key)
    if not had_namespace:
        doc.unconsumed["ClinicalDocument without the urn:hl7-org:v3 namespace (adopted)"] += 1
    try:
        header.patient(doc)
    except header.MissingRecordTarget:
        raise Quarantine(
            "ccda_missing_record_target", "document has no recordTarget/patientRole", "Patient"
        ) from None
    parties.related_persons(doc)
    header.encounter(doc)
    places.encompassing_location(doc)
    attachment: dict[str, Any] = {"contentType": "application/xml"}
    if url:
        attachment["url"] = url
    attachment["size"] = len(data)
    attachment["hash"] = base64.b64encode(hashlib.sha1(data).digest()).decode()  # noqa: S324 - FHIR's hash is SHA-1
    header.document_reference(doc, attachment, header.format_code(doc_type, root))
    parties.document_provenance(doc, composition.composition(doc, convert_sections(doc)))
    assert doc.patient is not None
    doc.emit(doc.patient)
    return doc.finish(), doc


class CcdaConverter(Converter):
    name = "ccda"
    formats = frozenset({formats.CCDA, formats.XML_OTHER})

    def units(self, ctx: FileContext) -> Iterator[Unit]:
        size = ctx.path.stat().st_size
        if ctx.format == formats.CCDA:
            yield Unit(1, "ccda_document", None, 0, size)
        else:
            yield Unit(0, "file", None, 0, size)

    def convert(self, unit: Unit, ctx: FileContext) -> Converted:
        if unit.byte_length > parse.MAX_BYTES:  # refused before the file is read into memory
            raise Quarantine(
                "ccda_too_large",
                f"document of {unit.byte_length} bytes exceeds the {parse.MAX_BYTES} byte bound",
            )
        data = ctx.path.read_bytes()
        url = f"landing/{ctx.file_sha256[:2]}/{ctx.file_sha256}"
        try:
            converted, _doc = convert_document(
                data, ctx.source_system, f"{ctx.file_sha256}:{unit.position}", url
            )
        except CcdaRejected as exc:
            if exc.skip:
                raise Skip(exc.reason) from None
            raise Quarantine(exc.reason, exc.message) from None
        return converted

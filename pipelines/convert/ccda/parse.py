"""Secure C-CDA parsing (no entities, no network, bounded size and depth) and the document type."""

from __future__ import annotations

import re
from typing import Any

from lxml import etree

from pipelines.convert.ccda.datatypes import NS, child, local, template_ids
from pipelines.convert.ccda.maps import document_types

# A C-CDA is rarely above a few MB; embedded PDFs can reach tens. Anything larger is not a clinical
# document we should hold in memory whole.
MAX_BYTES = 64 * 1024 * 1024
# libxml2 without XML_PARSE_HUGE (huge_tree=False) refuses nesting deeper than 256 levels and text
# nodes above 10 MB, and with entity resolution off an entity bomb stays unexpanded.
CDA_ELEMENTS = frozenset(
    {
        "section",
        "component",
        "entry",
        "observation",
        "act",
        "organizer",
        "substanceAdministration",
        "supply",
        "encounter",
        "procedure",
        "entryRelationship",
        "recordTarget",
        "patientRole",
        "patient",
        "author",
        "custodian",
        "participant",
        "participantRole",
        "performer",
        "informant",
        "documentationOf",
        "componentOf",
        "inFulfillmentOf",
        "authenticator",
        "legalAuthenticator",
        "dataEnterer",
        "informationRecipient",
        "structuredBody",
        "text",
        "manufacturedProduct",
        "consumable",
        "reference",
        "value",
        "code",
    }
)


_ELEMENT_START = re.compile(rb"<[A-Za-z_]")


class CcdaRejected(Exception):
    """The file is not a convertible C-CDA document: reason code plus a message without record values."""

    def __init__(self, reason: str, message: str, skip: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.skip = skip


# Embedded PDFs and images (nonXMLBody, observationMedia) are text nodes of 12-50 MB, past libxml2's
# 10 MB default. Such a document is parsed again with huge_tree, which lifts that limit (the document is
# already within MAX_BYTES); the nesting bound huge_tree would raise is then checked here instead.
MAX_DEPTH = 256
_HUGE_TEXT = ("Text node too long", "Buffer size limit exceeded")


def _parser(recover: bool = False, huge: bool = False) -> etree.XMLParser:
    return etree.XMLParser(
        recover=recover,
        resolve_entities=False,
        no_network=True,
        huge_tree=huge,
        load_dtd=False,
        dtd_validation=False,
        remove_comments=True,
        remove_pis=True,
        collect_ids=False,
    )


# Only for input whose every error is an undeclared namespace prefix (xsi: used without its
# declaration, common in hand-written samples): libxml2 then loses nothing, the attribute keeps its
# prefixed name, and datatypes.xsi_type reads it.


def parse_xml(data: bytes) -> Any:
    """Parse bytes to an element tree securely, or raise CcdaRejected (never an lxml error)."""
    if len(data) > MAX_BYTES:
        raise CcdaRejected(
            "ccda_too_large", f"document of {len(data)} bytes exceeds the {MAX_BYTES} byte bound"
        )
    first_element = _ELEMENT_START.search(data)
    if b"<!DOCTYPE" in data[: first_element.start() if first_element else len(data)]:
        # Refused before parsing: C-CDA has no DTD, and a DOCTYPE is how XXE and entity bombs arrive.
        raise CcdaRejected("xml_doctype_forbidden", "XML declares a DOCTYPE, which C-CDA never uses")
    try:
        parser = _parser()  # a fresh parser: its error log is this file's alone (lxml's global one is not)
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError:
        errors = list(parser.error_log)
        if errors and all(e.type_name.startswith("NS_ERR_UNDEFINED_NAMESPACE") for e in errors):
            root = _recover_namespaces(data)
        elif errors and any(text in errors[-1].message for text in _HUGE_TEXT):
            root = _parse_huge(data)
        elif errors and "Excessive depth" in errors[-1].message:
            raise CcdaRejected("xml_not_well_formed", f"XML nests deeper than {MAX_DEPTH} elements") from None
        else:
            err = errors[-1] if errors else None
            kind = err.type_name if err is not None else "XML_ERR"
            line = err.line if err is not None else 0
            raise CcdaRejected(
                "xml_not_well_formed", f"XML is not well-formed: {kind} at line {line}"
            ) from None
    except ValueError:
        raise CcdaRejected("xml_not_well_formed", "XML could not be decoded") from None
    if root is None:
        raise CcdaRejected("xml_not_well_formed", "XML holds no element")
    docinfo = root.getroottree().docinfo
    if docinfo.internalDTD is not None or docinfo.doctype:
        # C-CDA has no DTD; a DOCTYPE carries entity declarations (XXE, entity expansion bombs).
        raise CcdaRejected("xml_doctype_forbidden", "XML declares a DOCTYPE, which C-CDA never uses")
    return root


def _parse_huge(data: bytes) -> Any:
    """A document holding a text node over 10 MB (an embedded attachment), within MAX_BYTES."""
    parser = _parser(huge=True)
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError:
        errors = list(parser.error_log)
        if errors and all(e.type_name.startswith("NS_ERR_UNDEFINED_NAMESPACE") for e in errors):
            root = _recover_namespaces(data, huge=True)
        else:
            kind, line = (errors[-1].type_name, errors[-1].line) if errors else ("XML_ERR", 0)
            raise CcdaRejected(
                "xml_not_well_formed", f"XML is not well-formed: {kind} at line {line}"
            ) from None
    depth = 0
    for event, _ in etree.iterwalk(root, events=("start", "end")):
        depth += 1 if event == "start" else -1
        if depth > MAX_DEPTH:
            raise CcdaRejected("xml_not_well_formed", f"XML nests deeper than {MAX_DEPTH} elements")
    return root


def _recover_namespaces(data: bytes, huge: bool = False) -> Any:
    try:
        return etree.fromstring(data, _parser(recover=True, huge=huge))
    except etree.XMLSyntaxError:
        raise CcdaRejected(
            "xml_not_well_formed", "XML is not well-formed: undeclared namespace prefix"
        ) from None


def check_document(root: Any) -> None:
    """Raise CcdaRejected unless root is an HL7 CDA ClinicalDocument (fragments are skipped, not failed)."""
    name = local(root)
    if root.tag == NS + "ClinicalDocument":
        return
    if name.lower() == "html":
        raise CcdaRejected("unknown_format", "HTML page, not a C-CDA document")
    if name in CDA_ELEMENTS or (isinstance(root.tag, str) and root.tag.startswith(NS)):
        raise CcdaRejected(
            "ccda_fragment", f"C-CDA fragment (root <{name}>), not a whole document", skip=True
        )
    if name == "ClinicalDocument" and not root.tag.startswith("{"):
        # Some exporters strip namespaces; the elements are still CDA's. Adopt the CDA namespace for
        # every unqualified element (the converter notes that it did) instead of losing the document.
        for el in root.iter():
            if isinstance(el.tag, str) and not el.tag.startswith("{"):
                el.tag = NS + el.tag
        return
    if name == "ClinicalDocument":
        raise CcdaRejected("ccda_wrong_namespace", "ClinicalDocument outside the urn:hl7-org:v3 namespace")
    raise CcdaRejected("unknown_format", f"XML that is not a C-CDA document (root <{name}>)")


def document_type(root: Any) -> tuple[str, str | None]:
    """(document type name, templateId that says so); raises CcdaRejected for an unknown type."""
    known = document_types()
    best: tuple[int, str, str] | None = None
    for root_id in template_ids(root):
        hit = known.get(root_id)
        if hit and (best is None or hit[2] < best[0]):
            best = (hit[2], hit[0], root_id)
    if best is not None:
        return best[1], best[2]
    code = child(root, "code")
    loinc = code.get("code") if code is not None else None
    for name, doc_loinc, priority in known.values():
        if loinc and doc_loinc == loinc and priority == 1:
            return name, None
    raise CcdaRejected(
        "ccda_unknown_document_type", "no C-CDA document templateId and no known document type code"
    )

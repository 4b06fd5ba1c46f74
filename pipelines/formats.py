"""Detecting a landed file's format from its first bytes (never from its name, which senders get wrong)."""

from __future__ import annotations

import codecs
import re
from pathlib import Path

import ijson
import orjson

from pipelines import fhir_versions
from pipelines.intake import jsondepth
from pipelines.intake.jsonfile import UTF8_BOM, open_json

SNIFF_BYTES = 64 * 1024
_WIDE_BOMS = {
    b"\xff\xfe\x00\x00": "utf-32-le",
    b"\x00\x00\xfe\xff": "utf-32-be",
    b"\xff\xfe": "utf-16-le",
    b"\xfe\xff": "utf-16-be",
}

# Format names recorded in ops.files.format; pipelines/convert maps each to its handler.
FHIR_NDJSON = "fhir-ndjson"
FHIR_BUNDLE = "fhir-bundle"
FHIR_RESOURCE = "fhir-resource"
FHIR_MANIFEST = "fhir-bulk-manifest"
FHIR_EXPORT_LOG = "fhir-export-log"
FHIR_EXPORT_ERRORS = "fhir-export-errors"
JSON_OTHER = "json-other"
JSON_INVALID = "json-invalid"
HL7V2 = "hl7v2"
CCDA = "ccda"
XML_OTHER = "xml-other"
EMPTY = "empty"
UNSUPPORTED_ENCODING = "unsupported-encoding"
UNKNOWN = "unknown"
# Older FHIR releases, upgraded to R4 on conversion; "mixed" is R4 with units of another release.
FHIR_NDJSON_DSTU2 = "fhir-ndjson-dstu2"
FHIR_NDJSON_STU3 = "fhir-ndjson-stu3"
FHIR_NDJSON_MIXED = "fhir-ndjson-mixed"
FHIR_BUNDLE_DSTU2 = "fhir-bundle-dstu2"
FHIR_BUNDLE_STU3 = "fhir-bundle-stu3"
FHIR_BUNDLE_MIXED = "fhir-bundle-mixed"
FHIR_RESOURCE_DSTU2 = "fhir-resource-dstu2"
FHIR_RESOURCE_STU3 = "fhir-resource-stu3"
FHIR_UNSUPPORTED_VERSION = "fhir-unsupported-version"


_HL7_SEGMENT_START = re.compile(rb"[\r\n\x0b](?:MSH|FHS|BHS)[^A-Za-z0-9\r\n]")


def first_utf8_error(path: Path) -> int | None:
    """Byte offset of the first invalid UTF-8 sequence, or None; streaming, so any file size will do."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                return offset + exc.start
            offset += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return offset
    return None


def detect(path: Path, release: str | None = None) -> tuple[str, str | None]:
    """(format, detail) for the file at path; detail says more (Bundle type, encoding, why unknown).

    release: a FHIR release declared for the file ("1.0", "3.0", "4.0"), used instead of the guess.
    """
    with path.open("rb") as fh:
        head = fh.read(SNIFF_BYTES)
        while head and not head.strip():
            # Leading whitespace past the sniff window: look at the first chunk that holds data.
            head = fh.read(SNIFF_BYTES)
    if not head.strip():
        return EMPTY, None
    for bom, name in _WIDE_BOMS.items():
        if head.startswith(bom):
            return UNSUPPORTED_ENCODING, name
    if len(head) > 1 and (head[0] == 0 or head[1] == 0):
        return UNSUPPORTED_ENCODING, "utf-16 without byte order mark"
    body = head.removeprefix(UTF8_BOM).lstrip()
    first = body[:1]
    if first == b"{":
        return _detect_json(path, body, release)
    if first == b"[":
        if _later_lines_are_resources(_first_line(path, body)[1]):
            return _detect_json(path, body, release)  # NDJSON whose first line is an array
        return JSON_OTHER, "top-level JSON array"
    if first == b"<":
        return _detect_xml(body)
    if body[:3] in (b"MSH", b"FHS", b"BHS") or body[:4] == b"\x0bMSH":
        return HL7V2, None
    if _HL7_SEGMENT_START.search(body):
        # Archives often open with an export banner or junk before the first segment; the reader
        # quarantines those bytes as a fragment and converts the messages after them.
        return HL7V2, "text before the first segment"
    return UNKNOWN, None


_BROKEN = object()


def _detect_json(path: Path, body: bytes, release: str | None = None) -> tuple[str, str | None]:
    first_line, rest = _first_line(path, body)
    try:
        obj = orjson.loads(first_line) if first_line is not None else _BROKEN
    except orjson.JSONDecodeError:
        obj = _BROKEN
    if isinstance(obj, dict):
        return _detect_first_object(path, body, rest, obj, release)
    # A first line that is broken, longer than the window, not an object, or holding a NUL or a number
    # orjson refuses must not decide for the file: resources on the lines after it make it NDJSON, where
    # that line is quarantined on its own and every other line converts.
    if _later_lines_are_resources(rest):
        return _with_release(FHIR_NDJSON, None, _told(release, fhir_versions.sniff_ndjson, body))
    if obj is not _BROKEN:
        return JSON_OTHER, "first line is not a JSON object"
    return _detect_json_document(path, release)


def _detect_first_object(
    path: Path, body: bytes, rest: bytes, obj: dict, release: str | None
) -> tuple[str, str | None]:
    if "exportId" in obj and "eventId" in obj:
        return FHIR_EXPORT_LOG, None
    if obj.get("resourceType") == "OperationOutcome":
        # A bulk export's error file: the server's processing errors, not clinical data.
        return FHIR_EXPORT_ERRORS, None
    if rest.strip():
        # Several JSON lines: NDJSON even when the first lacks resourceType (its line is quarantined).
        return _with_release(FHIR_NDJSON, None, _told(release, fhir_versions.sniff_ndjson, body))
    fmt, detail = _classify_document(obj.get("resourceType"), set(obj), obj.get("type"))
    # One compact resource on one line is NDJSON of one line: the same units and pointers as its siblings.
    if fmt == FHIR_RESOURCE:
        return _with_release(FHIR_NDJSON, None, _told(release, fhir_versions.sniff_ndjson, body))
    if fmt == FHIR_BUNDLE:
        return _with_release(fmt, detail, _told(release, fhir_versions.sniff_bundle, path))
    return fmt, detail


def _first_line(path: Path, body: bytes) -> tuple[bytes | None, bytes]:
    """(first line, the bytes after it within a sniff window); None for a line longer than the window.

    A bulk export's first resource may be larger than the window: its end is found (reading on, keeping
    nothing) so that the lines after it can tell the format.
    """
    line, newline, rest = body.partition(b"\n")
    if newline or path.stat().st_size <= SNIFF_BYTES:
        return line, rest  # a file within the window without a newline is one whole line
    with open_json(path) as fh:
        started = False
        while chunk := fh.read(SNIFF_BYTES):
            if not started:  # blank lines before the first line are not it
                chunk = chunk.lstrip()
                started = bool(chunk)
            _, newline, tail = chunk.partition(b"\n")
            if started and newline:
                return None, tail + fh.read(SNIFF_BYTES)
    return None, b""


def _later_lines_are_resources(rest: bytes) -> bool:
    """True when a complete line after the first is a JSON object naming a resourceType (NDJSON)."""
    lines = rest.split(b"\n")
    for line in lines[:-1] if len(lines) > 1 else lines:
        line = line.strip()
        if not line.startswith(b"{"):
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("resourceType"), str):
            return True
    return False


def _told(release: str | None, sniff, source) -> tuple[str, bool]:
    """A declared release as the file's (mixing is then each unit's own problem), else the guess."""
    return (release, False) if release else sniff(source)


def _detect_json_document(path: Path, release: str | None = None) -> tuple[str, str | None]:
    """A pretty-printed JSON document: read top-level keys in a streaming pass, stopping early."""
    keys: set[str] = set()
    resource_type = bundle_type = None
    try:
        with open_json(path) as fh:
            for prefix, event, value in jsondepth.parse(fh):
                if prefix == "" and event == "map_key":
                    keys.add(value)
                elif prefix == "resourceType" and event == "string":
                    resource_type = value
                elif prefix == "type" and event == "string":
                    bundle_type = value
                if resource_type and (resource_type != "Bundle" or bundle_type):
                    break
    except (ijson.JSONError, ijson.IncompleteJSONError, UnicodeDecodeError):
        if first_utf8_error(path) is not None:
            return UNSUPPORTED_ENCODING, "not valid UTF-8"
        if resource_type or keys:
            return JSON_INVALID, "JSON document breaks off or has a syntax error"
        return JSON_INVALID, "not valid JSON"
    fmt, detail = _classify_document(resource_type, keys, bundle_type)
    if fmt == FHIR_BUNDLE:
        return _with_release(fmt, detail, _told(release, fhir_versions.sniff_bundle, path))
    if release and fmt == FHIR_RESOURCE:
        return _with_release(fmt, detail, (release, False))
    if fmt == FHIR_RESOURCE and path.stat().st_size <= _WHOLE_RESOURCE_BYTES:
        try:
            with open_json(path) as fh:
                obj = orjson.loads(fh.read())
        except orjson.JSONDecodeError:
            return fmt, detail  # the converter quarantines it with the parser's reason
        return _with_release(fmt, detail, fhir_versions.sniff_resource(obj))
    return fmt, detail


# A single-resource file larger than this is taken as R4 without reading it whole for its release.
_WHOLE_RESOURCE_BYTES = 64 << 20
_OLDER = {
    (FHIR_NDJSON, "1.0"): FHIR_NDJSON_DSTU2,
    (FHIR_NDJSON, "3.0"): FHIR_NDJSON_STU3,
    (FHIR_BUNDLE, "1.0"): FHIR_BUNDLE_DSTU2,
    (FHIR_BUNDLE, "3.0"): FHIR_BUNDLE_STU3,
    (FHIR_RESOURCE, "1.0"): FHIR_RESOURCE_DSTU2,
    (FHIR_RESOURCE, "3.0"): FHIR_RESOURCE_STU3,
}
_MIXED = {FHIR_NDJSON: FHIR_NDJSON_MIXED, FHIR_BUNDLE: FHIR_BUNDLE_MIXED}


def _with_release(fmt: str, detail: str | None, release: tuple[str, bool]) -> tuple[str, str | None]:
    """R4 keeps its format (and its fast paths); an older or unsupported release gets its own."""
    name, mixed = release
    if name == fhir_versions.UNSUPPORTED:
        return FHIR_UNSUPPORTED_VERSION, "FHIR release named by the file is neither DSTU2, STU3 nor R4"
    if name == "4.0":
        return (_MIXED[fmt], detail) if mixed and fmt in _MIXED else (fmt, detail)
    return _OLDER[(fmt, name)], detail


def _classify_document(resource_type: object, keys: set[str], bundle_type: object) -> tuple[str, str | None]:
    if resource_type == "Bundle":
        return FHIR_BUNDLE, bundle_type if isinstance(bundle_type, str) else None
    if isinstance(resource_type, str):
        return FHIR_RESOURCE, resource_type
    if "output" in keys and "transactionTime" in keys:
        return FHIR_MANIFEST, None
    return JSON_OTHER, "JSON object without resourceType"


def _detect_xml(body: bytes) -> tuple[str, str | None]:
    lowered = body[:4096].lower()
    if b"<html" in lowered or b"<!doctype html" in lowered:
        return UNKNOWN, "HTML page"
    if b"clinicaldocument" in lowered and b"urn:hl7-org:v3" in lowered:
        return CCDA, None
    return XML_OTHER, None

"""Format detection from content, never from file names."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines import formats


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", (formats.EMPTY, None)),
        (b"  \n\n\t", (formats.EMPTY, None)),
        (
            b'{"resourceType":"Patient","id":"a"}\n{"resourceType":"Patient","id":"b"}\n',
            (formats.FHIR_NDJSON, None),
        ),
        (b'{"id":"a"}\n{"resourceType":"Patient","id":"b"}\n', (formats.FHIR_NDJSON, None)),
        (b'{"resourceType":"Patient","id":"a"}\n', (formats.FHIR_NDJSON, None)),
        (b'{\n  "resourceType": "Patient",\n  "id": "a"\n}\n', (formats.FHIR_RESOURCE, "Patient")),
        (b'{"resourceType":"Bundle","type":"collection","entry":[]}', (formats.FHIR_BUNDLE, "collection")),
        (
            b'{\n  "resourceType": "Bundle",\n  "type": "transaction",\n  "entry": []\n}\n',
            (formats.FHIR_BUNDLE, "transaction"),
        ),
        (b'\xef\xbb\xbf{\n  "resourceType": "Bundle",\n  "type": "batch"\n}', (formats.FHIR_BUNDLE, "batch")),
        (
            b'{\n "transactionTime": "2024-01-01T00:00:00Z",\n "request": "x",\n "output": []\n}',
            (formats.FHIR_MANIFEST, None),
        ),
        (
            b'{"exportId":"e","eventId":"kickoff"}\n{"exportId":"e","eventId":"done"}\n',
            (formats.FHIR_EXPORT_LOG, None),
        ),
        (b'{\n "PatientId": 1\n}', (formats.JSON_OTHER, "JSON object without resourceType")),
        (b'[{"resourceType":"Patient"}]', (formats.JSON_OTHER, "top-level JSON array")),
        (
            b'{\n "resourceType": "Bundle",\n "entry": [',
            (formats.JSON_INVALID, "JSON document breaks off or has a syntax error"),
        ),
        # the converter quarantines the bad bytes; detection needs only the first members
        (b'{\n "resourceType": "Patient", "name": "M\xfcller"\n}', (formats.FHIR_RESOURCE, "Patient")),
        (
            b'{\n "resourceType": "Bundle", "type": "M\xfcller"\n}',
            (formats.UNSUPPORTED_ENCODING, "not valid UTF-8"),
        ),
        (b"\xff\xfe{\x00", (formats.UNSUPPORTED_ENCODING, "utf-16-le")),
        (b"MSH|^~\\&|LAB|HOSP|||20240101||ORU^R01|1|P|2.5\r", (formats.HL7V2, None)),
        (b"\x0bMSH|^~\\&|A\r\x1c\r", (formats.HL7V2, None)),
        (b"exported 2024-01-01\r\nMSH|^~\\&|A\r", (formats.HL7V2, "text before the first segment")),
        (b"notes about MSH segments\n", (formats.UNKNOWN, None)),
        (b'<?xml version="1.0"?><ClinicalDocument xmlns="urn:hl7-org:v3"/>', (formats.CCDA, None)),
        (b"<!DOCTYPE html><html><body>login</body></html>", (formats.UNKNOWN, "HTML page")),
        (b"<note>hi</note>", (formats.XML_OTHER, None)),
        (b"name,dob\nx,y\n", (formats.UNKNOWN, None)),
    ],
)
def test_detect(tmp_path: Path, content: bytes, expected: tuple[str, str | None]):
    path = tmp_path / "input.bin"
    path.write_bytes(content)
    assert formats.detect(path) == expected


def test_whitespace_then_data_past_the_sniff_window_is_not_empty(tmp_path: Path):
    path = tmp_path / "padded"
    path.write_bytes(b" " * (formats.SNIFF_BYTES + 10) + b"MSH|^~\\&|X\r")
    assert formats.detect(path)[0] != formats.EMPTY

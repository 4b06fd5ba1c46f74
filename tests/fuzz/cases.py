"""Seeds for the fuzz campaign: small hostile cases built here (never giant files) and corpus samples."""

from __future__ import annotations

import base64
import csv
import os
from collections.abc import Callable
from pathlib import Path

import orjson

CORPUS = Path(os.environ.get("EHRLIFT_CORPUS") or Path(__file__).resolve().parents[3] / "shared" / "corpus")
READERS = ("ndjson", "bundle", "hl7", "ccda", "manifest", "mllp")


def _res(rtype: str, rid: str, **fields) -> bytes:
    return orjson.dumps({"resourceType": rtype, "id": rid, **fields})


_MSH = b"MSH|^~\\&|LAB|FAC|EHR|HOSP|20240131083000||ORU^R01^ORU_R01|C1|P|2.5.1"
_ORU = (
    _MSH
    + b"\rPID|1||12345^^^HOSP^MR||Doe^Jane||19800101|F\rOBR|1|O1|F1|24323-8^Panel^LN\r"
    + (b"OBX|1|NM|2345-7^Glucose^LN||95|mg/dL|||||F|||20240131080000\r")
)
_CCDA_HEAD = (
    b'<ClinicalDocument xmlns="urn:hl7-org:v3"><templateId root="2.16.840.1.113883.10.20.22.1.1"/>'
    b'<templateId root="2.16.840.1.113883.10.20.22.1.2"/><id root="2.16.840.1.113883.19" extension="d1"/>'
    b'<code code="34133-9" codeSystem="2.16.840.1.113883.6.1"/><effectiveTime value="20240102"/>'
    b'<recordTarget><patientRole><id root="2.16.840.1.113883.19.5" extension="MRN1"/><patient><name>'
    b"<family>Testperson</family></name></patient></patientRole></recordTarget>"
)

# name -> builder, per reader: each a hostile shape seen in the field or in an attack.
HOSTILE: dict[str, dict[str, Callable[[], bytes]]] = {
    "ndjson": {
        "deep_line": lambda: _res("Patient", "a") + b"\n" + b'{"x":' + b"[" * 5000 + b"]" * 5000 + b"}\n",
        "nul_first_line": lambda: b'{"resourceType":"Patient\x00"}\n' + _res("Patient", "b") + b"\n",
        "huge_number": lambda: b'{"resourceType":"Basic","n":' + b"9" * 1000 + b"}\n" + _res("Patient", "c"),
        "bare_cr": lambda: _res("Patient", "a") + b"\r" + _res("Patient", "b") + b"\n",
        "duplicate_keys": lambda: b'{"resourceType":"Patient","id":"a","id":"b"}\n',
        "fake_types": lambda: b"\n".join(_res(f"Fake{i}", "x") for i in range(20)),
        "ansi_and_controls": lambda: _res("Patient", "a", text={"div": "\x1b[31mred\x07"}) + b"\n",
        "invalid_utf8": lambda: b'{"resourceType":"Patient","id":"\xff\xfe"}\n' + _res("Patient", "d"),
    },
    "bundle": {
        "deep_entry": lambda: (
            b'{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"resourceType":"Basic","x":'
            + b"[" * 5000
            + b"]" * 5000
            + b"}}]}"
        ),
        "deep_outside_entries": lambda: (
            b'{"resourceType":"Bundle","meta":' + b"[" * 3000 + b"]" * 3000 + b"}"
        ),
        "repeated_full_url": lambda: orjson.dumps(
            {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [{"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Patient"}}] * 3,
            }
        ),
        "scalar_entries": lambda: b'{"resourceType":"Bundle","type":"collection","entry":[1,"x",null,[]]}',
        "truncated": lambda: b'{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"resou',
    },
    "hl7": {
        "million_reps": lambda: (
            _MSH + b"\rPID|1||" + b"~".join(b"%d^^^H^MR" % i for i in range(20000)) + b"\r"
        ),
        "ebcdic": lambda: _ORU.replace(b"|2.5.1", b"|2.5.1||||||cp500"),
        "hex_charset": lambda: _ORU.replace(b"|2.5.1", b"|2.5.1||||||hex"),
        "shifted_fields": lambda: _ORU.replace(b"||ORU^R01", b"|||ORU^R01"),
        "nul_bytes": lambda: _ORU.replace(b"Glucose", b"Glu\x00cose"),
        "wrapped_lines": lambda: _ORU + b"\n".join(b"wrapped text" for _ in range(2000)),
        "bad_delimiters": lambda: b"MSH|||||\rPID|1\r",
        "mllp_junk": lambda: b"\x0b" + _ORU + b"\x1c\r\x00\x00\xff" + b"\x0b" + _ORU[:40],
    },
    "ccda": {
        "doctype": lambda: (
            b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]>' + _CCDA_HEAD + b"</ClinicalDocument>"
        ),
        "deep": lambda: _CCDA_HEAD + b"<component>" * 400 + b"</component>" * 400 + b"</ClinicalDocument>",
        "xinclude": lambda: (
            _CCDA_HEAD.replace(
                b"<recordTarget>",
                b'<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="/etc/passwd"/><recordTarget>',
            )
            + b"</ClinicalDocument>"
        ),
        "attachment": lambda: (
            _CCDA_HEAD.replace(b"22.1.2", b"22.1.10")
            + b'<component><nonXMLBody><text mediaType="application/pdf" representation="B64">'
            + base64.b64encode(os.urandom(30000))
            + b"</text></nonXMLBody></component></ClinicalDocument>"
        ),
        "truncated": lambda: _CCDA_HEAD[:200],
    },
    "manifest": {
        "traversal": lambda: b"../../../etc/passwd",
        "absolute": lambda: b"/etc/passwd",
        "file_url": lambda: b"file:///etc/passwd",
        "file_localhost": lambda: b"file://localhost/etc/passwd",
        "encoded": lambda: b"%2e%2e/%2e%2e/etc/passwd",
        "nul": lambda: b"Patient\x00.ndjson",
    },
    "mllp": {
        "no_end": lambda: b"\x0b" + _ORU,
        "two_frames": lambda: b"\x0b" + _ORU + b"\x1c\r\n\x0b" + _ORU + b"\x1c\r",
        "no_start": lambda: _ORU + b"\x1c\r",
        "hex_charset": lambda: b"\x0b" + _ORU.replace(b"|2.5.1", b"|2.5.1||||||hex") + b"\x1c\r",
        "ebcdic_bytes": lambda: b"\x0b" + _ORU.replace(b"|2.5.1", b"|2.5.1||||||cp500") + b"\xe9\x1c\r",
    },
}

_CATEGORIES = {"ndjson": "fhir", "bundle": "fhir", "hl7": "hl7v2", "mllp": "hl7v2", "ccda": "ccda"}


def corpus_seeds(reader: str, limit: int = 12, max_bytes: int = 40_000) -> list[bytes]:
    """Small corpus files of the reader's kind, in a stable order; none when the corpus is absent."""
    manifest = CORPUS / "MANIFEST.csv"
    category = _CATEGORIES.get(reader)
    if category is None or not manifest.is_file():
        return []
    out: list[bytes] = []
    with manifest.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            path = CORPUS / row["corpus_path"]
            if not row["category"].startswith(category) or int(row["size_bytes"] or 0) > max_bytes:
                continue
            if reader == "ndjson" and not path.name.endswith(".ndjson"):
                continue
            if reader == "bundle" and not path.name.endswith(".json"):
                continue
            if reader in ("hl7", "mllp") and path.suffix not in (".hl7", ".txt", ".er7"):
                continue
            if reader == "ccda" and path.suffix != ".xml":
                continue
            if path.is_file():
                out.append(path.read_bytes())
            if len(out) >= limit:
                break
    return out


def seeds(reader: str, corpus: int = 12) -> list[bytes]:
    """Every checked-in hostile case, then up to `corpus` corpus files of the reader's kind."""
    return [build() for build in HOSTILE[reader].values()] + (corpus_seeds(reader, corpus) if corpus else [])

"""HL7 v2.5.1 building blocks for the demo archives: escaping, timestamps, MSH, PID and PV1 segments."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

from pipelines.demo.records import Encounter, PatientRecord, digest_int

V2: dict[str, Any] = json.loads((Path(__file__).parent / "hl7v2.json").read_text(encoding="utf-8"))
ENCODING_CHARACTERS = "^~\\&"
UTF8 = "UNICODE UTF-8"
LATIN1 = "8859/1"
# The Python codec for each MSH-18 value the archives declare.
CODECS = {UTF8: "utf-8", LATIN1: "latin-1"}


def esc(text: str) -> str:
    """A value with HL7's delimiters escaped; the escape character goes first so it is not doubled."""
    return (
        text.replace("\\", "\\E\\")
        .replace("|", "\\F\\")
        .replace("^", "\\S\\")
        .replace("&", "\\T\\")
        .replace("~", "\\R\\")
    )


@lru_cache(maxsize=64)
def _zone(minutes: int) -> timezone:
    return timezone(timedelta(minutes=minutes))


def dtm(ts: int, offset_minutes: int) -> str:
    """An HL7 DTM to the second in the patient's local offset, as the sending systems stamp events."""
    return datetime.fromtimestamp(ts, _zone(offset_minutes)).strftime("%Y%m%d%H%M%S%z")


def pick(uid: str, purpose: str, n: int) -> int:
    """A stable choice in range(n) for one record: each message depends only on its own record."""
    return digest_int(f"{uid}:{purpose}") % n


def control_id(uid: str, event: str) -> str:
    return f"{digest_int(f'{uid}:{event}:msh10'):016X}"


def seg(name: str, fields: dict[int, str]) -> str:
    """One segment from {field number: encoded value}; fields not given stay empty."""
    values = [""] * max(fields)
    for number, value in fields.items():
        values[number - 1] = value
    return "|".join((name, *values))


def msh(
    feed: str, when: str, message_type: str, control: str, charset: str = UTF8, encoding_chars: str = ""
) -> str:
    """The header; MSH-1 is the field separator itself, so MSH-2 is the first value after 'MSH|'."""
    sender, receiver = V2["feeds"][feed], V2["receiver"]
    fields = {
        3: sender["application"],
        4: sender["facility"],
        5: receiver["application"],
        6: receiver["facility"],
        7: when,
        9: message_type,
        10: control,
        11: "P",
        12: V2["version"],
        15: "NE",
        16: "NE",
        17: "USA",
        18: charset,
    }
    fields[2] = encoding_chars or ENCODING_CHARACTERS
    return "MSH|" + seg("MSH", fields).split("|", 2)[2]


def message(segments: list[str], charset: str = UTF8) -> bytes:
    """A whole message: every segment, the last included, ends with a carriage return."""
    return ("\r".join(segments) + "\r").encode(CODECS[charset])


def pid(p: PatientRecord, when: int, family: str | None = None) -> str:
    """The patient as known when the message was sent: a death shows only in messages after it."""
    given = [esc(g) for g in p.given]
    a = p.address
    line2 = esc(a.line[1]) if len(a.line) > 1 else ""
    area, local = p.phone.split("-", 1)
    fields = {
        1: "1",
        3: f"{p.mrn}^^^{V2['assigning_authority']}^MR",
        5: f"{esc(family or p.family)}^{given[0]}^{'^'.join(given[1:2])}^^^^L",
        7: p.birth_date.strftime("%Y%m%d"),
        8: V2["sex"][p.gender],
        11: f"{esc(a.line[0])}^{line2}^{esc(a.city)}^{a.state}^{a.postal_code}^USA^H",
        13: f"({area}){local}^PRN^PH^^1^{area}^{local.replace('-', '')}",
        15: V2["languages"][p.language["code"]],
    }
    if p.marital is not None:
        fields[16] = f"{p.marital['code']}^{esc(p.marital['display'])}^HL70002"
    if p.deceased_at is not None and p.deceased_at <= when:
        fields[29] = dtm(p.deceased_at, p.utc_offset_minutes)
        fields[30] = "Y"
    return seg("PID", fields)


def provider(uid: str) -> str:
    """The attending or ordering clinician (XCN), chosen stably for the record."""
    doc = V2["providers"][pick(uid, "provider", len(V2["providers"]))]
    return f"{doc['id']}^{doc['family']}^{doc['given']}^^^^MD^^NPI"


def pv1(p: PatientRecord, enc: Encounter, discharged: bool) -> str:
    cls = enc.cls["code"]
    locations = V2["locations"][cls]
    fields = {
        1: "1",
        2: V2["patient_class"][cls],
        3: locations[pick(enc.uid, "location", len(locations))],
        7: provider(enc.uid),
        10: V2["hospital_service"][cls],
        19: f"{enc.visit_number}^^^{V2['visit_authority']}^VN",
        44: dtm(enc.start, p.utc_offset_minutes),
    }
    if cls != "AMB":
        fields[4] = V2["admission_type"].get(enc.type["code"], "R")
    if discharged:
        fields[36] = "01"  # discharged to home or self care
        fields[45] = dtm(enc.end, p.utc_offset_minutes)
    return seg("PV1", fields)


def pv2(enc: Encounter) -> str:
    return seg("PV2", {3: f"{enc.type['code']}^{esc(enc.type['display'])}^SCT"})

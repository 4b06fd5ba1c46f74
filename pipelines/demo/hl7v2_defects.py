"""The deliberate defects planted in the demo HL7 v2 archives and the bytes that carry each one."""

from __future__ import annotations

from functools import cache

from pipelines.demo.hl7v2_messages import adt_message, lab_message
from pipelines.demo.hl7v2_orders import vxu_message
from pipelines.demo.hl7v2_segments import LATIN1, V2, control_id, dtm, message, msh, pid, seg
from pipelines.demo.model import build_patient
from pipelines.demo.records import (
    CODES,
    HOUR,
    MINUTE,
    Immunization,
    LabPanel,
    LabResult,
    PatientRecord,
    make_uid,
)

# kind -> (unit kind, expected outcome, expected reason, description, message type when it converts)
DEFECTS: dict[str, tuple[str, str, str | None, str, str]] = {
    "no_msh9": ("hl7_message", "quarantined", "hl7_malformed_msh", "ADT message whose MSH-9 is empty", ""),
    "latin1": (
        "hl7_message",
        "converted",
        None,
        "A04 with a Latin-1 family name (raw 0xFC), correctly declared 8859/1 in MSH-18",
        "ADT^A04",
    ),
    "junk": ("hl7_fragment", "quarantined", "hl7_not_a_message", "binary junk between two messages", ""),
    "truncated": (
        "hl7_message",
        "quarantined",
        "hl7_truncated",
        "last message of the file cut off inside an OBX segment id ('OB'), without a terminator or newline",
        "",
    ),
    "bad_delimiters": (
        "hl7_message",
        "quarantined",
        "hl7_bad_delimiters",
        "VXU whose MSH-2 repeats the component separator (^^\\&)",
        "",
    ),
    "unknown_type": (
        "hl7_message",
        "quarantined",
        "hl7_unsupported_message_type",
        "message of an unknown type (ZZZ^Z01)",
        "",
    ),
}
# Each defect belongs to its own patient of the "defect" cohort (patient 0 carries the FHIR one), so no
# defect changes what the valid messages say about the main patients.
_PATIENT = {"latin1": 1, "truncated": 2, "no_msh9": 3, "bad_delimiters": 4, "unknown_type": 5}
_BAD_ENCODING_CHARACTERS = "^^\\&"


@cache
def defect_bytes(kind: str, seed: int) -> bytes:
    """One defective unit, without its framing (line feed or MLLP block)."""
    if kind == "junk":
        # A block of a damaged archive: NULs and high bytes, never a segment terminator or frame byte.
        data = b"\x00" * 8 + V2["defects"]["junk"].encode() + b"\xff\xfe\xfa\xde\x1a" + b"\x00" * 8
        assert not set(data) & {0x0A, 0x0B, 0x0D, 0x1C}
        return data
    p = build_patient(seed, _PATIENT[kind], "defect")
    enc = p.encounters[0]
    if kind == "latin1":
        family = V2["defects"]["latin1_family"]
        data = adt_message(p, enc, "A04", enc.start, charset=LATIN1, family=family)
        assert family.encode("latin-1") in data
        _assert_not_utf8(data)
        return data
    if kind == "no_msh9":
        return adt_message(p, enc, "A04", enc.start, message_type="")
    if kind == "bad_delimiters":
        return vxu_message(p, enc, _shot(p), encoding_chars=_BAD_ENCODING_CHARACTERS)
    if kind == "unknown_type":
        stamp = dtm(enc.start, p.utc_offset_minutes)
        header = msh("siu", stamp, V2["defects"]["unknown_type"], control_id(enc.uid, "Z01"))
        return message([header, pid(p, enc.start), seg("ZZZ", {1: "1", 2: "LEGACY STATUS PING"})])
    if kind == "truncated":
        # Cut inside the second OBX's segment id: a copy that stops mid-field is indistinguishable from a
        # whole last message without its final terminator, which is normal, so it could not be detected.
        data = lab_message(p, enc, _panel(p))
        return data[: data.index(b"\rOBX|2|") + 3]
    raise ValueError(f"unknown HL7 v2 defect kind {kind!r}")


def _panel(p: PatientRecord) -> LabPanel:
    """A basic metabolic panel for the visit, whatever the defect patient's own chart holds."""
    enc = p.encounters[0]
    spec = CODES["lab_panels"][0]
    results = [
        LabResult(
            make_uid(p.key, "hl7-truncated", test), test, CODES["lab_tests"][test]["mean"], "N", "both", 0
        )
        for test in spec["tests"]
    ]
    collected = enc.start + 20 * MINUTE
    return LabPanel(
        make_uid(p.key, "hl7-truncated"), spec, f"L{p.mrn}901", collected, collected + HOUR, results, 0
    )


def _shot(p: PatientRecord) -> Immunization:
    enc = p.encounters[0]
    vaccine = CODES["vaccines"][0]
    return Immunization(
        make_uid(p.key, "hl7-delimiters"),
        vaccine,
        enc.start + 15 * MINUTE,
        "completed",
        None,
        enc.uid,
        "KX40210",
        0,
    )


def _assert_not_utf8(data: bytes) -> None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return
    raise AssertionError("defect message unexpectedly decodes as UTF-8")

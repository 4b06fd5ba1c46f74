"""One synthetic patient's visits and results as HL7 v2.5.1 ADT and ORU^R01 (lab and vital-sign) messages."""

from __future__ import annotations

from collections.abc import Iterator

from pipelines.demo.hl7v2_segments import (
    UTF8,
    V2,
    control_id,
    dtm,
    esc,
    message,
    msh,
    pick,
    pid,
    provider,
    pv1,
    pv2,
    seg,
)
from pipelines.demo.records import CODES, MINUTE, Encounter, LabPanel, PatientRecord

Message = tuple[str, bytes]  # (MSH-9 message code and trigger event, the message's bytes)
_TESTS = CODES["lab_tests"]
_VITALS = CODES["vitals"]
_UNITS = CODES["units"]
_STRUCTURE = {"A03": "ADT_A03"}


def number(value: float) -> str:
    # The shortest repr, as the FHIR export writes the same value, so the two sources agree exactly.
    return str(value)


def adt_messages(p: PatientRecord) -> Iterator[Message]:
    """A04 at registration; A03 at inpatient discharge; A08 (visit closed) for some other visits."""
    for enc in p.encounters:
        yield "ADT^A04", adt_message(p, enc, "A04", enc.start)
        if enc.cls["code"] == "IMP":
            yield "ADT^A03", adt_message(p, enc, "A03", enc.end)
        elif pick(enc.uid, "a08", 3) == 0:
            yield (
                "ADT^A08",
                adt_message(p, enc, "A08", enc.end + (5 + pick(enc.uid, "a08-delay", 115)) * MINUTE),
            )


def adt_message(
    p: PatientRecord,
    enc: Encounter,
    event: str,
    when: int,
    *,
    charset: str = UTF8,
    family: str | None = None,
    message_type: str | None = None,
) -> bytes:
    """One ADT message; charset, family and message_type are overridden only for the deliberate defects."""
    stamp = dtm(when, p.utc_offset_minutes)
    if message_type is None:
        message_type = f"ADT^{event}^{_STRUCTURE.get(event, 'ADT_A01')}"
    return message(
        [
            msh("adt", stamp, message_type, control_id(enc.uid, event), charset),
            seg("EVN", {1: event, 2: stamp}),
            pid(p, when, family),
            pv1(p, enc, discharged=event != "A04"),
            pv2(enc),
        ],
        charset,
    )


def oru_messages(p: PatientRecord) -> Iterator[Message]:
    """One ORU^R01 per lab panel, coded with the lab's local codes (LOINC alongside only in some)."""
    for enc in p.encounters:
        for panel in enc.panels:
            yield "ORU^R01", lab_message(p, enc, panel)


def _reference_range(test: dict) -> str:
    low, high = test["low"], test["high"]
    if low is not None and high is not None:
        return f"{low}-{high}"
    return f">{low}" if high is None else f"<{high}"


def lab_message(p: PatientRecord, enc: Encounter, panel: LabPanel) -> bytes:
    off = p.utc_offset_minutes
    collected, issued = dtm(panel.collected, off), dtm(panel.issued, off)
    orderer = provider(enc.uid)
    placer = f"P{panel.accession[1:]}"
    filler = f"{panel.accession}^{V2['accession_authority']}"
    spec = panel.panel
    # A legacy lab feed names tests by its own codes; only some interfaces were taught LOINC as well.
    with_loinc = panel.results[0].coding != "local"
    service = f"{spec['local']}^{esc(spec['display'])}^99LAB"
    if with_loinc:
        service += f"^{spec['code']}^{esc(spec['display'])}^LN"
    segments = [
        msh("oru", issued, "ORU^R01^ORU_R01", control_id(panel.uid, "R01")),
        pid(p, panel.issued),
        pv1(p, enc, discharged=False),
        seg("ORC", {1: "RE", 2: placer, 3: filler, 5: "CM", 12: orderer}),
        seg(
            "OBR", {1: "1", 2: placer, 3: filler, 4: service, 7: collected, 16: orderer, 22: issued, 25: "F"}
        ),
    ]
    comments = V2["lab_comments"]
    for n, result in enumerate(panel.results, start=1):
        test = _TESTS[result.test]
        code = f"{result.test}^{esc(test['local_display'])}^99LAB"
        if with_loinc:
            code += f"^{test['loinc']}^{esc(test['display'])}^LN"
        fields = {
            1: str(n),
            2: "NM",
            3: code,
            5: number(result.value),
            6: f"{esc(test['unit'])}^{esc(test['unit'])}^UCUM",
            7: esc(_reference_range(test)),
            8: result.interpretation,
            11: "F",
            14: collected,
            19: issued,
        }
        segments.append(seg("OBX", fields))
        if pick(result.uid, "nte", 10) == 0:
            note = comments[pick(result.uid, "nte-text", len(comments))]
            segments.append(seg("NTE", {1: "1", 2: "L", 3: esc(note)}))
    return message(segments)


def vitals_messages(p: PatientRecord) -> Iterator[Message]:
    """One ORU^R01 per visit with vital signs, as a bedside-device interface sends them (LOINC coded)."""
    off = p.utc_offset_minutes
    for enc in p.encounters:
        if not enc.vitals:
            continue
        when = enc.vitals[0].when
        stamp = dtm(when, off)
        panel = V2["vital_panel"]
        segments = [
            msh("vitals", stamp, "ORU^R01^ORU_R01", control_id(enc.uid, "vitals")),
            pid(p, when),
            pv1(p, enc, discharged=False),
            seg(
                "OBR",
                {
                    1: "1",
                    3: f"{enc.visit_number}VS^BEDSIDE",
                    4: f"{panel['code']}^{esc(panel['display'])}^LN",
                    7: stamp,
                    25: "F",
                },
            ),
        ]
        n = 0
        for vital in enc.vitals:
            kinds = ("systolic", "diastolic") if vital.kind == "blood_pressure" else (vital.kind,)
            for kind, value in zip(kinds, vital.values, strict=True):
                n += 1
                code = _VITALS[kind]
                fields = {
                    1: str(n),
                    2: "NM",
                    3: f"{code['code']}^{esc(code['display'])}^LN",
                    5: number(value),
                    6: f"{esc(vital.unit)}^{esc(_UNITS[vital.unit])}^UCUM",
                    11: "F",
                    14: dtm(vital.when, off),
                }
                segments.append(seg("OBX", fields))
        yield "ORU^R01", message(segments)

"""One synthetic patient's shots, charges and appointments as HL7 v2.5.1 VXU^V04, DFT^P03 and SIU^S12."""

from __future__ import annotations

from collections.abc import Iterator

from pipelines.demo.hl7v2_messages import Message
from pipelines.demo.hl7v2_segments import (
    ENCODING_CHARACTERS,
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
    seg,
)
from pipelines.demo.records import DAY, HOUR, MINUTE, Encounter, Immunization, PatientRecord, birth_ts


def vxu_messages(p: PatientRecord) -> Iterator[Message]:
    visits = {enc.uid: enc for enc in p.encounters}
    for imm in p.immunizations:
        yield "VXU^V04", vxu_message(p, visits[imm.encounter_uid], imm)


def vxu_message(
    p: PatientRecord, enc: Encounter, imm: Immunization, encoding_chars: str = ENCODING_CHARACTERS
) -> bytes:
    """An immunization update; encoding_chars differs from the standard only for a deliberate defect."""
    off = p.utc_offset_minutes
    given = dtm(imm.when, off)
    sent = imm.when + (2 + pick(imm.uid, "vxu-delay", 58)) * MINUTE
    giver = provider(enc.uid)
    rxa = {
        1: "0",
        2: "1",
        3: given,
        4: given,
        5: f"{imm.vaccine['cvx']}^{esc(imm.vaccine['display'])}^CVX",
        9: "00^New immunization record^NIP001",
        10: giver,
        21: "A",
    }
    if imm.status == "completed":
        rxa.update({6: "0.5", 7: "mL^mL^UCUM", 15: imm.lot_number or "", 20: "CP"})
    else:
        reason = imm.status_reason or {"code": "PATOBJ", "display": "patient objection"}
        rxa.update({6: "999", 18: f"{reason['code']}^{esc(reason['display'])}^ActReason"})
        rxa[20] = V2["refusal_completion"][reason["code"]]
    segments = [
        msh(
            "vxu",
            dtm(sent, off),
            "VXU^V04^VXU_V04",
            control_id(imm.uid, "V04"),
            encoding_chars=encoding_chars,
        ),
        pid(p, sent),
        pv1(p, enc, discharged=False),
        seg("ORC", {1: "RE", 3: f"{imm.uid[:8].upper()}^IMMREG", 12: giver}),
        seg("RXA", rxa),
    ]
    if imm.status == "completed":
        segments.append(seg("RXR", {1: V2["vaccine_route"], 2: V2["vaccine_site"]}))
    return message(segments)


def dft_messages(p: PatientRecord) -> Iterator[Message]:
    """One DFT^P03 per visit: the visit charge and one per procedure (FT1, PR1), then the diagnoses (DG1)."""
    off = p.utc_offset_minutes
    for enc in p.encounters:
        posted = enc.end + DAY + pick(enc.uid, "posted", 12) * HOUR
        posting = dtm(posted, off)
        diagnoses = [c for c in p.conditions if c.encounter_uid == enc.uid]
        # ICD-10-CM is I10C in table 0396 (I10 is WHO ICD-10), as a correct US feed sends it.
        dx = "~".join(f"{c.code['icd10']}^{esc(c.code['icd10_display'])}^I10C" for c in diagnoses)
        performer = provider(enc.uid)
        period = f"{dtm(enc.start, off)}^{dtm(enc.end, off)}"
        visit = V2["visit_charges"][enc.cls["code"]]
        segments = [
            msh("dft", posting, "DFT^P03^DFT_P03", control_id(enc.uid, "P03")),
            seg("EVN", {1: "P03", 2: posting}),
            pid(p, posted),
            pv1(p, enc, discharged=True),
            _ft1(1, enc.uid, period, posting, visit, dx, performer),
        ]
        procedures = [proc for proc in p.procedures if proc.encounter_uid == enc.uid]
        for n, proc in enumerate(procedures, start=2):
            charge = V2["procedure_charges"][proc.code["code"]]
            done = dtm(proc.start, off)
            segments.append(_ft1(n, proc.uid, done, posting, charge, dx, performer))
            pr1 = {1: str(n - 1), 3: f"{proc.code['code']}^{esc(proc.code['display'])}^SCT", 5: done}
            if proc.end is not None:
                pr1[7] = str((proc.end - proc.start) // MINUTE)
            segments.append(seg("PR1", pr1))
        for n, cond in enumerate(diagnoses, start=1):
            code = f"{cond.code['icd10']}^{esc(cond.code['icd10_display'])}^I10C"
            segments.append(seg("DG1", {1: str(n), 3: code, 5: dtm(cond.recorded, off), 6: "F"}))
        yield "DFT^P03", message(segments)


def _ft1(n: int, uid: str, when: str, posting: str, charge: dict, dx: str, performer: str) -> str:
    code = f"{charge['code']}^{esc(charge['display'])}^C4"
    fields = {
        1: str(n),
        2: f"{uid[:8].upper()}{n:02d}",
        4: when,
        5: posting,
        6: "CG",
        7: code,
        10: "1",
        11: f"{charge['amount']}&USD",
        19: dx,
        20: performer,
        25: code,
    }
    return seg("FT1", fields)


def siu_messages(p: PatientRecord) -> Iterator[Message]:
    """One SIU^S12 (new appointment booked) per outpatient visit, sent days before it."""
    off = p.utc_offset_minutes
    for enc in p.encounters:
        if enc.cls["code"] != "AMB":
            continue
        booked = max(birth_ts(p), enc.start - (1 + pick(enc.uid, "booked", 40)) * DAY - 7 * HOUR)
        start, end = dtm(enc.start, off), dtm(enc.end, off)
        minutes = str((enc.end - enc.start) // MINUTE)
        appointment = f"A{enc.visit_number[1:]}^SCHED"
        reason = f"{enc.type['code']}^{esc(enc.type['display'])}^SCT"
        locations = V2["locations"]["AMB"]
        sch = {
            1: appointment,
            2: appointment,
            6: "NEW^New appointment booked^SCHED",
            7: reason,
            8: V2["appointment_types"][enc.type["code"]],
            9: minutes,
            10: "MIN",
            11: f"^^{minutes}^{start}^{end}",
            25: "Booked",
        }
        segments = [
            msh("siu", dtm(booked, off), "SIU^S12^SIU_S12", control_id(enc.uid, "S12")),
            seg("SCH", sch),
            seg("TQ1", {1: "1", 7: start, 8: end}),
            pid(p, booked),
            pv1(p, enc, discharged=False),
            seg("RGS", {1: "1", 2: "A"}),
            seg("AIS", {1: "1", 2: "A", 3: reason, 4: start, 7: minutes, 8: "MIN"}),
            seg("AIL", {1: "1", 2: "A", 3: locations[pick(enc.uid, "location", len(locations))]}),
            seg("AIP", {1: "1", 2: "A", 3: provider(enc.uid), 6: start}),
        ]
        yield "SIU^S12", message(segments)

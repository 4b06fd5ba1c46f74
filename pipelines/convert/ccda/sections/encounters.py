"""Encounter activities -> Encounter, their encounter diagnoses -> Condition (encounter-diagnosis)."""

from __future__ import annotations

from typing import Any

from pipelines.convert.ccda import places
from pipelines.convert.ccda.datatypes import absent, child, children, codeable, coding
from pipelines.convert.ccda.document import Doc, Section
from pipelines.convert.ccda.header import ACT_CODE
from pipelines.convert.ccda.maps import concept
from pipelines.convert.ccda.practitioners import practitioner
from pipelines.convert.ccda.sections.common import base, reason_codes, related, set_effective, status_code
from pipelines.convert.ccda.sections.problems import condition
from pipelines.convert.ccda.sections.procedures import planned

ENCOUNTER_DIAGNOSIS = "2.16.840.1.113883.10.20.22.4.80"


def encounter(doc: Doc, enc: Any, section: Section) -> None:
    if enc.get("moodCode") not in (None, "EVN"):
        return planned(doc, enc, section)
    res = base(doc, "Encounter", enc)
    status = concept("encounter_status", status_code(enc))
    res["status"] = status or "unknown"
    code_el = child(enc, "code")
    first = coding(code_el) if code_el is not None else None
    res["class"] = first if first and first.get("system") == ACT_CODE else absent(None)
    kind = codeable(code_el, doc, text_from_display=True)
    if kind:
        res["type"] = [kind]
    res["subject"] = res.pop("subject")
    participants = []
    for p in children(enc, "performer"):
        ref = practitioner(doc, child(p, "assignedEntity"))
        if ref:
            participants.append({"individual": ref})
    if participants:
        res["participant"] = participants
    period: dict[str, Any] = {}
    if set_effective(period, "p", child(enc, "effectiveTime"), ("Period",)):
        res["period"] = period["pPeriod"]
    reasons = reason_codes(doc, enc)
    if reasons:
        res["reasonCode"] = reasons
    locations = places.entry_locations(doc, enc)
    if locations:
        res["location"] = [{"location": loc} for loc in locations]
    ref = {"reference": f"Encounter/{res['id']}"}
    diagnoses = []
    for act in related(enc, ENCOUNTER_DIAGNOSIS):
        for obs in related(act):
            if obs.tag.endswith("}observation"):
                saved, doc.encounter_ref = doc.encounter_ref, ref
                try:
                    cond = condition(doc, obs, "encounter", act)
                finally:
                    doc.encounter_ref = saved
                if cond:
                    diagnoses.append({"condition": cond})
    if diagnoses:
        res["diagnosis"] = diagnoses
    dispo = codeable(enc.find("{urn:hl7-org:sdtc}dischargeDispositionCode"), doc)
    if dispo:
        res["hospitalization"] = {"dischargeDisposition": dispo}
    doc.emit(res, enc)

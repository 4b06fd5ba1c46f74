"""PV1/PV2 -> Encounter, DG1 -> Condition, PR1 -> Procedure, AL1 -> AllergyIntolerance (the IG's maps)."""

from __future__ import annotations

from typing import Any

from pipelines.convert.hl7v2 import vocab
from pipelines.convert.hl7v2.datatypes import (
    V2_0203,
    Ctx,
    coded,
    cwe,
    cx,
    cx_key,
    dtm,
    ei,
    ei_key,
    first,
    pl,
    reps,
    translated,
    val,
    where,
    xcn,
)

V3_PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
# PV1 practitioner fields and their participation types (attender, referrer, consultant, admitter).
_PARTICIPANTS = (
    (7, "ATND", "attender"),
    (8, "REF", "referrer"),
    (9, "CON", "consultant"),
    (17, "ADM", "admitter"),
)


def encounter_key(pv1: Any, patient_key: str, unit_key: str) -> str:
    """Encounter identity: the visit number (PV1-19, with its authority), else patient + admit time."""
    visit = first(pv1, 19)
    if visit is not None and visit.code(1):
        return "visit:" + cx_key(visit)
    admit = val(pv1, 44)
    if admit:
        return f"admit:{patient_key}|{admit}"
    return f"unit:{unit_key}"


def encounter(
    ctx: Ctx, pv1: Any, pv2: Any, subject: dict[str, str], key: str, event: str | None
) -> dict[str, Any]:
    """PV1 (+PV2) -> Encounter; event (the trigger, A03 say) refines status where PV1 cannot."""
    e: dict[str, Any] = {"resourceType": "Encounter", "id": ctx.rid("Encounter", key)}
    meta = ctx.meta()
    if meta:
        e["meta"] = meta
    idents = []
    visit = cx(ctx, first(pv1, 19))
    if visit:
        visit.setdefault("type", {"coding": [{"system": V2_0203, "code": "VN"}], "text": "visit number"})
        idents.append(visit)
    alt = cx(ctx, first(pv1, 50))
    if alt:
        idents.append(alt)
    if idents:
        e["identifier"] = idents
    pclass = val(pv1, 2)
    end = dtm(ctx, val(pv1, 45), where(pv1, 45))
    status = (
        "finished"
        if end
        else vocab.code_of("event_encounter_status", event) or vocab.code_of("patient_class_status", pclass)
    )
    e["status"] = status or "unknown"
    klass = vocab.coding_of("patient_class", pclass)
    if klass:
        e["class"] = klass
    elif pclass:
        e["class"] = {"system": vocab.v2_table_uri("0004"), "code": pclass}
    else:
        # Encounter.class is required; the v3 NullFlavor says the source did not give it.
        e["class"] = {"system": "http://terminology.hl7.org/CodeSystem/v3-NullFlavor", "code": "UNK"}
    admit_type = coded(ctx, pv1, 4, "0007")
    if admit_type:
        e["type"] = [admit_type]
    service = coded(ctx, pv1, 10, "0069")
    if service:
        e["serviceType"] = service
    priority = coded(ctx, pv2, 25, "0217") if pv2 is not None else None
    if priority:
        e["priority"] = priority
    e["subject"] = subject
    participants = []
    for n, code, label in _PARTICIPANTS:
        for r in reps(pv1, n):
            ref = xcn(ctx, r)
            if ref:
                participants.append(
                    {
                        "type": [{"coding": [{"system": V3_PARTICIPATION, "code": code, "display": label}]}],
                        "individual": ref,
                    }
                )
    if participants:
        e["participant"] = participants
    start = dtm(ctx, val(pv1, 44), where(pv1, 44))
    period = {k: v for k, v in (("start", start), ("end", end)) if v}
    if period:
        e["period"] = period
    if pv2 is not None:
        reason = coded(ctx, pv2, 3)
        if reason:
            e["reasonCode"] = [reason]
    hosp = _hospitalization(ctx, pv1)
    if hosp:
        e["hospitalization"] = hosp
    locations = []
    for n, status_ in (
        (3, "planned" if pclass == "P" else "active"),
        (6, "completed"),
        (11, "active"),
        (42, "reserved"),
    ):
        ref = pl(ctx, first(pv1, n))
        if ref:
            locations.append({"location": ref, "status": status_})
    if locations:
        e["location"] = locations
    return e


def _hospitalization(ctx: Ctx, pv1: Any) -> dict[str, Any]:
    h: dict[str, Any] = {}
    pre = cx(ctx, first(pv1, 5))
    if pre:
        h["preAdmissionIdentifier"] = pre
    for n, key, table in ((14, "admitSource", "0023"), (13, "reAdmission", "0092")):
        cc = coded(ctx, pv1, n, table)
        if cc:
            h[key] = cc
    diet = coded(ctx, pv1, 38, "0114")
    if diet:
        h["dietPreference"] = [diet]
    courtesy = coded(ctx, pv1, 16, "0099")
    if courtesy:
        h["specialCourtesy"] = [courtesy]
    arrangement = [cc for cc in (cwe(ctx, r, "0009") for r in reps(pv1, 15)) if cc]
    if arrangement:
        h["specialArrangement"] = arrangement
    dest = pl(ctx, first(pv1, 37))
    if dest:
        h["destination"] = dest
    disposition = coded(ctx, pv1, 36, "0112")
    if disposition and disposition.get("coding", [{}])[0].get("system") == vocab.v2_table_uri("0112"):
        # Only a table 0112 code is translated: a sender's local "01" need not mean home.
        mapped = vocab.coding_of("discharge_disposition", val(pv1, 36))
        disposition = translated(disposition, "0112", mapped)
    if disposition:
        h["dischargeDisposition"] = disposition
    return h


def _code_with_text(ctx: Ctx, seg: Any, code_field: int, text_field: int) -> dict[str, Any] | None:
    """A coded field plus its companion description field (DG1-3/-4, PR1-3/-4) as one CodeableConcept."""
    text = val(seg, text_field)
    code = coded(ctx, seg, code_field) or ({"text": text} if text else None)
    if code is not None and text and "text" not in code:
        code["text"] = text
    return code


def condition(ctx: Ctx, dg1: Any, subject: dict, enc: dict | None, parent_key: str) -> dict[str, Any] | None:
    """DG1 -> Condition (an encounter diagnosis)."""
    code = _code_with_text(ctx, dg1, 3, 4)
    if code is None:
        return None
    own = ei_key(first(dg1, 20))
    key = f"{parent_key}|dg1:" + (own or f"{val(dg1, 1) or ''}|{_code_key(code)}")
    c: dict[str, Any] = {"resourceType": "Condition", "id": ctx.rid("Condition", key)}
    meta = ctx.meta()
    if meta:
        c["meta"] = meta
    ident = ei(ctx, first(dg1, 20))
    if ident:
        c["identifier"] = [ident]
    ver = "entered-in-error" if val(dg1, 21) == "D" else "confirmed"
    c["verificationStatus"] = {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": ver}]
    }
    category = [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-category",
                    "code": "encounter-diagnosis",
                }
            ]
        }
    ]
    dtype = coded(ctx, dg1, 6, "0052")
    if dtype:
        category.append(dtype)
    c["category"] = category
    c["code"] = code
    c["subject"] = subject
    if enc:
        c["encounter"] = enc
    onset = dtm(ctx, val(dg1, 5), where(dg1, 5))
    if onset:
        c["onsetDateTime"] = onset
    recorded = dtm(ctx, val(dg1, 19), where(dg1, 19))
    if recorded:
        c["recordedDate"] = recorded
    asserter = xcn(ctx, first(dg1, 16))
    if asserter:
        c["asserter"] = asserter
    return c


def procedure(ctx: Ctx, pr1: Any, subject: dict, enc: dict | None, parent_key: str) -> dict[str, Any] | None:
    """PR1 -> Procedure (status completed: PR1 reports procedures done)."""
    code = _code_with_text(ctx, pr1, 3, 4)
    if code is None:
        return None
    own = ei_key(first(pr1, 19))
    key = f"{parent_key}|pr1:" + (own or f"{val(pr1, 1) or ''}|{_code_key(code)}|{val(pr1, 5) or ''}")
    p: dict[str, Any] = {"resourceType": "Procedure", "id": ctx.rid("Procedure", key)}
    meta = ctx.meta()
    if meta:
        p["meta"] = meta
    ident = ei(ctx, first(pr1, 19))
    if ident:
        p["identifier"] = [ident]
    p["status"] = "completed"
    category = coded(ctx, pr1, 6, "0230")
    if category:
        p["category"] = category
    p["code"] = code
    p["subject"] = subject
    if enc:
        p["encounter"] = enc
    when = dtm(ctx, val(pr1, 5), where(pr1, 5))
    if when:
        p["performedDateTime"] = when
    performers = []
    for n, fn in ((8, "88189002"), (11, "304292004"), (12, None)):
        for r in reps(pr1, n):
            ref = xcn(ctx, r)
            if ref:
                perf: dict[str, Any] = {"actor": ref}
                if fn:
                    perf = {
                        "function": {"coding": [{"system": "http://snomed.info/sct", "code": fn}]},
                        **perf,
                    }
                performers.append(perf)
    if performers:
        p["performer"] = performers
    loc = pl(ctx, first(pr1, 23))
    if loc:
        p["location"] = loc
    reason = coded(ctx, pr1, 15)
    if reason:
        p["reasonCode"] = [reason]
    return p


def allergy(ctx: Ctx, al1: Any, subject: dict, patient_key: str) -> dict[str, Any] | None:
    """AL1 -> AllergyIntolerance (active; category and criticality by the IG's maps)."""
    code = coded(ctx, al1, 3)
    if code is None:
        return None
    key = f"{patient_key}|al1:{_code_key(code)}"
    a: dict[str, Any] = {"resourceType": "AllergyIntolerance", "id": ctx.rid("AllergyIntolerance", key)}
    meta = ctx.meta()
    if meta:
        a["meta"] = meta
    a["clinicalStatus"] = {
        "coding": [
            {"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active"}
        ]
    }
    category = vocab.code_of("allergen_category", val(al1, 2))
    if category:
        a["category"] = [category]
    criticality = vocab.code_of("allergy_criticality", val(al1, 4))
    if criticality:
        a["criticality"] = criticality
    a["code"] = code
    a["patient"] = subject
    onset = dtm(ctx, val(al1, 6), where(al1, 6))
    if onset:
        a["onsetDateTime"] = onset
    reaction: dict[str, Any] = {}
    manifestations = [{"text": r.get(1)} for r in reps(al1, 5) if r.get(1)]
    if manifestations:
        reaction["manifestation"] = manifestations
        severity = vocab.code_of("allergy_reaction_severity", val(al1, 4))
        if severity:
            reaction["severity"] = severity
        a["reaction"] = [reaction]
    return a


def _code_key(cc: dict[str, Any]) -> str:
    coding = (cc.get("coding") or [{}])[0]
    return f"{coding.get('system', '')}|{coding.get('code', '')}" if coding else f"text:{cc.get('text', '')}"

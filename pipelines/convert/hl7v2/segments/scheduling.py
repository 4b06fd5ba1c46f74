"""SCH/AIS/AIG/AIL/AIP -> Appointment, FT1 -> ChargeItem, TXA (+OBX) -> DocumentReference (the IG's maps)."""

from __future__ import annotations

import base64
from typing import Any

from pipelines.convert.hl7v2 import vocab
from pipelines.convert.hl7v2.datatypes import (
    Ctx,
    coded,
    cwe_all,
    decimal,
    dtm,
    ei,
    ei_key,
    first,
    pl,
    reps,
    text,
    val,
    where,
    xcn,
)
from pipelines.convert.hl7v2.segments.results import notes
from pipelines.convert.hl7v2.segments.values import VALUE_ATTACHMENT, value

# Appointment status by SIU trigger; S12-S14 defer to SCH-25 (filler status) when it is sent.
EVENT_STATUS = {
    "S12": "booked",
    "S13": "booked",
    "S14": "booked",
    "S15": "cancelled",
    "S17": "entered-in-error",
    "S26": "noshow",
}


def appointment_key(sch: Any, unit_key: str) -> str:
    for n in (2, 1):
        key = ei_key(first(sch, n))
        if key:
            return f"{'filler' if n == 2 else 'placer'}:{key}"
    return f"unit:{unit_key}"


def appointment(
    ctx: Ctx,
    sch: Any,
    key: str,
    event: str,
    subject: dict | None,
    resources: list[tuple[str, Any]],
    ntes: list[Any],
    tq1: Any = None,
) -> dict[str, Any]:
    """SCH + its resource segments (AIS service, AIG general, AIL location, AIP personnel) -> Appointment;
    the start and end from TQ1-7/8 where sent (v2.5 deprecates SCH-11 for TQ1), else SCH-11."""
    a: dict[str, Any] = {"resourceType": "Appointment", "id": ctx.rid("Appointment", key)}
    meta = ctx.meta()
    if meta:
        a["meta"] = meta
    idents = [i for i in (ei(ctx, first(sch, 1)), ei(ctx, first(sch, 2))) if i]
    if idents:
        a["identifier"] = idents
    status = EVENT_STATUS.get(event, "booked")
    if event in ("S12", "S13", "S14"):
        filler = first(sch, 25)
        status = vocab.code_of("appointment_filler_status", filler.code(1) if filler else None) or status
    a["status"] = status
    if status == "cancelled":
        reason = coded(ctx, sch, 6)
        if reason:
            a["cancelationReason"] = reason
    service_types = [
        cc for seg_name, seg in resources if seg_name == "AIS" for cc in [coded(ctx, seg, 3)] if cc
    ]
    if service_types:
        a["serviceType"] = service_types
    appt_type = coded(ctx, sch, 8, "0277")
    if appt_type:
        a["appointmentType"] = appt_type
    reason = coded(ctx, sch, 7)
    if reason:
        a["reasonCode"] = [reason]
    start = (
        (dtm(ctx, val(tq1, 7), where(tq1, 7)) if tq1 is not None else None)
        or dtm(ctx, val(sch, 11, 4), where(sch, 11))
        or next(
            (dtm(ctx, val(seg, 4), where(seg, 4)) for n, seg in resources if n == "AIS" and val(seg, 4)), None
        )
    )
    end = (dtm(ctx, val(tq1, 8), where(tq1, 8)) if tq1 is not None else None) or dtm(
        ctx, val(sch, 11, 5), where(sch, 11)
    )
    if start:
        a["start"] = start
    if end:
        a["end"] = end
    minutes = val(sch, 9)
    if minutes and minutes.isdigit() and (val(sch, 10) or "MIN").upper().startswith("MIN"):
        a["minutesDuration"] = int(minutes)
    note = notes(ctx, ntes)
    if note:
        a["comment"] = "\n".join(n["text"] for n in note)
    participants: list[dict[str, Any]] = []
    if subject:
        participants.append({"actor": subject, "status": "accepted"})
    for name, seg in resources:
        actor = None
        if name == "AIP":
            actor = xcn(ctx, first(seg, 3))
        elif name == "AIL":
            actor = pl(ctx, first(seg, 3))
        elif name == "AIG":
            cc = coded(ctx, seg, 3)
            if cc:
                participants.append({"type": [cc], "status": "accepted"})
            continue
        if actor:
            part: dict[str, Any] = {"actor": actor, "status": "accepted"}
            role = coded(ctx, seg, 4)
            if role:
                part = {"type": [role], **part}
            participants.append(part)
    a["participant"] = participants or [{"status": "needs-action"}]
    return a


def charge_item(
    ctx: Ctx, ft1: Any, subject: dict, enc: dict | None, fallback: str
) -> tuple[dict, dict | None]:
    """FT1 -> ChargeItem (code FT1-7, diagnoses FT1-19 as reason) and its procedure (FT1-25) as the
    service performed; returns (charge item, procedure or None)."""
    tid = val(ft1, 2) or val(ft1, 3)
    key = f"ft1:{val(ft1, 3) or ''}|{tid}" if tid else f"unit:{fallback}"
    c: dict[str, Any] = {"resourceType": "ChargeItem", "id": ctx.rid("ChargeItem", key)}
    meta = ctx.meta()
    if meta:
        c["meta"] = meta
    if tid:
        c["identifier"] = [{"value": tid}]
    c["status"] = "billable"
    c["code"] = coded(ctx, ft1, 7, "0132") or {"text": val(ft1, 8) or "unknown"}
    c["subject"] = subject
    if enc:
        c["context"] = enc
    when = dtm(ctx, val(ft1, 4), where(ft1, 4))
    end = dtm(ctx, val(ft1, 4, 2), where(ft1, 4))
    if when and end:
        c["occurrencePeriod"] = {"start": when, "end": end}
    elif when:
        c["occurrenceDateTime"] = when
    performers = [(20, "PRF"), (21, "ORD")]
    perf = [
        {
            "function": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": code}
                ]
            },
            "actor": ref,
        }
        for n, code in performers
        for ref in [xcn(ctx, first(ft1, n))]
        if ref
    ]
    if perf:
        c["performer"] = perf
    qty = decimal(val(ft1, 10))
    if qty is not None:
        c["quantity"] = {"value": qty}
    price = decimal(val(ft1, 11))
    if price is not None:
        c["priceOverride"] = {"value": price, **({"currency": val(ft1, 11, 2)} if val(ft1, 11, 2) else {})}
    entered = dtm(ctx, val(ft1, 5), where(ft1, 5))
    if entered:
        c["enteredDate"] = entered
    reasons = cwe_all(ctx, ft1, 19)
    if reasons:
        c["reason"] = reasons
    proc = None
    proc_code = coded(ctx, ft1, 25)
    if proc_code:
        proc = {"resourceType": "Procedure", "id": ctx.rid("Procedure", key + "|ft1-25")}
        if meta:
            proc["meta"] = meta
        # Procedure has no modifier element: FT1-26 modifiers ride in a documented ehrlift extension.
        modifiers = cwe_all(ctx, ft1, 26, "0340")
        if modifiers:
            proc["extension"] = [{"url": MODIFIER_EXT, "valueCodeableConcept": m} for m in modifiers]
        proc.update(status="completed", code=proc_code, subject=subject)
        if enc:
            proc["encounter"] = enc
        if when:
            proc["performedDateTime"] = when
        c["service"] = [{"reference": f"Procedure/{proc['id']}"}]
    return c, proc


MODIFIER_EXT = "urn:ehrlift:hl7v2:extension:procedure-modifier"
_DOC_STATUS = {
    "AU": "final",
    "LA": "final",
    "DO": "final",
    "IP": "preliminary",
    "IN": "preliminary",
    "PA": "preliminary",
    "DI": "preliminary",
}


def document_reference(
    ctx: Ctx, txa: Any, obxs: list[Any], subject: dict, enc: dict | None, unit_key: str
) -> dict[str, Any]:
    """TXA (+OBX content) -> DocumentReference; TX/FT lines become a text/plain attachment."""
    own = ei_key(first(txa, 12))
    d: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "id": ctx.rid("DocumentReference", f"doc:{own}" if own else f"unit:{unit_key}"),
    }
    meta = ctx.meta()
    if meta:
        d["meta"] = meta
    master = ei(ctx, first(txa, 12))
    if master:
        d["masterIdentifier"] = master
    placer = [i for i in (ei(ctx, r) for r in reps(txa, 14)) if i]
    if placer:
        d["identifier"] = placer
    d["status"] = "entered-in-error" if val(txa, 17) == "DE" else "current"
    doc_status = _DOC_STATUS.get(val(txa, 17) or "")
    if doc_status:
        d["docStatus"] = doc_status
    kind = coded(ctx, txa, 2, "0270")
    if kind:
        d["type"] = kind
    d["subject"] = subject
    authors = [x for x in (xcn(ctx, r) for r in reps(txa, 9)) if x]
    if authors:
        d["author"] = authors
    authenticator = xcn(ctx, first(txa, 10))
    if authenticator:
        d["authenticator"] = authenticator
    parent = ei_key(first(txa, 13))
    if parent:
        d["relatesTo"] = [
            {
                "code": "replaces",
                "target": {"reference": f"DocumentReference/{ctx.rid('DocumentReference', 'doc:' + parent)}"},
            }
        ]
    confidentiality = val(txa, 18)
    if confidentiality:
        d["securityLabel"] = [{"coding": [{"system": vocab.v2_table_uri("0272"), "code": confidentiality}]}]
    d["content"] = _content(ctx, obxs) or [{"attachment": {"contentType": "text/plain"}}]
    context: dict[str, Any] = {}
    if enc:
        context["encounter"] = [enc]
    when = dtm(ctx, val(txa, 4), where(txa, 4))
    if when:
        context["period"] = {"start": when}
    if context:
        d["context"] = context
    return d


def _content(ctx: Ctx, obxs: list[Any]) -> list[dict[str, Any]]:
    lines: list[str] = []
    out: list[dict[str, Any]] = []
    for obx in obxs:
        v = value(ctx, obx)
        if "valueString" in v:
            lines.append(v["valueString"])
        for ext in v.get("extension", []):
            if ext.get("url") == VALUE_ATTACHMENT:
                out.append({"attachment": ext["valueAttachment"]})
        if "valueCodeableConcept" in v:
            lines.append(v["valueCodeableConcept"].get("text") or text(obx, 5) or "")
    if lines:
        data = base64.b64encode("\n".join(lines).encode("utf-8")).decode()
        out.insert(0, {"attachment": {"contentType": "text/plain; charset=utf-8", "data": data}})
    return out

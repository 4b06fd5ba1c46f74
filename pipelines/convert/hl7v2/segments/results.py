"""ORC/OBR -> ServiceRequest and DiagnosticReport, OBX -> Observation, NTE -> notes, SPM -> Specimen."""

from __future__ import annotations

from typing import Any

from pipelines.convert.hl7v2 import vocab
from pipelines.convert.hl7v2.datatypes import (
    V2_0203,
    Ctx,
    coded,
    cwe,
    cwe_all,
    dtm,
    ei,
    ei_key,
    first,
    reps,
    text,
    translated,
    val,
    where,
    xcn,
    xon,
)
from pipelines.convert.hl7v2.segments.values import reference_range, value

OBS_STATUS = "observation_status"
ANALYSIS_TIME = "http://hl7.org/fhir/StructureDefinition/observation-analysis-date-time"


def order_key(ctx: Ctx, orc: Any, obr: Any, fallback: str) -> str:
    """Order identity: the filler order number, else the placer's, from OBR or else ORC."""
    for n, kind in ((3, "filler"), (2, "placer")):
        for seg in (obr, orc):
            key = ei_key(first(seg, n)) if seg is not None else None
            if key:
                return f"{kind}:{key}"
    return f"unit:{ctx.unit_key}|{fallback}"


def order_identifiers(ctx: Ctx, orc: Any, obr: Any) -> list[dict[str, Any]]:
    out = []
    for n, code in ((2, "PLAC"), (3, "FILL")):
        v = (first(obr, n) if obr is not None else None) or (first(orc, n) if orc is not None else None)
        ident = ei(ctx, v)
        if ident:
            ident = {"type": {"coding": [{"system": V2_0203, "code": code}]}, **ident}
            out.append(ident)
    return out


def notes(ctx: Ctx, ntes: list[Any]) -> list[dict[str, Any]]:
    """NTE -> Annotation (NTE-3 lines joined; NTE-5 the author where sent)."""
    out = []
    for nte in ntes:
        body = text(nte, 3)
        if not body:
            continue
        note: dict[str, Any] = {}
        author = xcn(ctx, first(nte, 5))
        if author:
            note["authorReference"] = author
        when = dtm(ctx, val(nte, 6), where(nte, 6))
        if when:
            note["time"] = when
        note["text"] = body
        out.append(note)
    return out


def service_request(
    ctx: Ctx, orc: Any, obr: Any, key: str, subject: dict, enc: dict | None, ntes: list[Any] = ()
) -> dict[str, Any]:
    """ORC (+OBR) -> ServiceRequest; status from ORC-5, else ORC-1, by the IG's maps."""
    s: dict[str, Any] = {"resourceType": "ServiceRequest", "id": ctx.rid("ServiceRequest", key)}
    meta = ctx.meta()
    if meta:
        s["meta"] = meta
    idents = order_identifiers(ctx, orc, obr)
    if idents:
        s["identifier"] = idents
    status = vocab.code_of("order_status", val(orc, 5)) or vocab.code_of("order_control_status", val(orc, 1))
    s["status"] = status or "unknown"
    s["intent"] = "reflex-order" if val(obr, 11) == "G" else "order"
    priority = _priority(orc, obr)
    if priority:
        s["priority"] = priority
    code = coded(ctx, obr, 4) if obr is not None else None
    if code:
        s["code"] = code
    s["subject"] = subject
    if enc:
        s["encounter"] = enc
    when = dtm(ctx, val(orc, 9), where(orc, 9)) if orc is not None else None
    if when:
        s["authoredOn"] = when
    requester = xcn(ctx, first(orc, 12)) if orc is not None else None
    requester = requester or (xcn(ctx, first(obr, 16)) if obr is not None else None)
    if requester:
        s["requester"] = requester
    reasons = cwe_all(ctx, obr, 31) if obr is not None else []
    if reasons:
        s["reasonCode"] = reasons
    note = notes(ctx, list(ntes))
    if note:
        s["note"] = note
    return s


def _priority(orc: Any, obr: Any) -> str | None:
    # ORC-7/OBR-27 TQ component 6 carries the priority (S stat, A asap, R routine).
    for seg, n in ((orc, 7), (obr, 27)):
        code = val(seg, n, 6) if seg is not None else None
        if code:
            return {"S": "stat", "A": "asap", "R": "routine", "P": "urgent", "C": "urgent"}.get(code)
    return None


def diagnostic_report(
    ctx: Ctx,
    orc: Any,
    obr: Any,
    key: str,
    subject: dict,
    enc: dict | None,
    results: list[dict],
    specimens: list[dict],
    request: dict | None,
) -> dict[str, Any]:
    """OBR -> DiagnosticReport (status OBR-25 by the IG's map; unknown where OBR-25 is empty)."""
    d: dict[str, Any] = {"resourceType": "DiagnosticReport", "id": ctx.rid("DiagnosticReport", key)}
    meta = ctx.meta()
    if meta:
        d["meta"] = meta
    idents = order_identifiers(ctx, orc, obr)
    if idents:
        d["identifier"] = idents
    if request:
        d["basedOn"] = [request]
    d["status"] = vocab.code_of("result_status", val(obr, 25)) or "unknown"
    section = val(obr, 24)
    if section:
        d["category"] = [{"coding": [{"system": vocab.v2_table_uri("0074"), "code": section}]}]
    d["code"] = coded(ctx, obr, 4) or {"text": "unknown"}
    d["subject"] = subject
    if enc:
        d["encounter"] = enc
    start = dtm(ctx, val(obr, 7), where(obr, 7))
    end = dtm(ctx, val(obr, 8), where(obr, 8))
    if start and end:
        d["effectivePeriod"] = {"start": start, "end": end}
    elif start:
        d["effectiveDateTime"] = start
    issued = reported(ctx, obr)
    if issued:
        d["issued"] = issued
    interpreters = [x for x in (xcn(ctx, r.sub(1)) for r in reps(obr, 32)) if x]
    if interpreters:
        d["resultsInterpreter"] = interpreters
    if specimens:
        d["specimen"] = specimens
    if results:
        d["result"] = results
    return d


def reported(ctx: Ctx, obr: Any) -> str | None:
    """OBR-22 (results reported or status changed) as an instant: the time of this version of the
    result, which the merge uses to order versions sent under one MSH-7. A date alone is no instant."""
    if obr is None:
        return None
    full = dtm(ctx, val(obr, 22), where(obr, 22))
    return full if full and "T" in full else None


def observation_key(order: str, obx: Any) -> str:
    code = first(obx, 3)
    code_key = (code.code(1) or code.code(4) or code.get(2)) if code else None
    return f"{order}|obx:{code_key or ''}|{val(obx, 4) or ''}|{val(obx, 1) or ''}"


def observation(
    ctx: Ctx,
    obx: Any,
    key: str,
    subject: dict,
    enc: dict | None,
    obr: Any,
    ntes: list[Any],
    based_on: dict | None = None,
) -> dict[str, Any]:
    """OBX -> Observation: status OBX-11, code OBX-3, value by OBX-2, effective OBX-14 else OBR-7."""
    o: dict[str, Any] = {"resourceType": "Observation", "id": ctx.rid("Observation", key)}
    meta = ctx.meta()
    if meta:
        o["meta"] = meta
    ident = ei(ctx, first(obx, 21))
    if ident:
        o["identifier"] = [{"type": {"coding": [{"system": V2_0203, "code": "FILL"}]}, **ident}]
    if based_on:
        o["basedOn"] = [based_on]
    status_code = val(obx, 11)
    o["status"] = vocab.code_of(OBS_STATUS, status_code) or "unknown"
    o["code"] = coded(ctx, obx, 3) or {"text": "unknown"}
    o["subject"] = subject
    if enc:
        o["encounter"] = enc
    effective = dtm(ctx, val(obx, 14), where(obx, 14)) or (
        dtm(ctx, val(obr, 7), where(obr, 7)) if obr is not None else None
    )
    if effective:
        o["effectiveDateTime"] = effective
    # Observation.issued is "when this version was made available", what OBR-22 records for the group.
    issued = reported(ctx, obr)
    if issued:
        o["issued"] = issued
    performers = [x for x in (xcn(ctx, r) for r in reps(obx, 16)) if x]
    performers += [x for x in (xon(ctx, r) for r in reps(obx, 23)) if x]
    if performers:
        o["performer"] = performers
    o.update(value(ctx, obx))
    if not any(k.startswith("value") for k in o) and "extension" not in o:
        reason = {"X": "not-performed", "N": "asked-declined"}.get(status_code or "")
        if reason:
            o["dataAbsentReason"] = {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": reason}
                ]
            }
    analysed = dtm(ctx, val(obx, 19), where(obx, 19))
    if analysed:  # OBX-19 by the v2-to-FHIR IG's OBX map
        o.setdefault("extension", []).append({"url": ANALYSIS_TIME, "valueDateTime": analysed})
    interpretation = []
    for r in reps(obx, 8):
        cc = translated(cwe(ctx, r, "0078"), "0078", vocab.coding_of("interpretation", r.code(1)))
        if cc:
            interpretation.append(cc)
    if interpretation:
        o["interpretation"] = interpretation
    note = notes(ctx, ntes)
    if note:
        o["note"] = note
    body_site = coded(ctx, obx, 20)
    if body_site:
        o["bodySite"] = body_site
    method = coded(ctx, obx, 17)
    if method:
        o["method"] = method
    rr = reference_range(ctx, obx)
    if rr:
        o["referenceRange"] = rr
    return o


def specimen(ctx: Ctx, spm: Any, order: str, subject: dict) -> dict[str, Any]:
    """SPM -> Specimen (identifiers SPM-2, type SPM-4, collection SPM-17/7/8, receivedTime SPM-18)."""
    ids: list[dict[str, Any]] = []
    id_field = first(spm, 2)
    if id_field is not None:
        for i, code in ((1, "PLAC"), (2, "FILL")):
            sub = id_field.sub(i)
            ident = ei(ctx, sub)
            if ident:
                ids.append({"type": {"coding": [{"system": V2_0203, "code": code}]}, **ident})
    own = ei_key(id_field.sub(2)) or ei_key(id_field.sub(1)) if id_field is not None else None
    key = f"specimen:{own}" if own else f"{order}|spm:{val(spm, 1) or ''}"
    s: dict[str, Any] = {"resourceType": "Specimen", "id": ctx.rid("Specimen", key)}
    meta = ctx.meta()
    if meta:
        s["meta"] = meta
    if ids:
        s["identifier"] = ids
    kind = coded(ctx, spm, 4, "0487")
    if kind:
        s["type"] = kind
    s["subject"] = subject
    received = dtm(ctx, val(spm, 18), where(spm, 18))
    if received:
        s["receivedTime"] = received
    collection: dict[str, Any] = {}
    window = first(spm, 17)
    if window is not None:
        start = dtm(ctx, window.sub(1).get(1), where(spm, 17))
        end = dtm(ctx, window.sub(2).get(1), where(spm, 17))
        if start and end:
            collection["collectedPeriod"] = {"start": start, "end": end}
        elif start:
            collection["collectedDateTime"] = start
    for n, k in ((7, "method"), (8, "bodySite")):
        cc = coded(ctx, spm, n)
        if cc:
            collection[k] = cc
    if collection:
        s["collection"] = collection
    condition = cwe_all(ctx, spm, 24, "0493")
    if condition:
        s["condition"] = condition
    return s

"""TQ1 -> ServiceRequest occurrence and MedicationRequest dosage timing, after the IG's TQ1[ServiceRequest],
TQ1[MedicationRequest] and RPT[Timing] maps (repeat codes of table 0335 gain a computable frequency)."""

from __future__ import annotations

import csv
import re
from functools import cache
from typing import Any

from pipelines.convert.hl7v2 import vocab
from pipelines.convert.hl7v2.datatypes import (
    Comp,
    Ctx,
    cwe,
    decimal,
    dtm,
    first,
    reps,
    text,
    time_of,
    val,
    where,
)
from pipelines.convert.hl7v2.segments.values import UCUM, quantity

# v2 time units (CQ units, RPT-6) that are UCUM units of time, as FHIR's Timing units.
_UNITS = {"s": "s", "min": "min", "h": "h", "d": "d", "wk": "wk", "mo": "mo", "a": "a"}
_QN = re.compile(r"Q(\d+)([SMHDWL])")
_QN_UNITS = {"S": "s", "M": "min", "H": "h", "D": "d", "W": "wk", "L": "mo"}


@cache
def _patterns() -> dict[str, dict[str, str]]:
    with (vocab.MAPS / "repeat_patterns.csv").open(encoding="utf-8", newline="") as f:
        return {row["code"]: row for row in csv.DictReader(f)}


def _cq(ctx: Ctx, v: Comp | None) -> dict[str, Any] | None:
    """CQ (quantity^units) -> Quantity; units UCUM when coded or spelled so."""
    if v is None:
        return None
    units = v.sub(2)
    code, label = units.code(1), units.get(2) or units.code(1)
    unit: dict[str, Any] = {}
    if label:
        unit["unit"] = label
    system = vocab.system_uri(units.code(3), ctx.source_system)
    if code and (system == UCUM or (system is None and vocab.is_ucum_like(code))):
        unit.update(system=UCUM, code=code)
    elif code and system:
        unit.update(system=system, code=code)
    return quantity(v.code(1), unit)


def _repeat_code(ctx: Ctx, rpt: Comp) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """RPT -> (Timing.code, Timing.repeat parts)."""
    code = rpt.sub(1).code(1)
    concept = cwe(ctx, rpt.sub(1), "0335") if code else None
    repeat: dict[str, Any] = {}
    upper = (code or "").upper()
    known = _patterns().get(upper)
    m = _QN.fullmatch(upper)
    if known:
        repeat["frequency"] = int(known["frequency"])
        repeat["period"] = decimal(known["period"])
        repeat["periodUnit"] = known["period_unit"]
        if known["when"]:
            repeat["when"] = [known["when"]]
    elif m:
        repeat.update(frequency=1, period=decimal(m.group(1)), periodUnit=_QN_UNITS[m.group(2)])
    period, unit = decimal(rpt.code(5)), _UNITS.get(rpt.code(6) or "")
    if period is not None and unit and "period" not in repeat:
        repeat.update(period=period, periodUnit=unit)
    return concept, repeat


def timing(ctx: Ctx, tq1: Any) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """One TQ1 -> (a Timing, the request-level parts: quantity, priority, note, as-needed)."""
    t: dict[str, Any] = {}
    repeat: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    rpts = reps(tq1, 3)
    if rpts:
        code, rep = _repeat_code(ctx, rpts[0])
        if code:
            t["code"] = code
            if (rpts[0].sub(1).code(1) or "").upper() == "PRN":
                extra["asNeeded"] = True
        repeat.update(rep)
    times = [x for x in (time_of(r.get(1)) for r in reps(tq1, 4)) if x]
    if times:
        repeat["timeOfDay"] = times
    start = dtm(ctx, val(tq1, 7), where(tq1, 7))
    end = dtm(ctx, val(tq1, 8), where(tq1, 8))
    bounds = {k: v for k, v in (("start", start), ("end", end)) if v}
    if bounds:
        repeat["boundsPeriod"] = bounds
    else:
        span = _cq(ctx, first(tq1, 6))
        if span and span.get("code") in _UNITS:
            repeat["boundsDuration"] = span
    duration = first(tq1, 13)
    if duration is not None and decimal(duration.code(1)) is not None:
        unit = _UNITS.get(duration.sub(2).code(1) or "")
        if unit:
            repeat.update(duration=decimal(duration.code(1)), durationUnit=unit)
    total = val(tq1, 14)
    if total and total.isdigit() and int(total) > 0:
        repeat["countMax"] = int(total)
    if repeat:
        t["repeat"] = {k: repeat[k] for k in _REPEAT_ORDER if k in repeat}
    amount = _cq(ctx, first(tq1, 2))
    if amount:
        extra["quantity"] = amount
    priority = vocab.code_of("extended_priority", val(tq1, 9))
    if priority:
        extra["priority"] = priority
    for n, key in ((10, "condition"), (11, "text")):
        body = text(tq1, n)
        if body:
            extra[key] = body
    return (t or None), extra


def tq_timing(ctx: Ctx, v: Comp | None, at: str) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """A v2.3-style TQ (ORC-7, OBR-27, RXE-1) -> (a Timing, the request-level parts), as for TQ1:
    TQ-1 quantity, TQ-2 interval (repeat pattern & explicit times), TQ-4/5 start and end, TQ-6 priority."""
    if v is None:
        return None, {}
    t: dict[str, Any] = {}
    repeat: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    interval = v.sub(2)
    code = interval.code(1)
    if code:
        concept, rep = _repeat_code(ctx, Comp([code]))
        if concept:
            t["code"] = concept
        if code.upper() == "PRN":
            extra["asNeeded"] = True
        repeat.update(rep)
    times = [x for x in (time_of(p.strip()) for p in (interval.get(2) or "").split(",") if p.strip()) if x]
    if times:
        repeat["timeOfDay"] = times
    bounds = {k: x for k, x in (("start", dtm(ctx, v.get(4), at)), ("end", dtm(ctx, v.get(5), at))) if x}
    if bounds:
        repeat["boundsPeriod"] = bounds
    if repeat:
        t["repeat"] = {k: repeat[k] for k in _REPEAT_ORDER if k in repeat}
    amount = v.sub(1)
    label = amount.get(3) or amount.code(2)
    unit_system = vocab.system_uri(amount.code(4), ctx.source_system)
    unit: dict[str, Any] = {"unit": label} if label else {}
    if amount.code(2) and (
        unit_system == UCUM or (unit_system is None and vocab.is_ucum_like(amount.code(2)))
    ):
        unit.update(system=UCUM, code=amount.code(2))
    qty = quantity(amount.code(1), unit)
    if qty and (unit or amount.code(1) != "1"):  # "1" with no unit is TQ's default, not a statement
        extra["quantity"] = qty
    priority = vocab.code_of("extended_priority", v.code(6))
    if priority:
        extra["priority"] = priority
    return (t or None), extra


_REPEAT_ORDER = (
    "boundsDuration",
    "boundsPeriod",
    "countMax",
    "duration",
    "durationUnit",
    "frequency",
    "period",
    "periodUnit",
    "timeOfDay",
    "when",
)


def apply_to_service_request(
    ctx: Ctx, sr: dict[str, Any], tq1s: list[Any], legacy: tuple[dict | None, dict] | None = None
) -> None:
    """The order's first TQ1 (else its ORC-7/OBR-27 TQ) -> occurrenceTiming, quantityQuantity, priority
    and a note (TQ1-10/11)."""
    t, extra = timing(ctx, tq1s[0]) if tq1s else (legacy or (None, {}))
    if t:
        sr["occurrenceTiming"] = t
    if "quantity" in extra:
        sr["quantityQuantity"] = extra["quantity"]
    if "priority" in extra:
        sr["priority"] = extra["priority"]
    if extra.get("asNeeded"):
        sr["asNeededBoolean"] = True
    notes = [extra[k] for k in ("condition", "text") if k in extra]
    if notes:
        sr.setdefault("note", []).extend({"text": n} for n in notes)
    _reorder(sr, _SR_ORDER)


def apply_to_medication_request(
    ctx: Ctx, mr: dict[str, Any], tq1s: list[Any], legacy: tuple[dict | None, dict] | None = None
) -> None:
    """Each TQ1 (else the ORC-7/RXE-1 TQ) -> a dosageInstruction's timing (the first shares the RXE/RXO
    dose), priority from the first; TQ1-10 an additional instruction, TQ1-11 the dosage text."""
    dosages = mr.setdefault("dosageInstruction", [{}])
    timings = [timing(ctx, tq1) for tq1 in tq1s] if tq1s else [legacy or (None, {})]
    for i, (t, extra) in enumerate(timings):
        if i >= len(dosages):
            dosages.append({})
        d = dosages[i]
        if len(timings) > 1:
            d["sequence"] = i + 1
        if "text" in extra and "text" not in d:
            d["text"] = extra["text"]
        if "condition" in extra:
            d["additionalInstruction"] = [{"text": extra["condition"]}]
        if t:
            d["timing"] = t
        if extra.get("asNeeded"):
            d["asNeededBoolean"] = True
        if "quantity" in extra and "doseAndRate" not in d:
            d["doseAndRate"] = [{"doseQuantity": extra["quantity"]}]
        if i == 0 and "priority" in extra:
            mr["priority"] = extra["priority"]
        dosages[i] = {k: d[k] for k in _DOSAGE_ORDER if k in d}
    if dosages == [{}]:
        del mr["dosageInstruction"]
    _reorder(mr, _MR_ORDER)


_DOSAGE_ORDER = (
    "sequence",
    "text",
    "additionalInstruction",
    "timing",
    "asNeededBoolean",
    "site",
    "route",
    "doseAndRate",
)
_SR_ORDER = (
    "resourceType",
    "id",
    "meta",
    "identifier",
    "basedOn",
    "status",
    "intent",
    "priority",
    "code",
    "quantityQuantity",
    "subject",
    "encounter",
    "occurrenceTiming",
    "asNeededBoolean",
    "authoredOn",
    "requester",
    "performer",
    "reasonCode",
    "specimen",
    "note",
)
_MR_ORDER = (
    "resourceType",
    "id",
    "meta",
    "identifier",
    "status",
    "intent",
    "priority",
    "medicationCodeableConcept",
    "subject",
    "encounter",
    "authoredOn",
    "requester",
    "performer",
    "dosageInstruction",
    "dispenseRequest",
)


def _reorder(resource: dict[str, Any], order: tuple[str, ...]) -> None:
    ordered = {k: resource[k] for k in order if k in resource}
    ordered.update({k: v for k, v in resource.items() if k not in ordered})
    resource.clear()
    resource.update(ordered)

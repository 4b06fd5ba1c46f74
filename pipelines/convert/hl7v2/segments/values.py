"""OBX-5 by OBX-2 (with OBX-6 units) -> Observation.value[x], after the IG's OBX[Observation] map."""

from __future__ import annotations

import base64
import re
from typing import Any

from pipelines.convert.hl7v2 import vocab
from pipelines.convert.hl7v2.datatypes import Comp, Ctx, cwe, decimal, dtm, first, reps, text, time_of, where

UCUM = "http://unitsofmeasure.org"
# R4's Observation.value[x] has no Attachment: the IG carries ED/RP values in R5's value extension.
VALUE_ATTACHMENT = "http://hl7.org/fhir/5.0/StructureDefinition/extension-Observation.value"
_COMPARATORS = {"<": "<", ">": ">", "<=": "<=", ">=": ">="}
_SN = re.compile(r"\s*(<=|>=|<>|<|>|=)?\s*([+-]?\d*\.?\d+)?\s*(?:([-:/+])\s*([+-]?\d*\.?\d+)?)?\s*")


def units(ctx: Ctx, obx: Any) -> dict[str, Any]:
    """OBX-6 as the unit part of a Quantity: UCUM when coded so or spelled like UCUM, else text only."""
    u = first(obx, 6)
    if u is None:
        return {}
    code, label, system_name = u.code(1), u.get(2), u.code(3)
    system = vocab.system_uri(system_name, ctx.source_system)
    out: dict[str, Any] = {"unit": label or code}
    if code and (system == UCUM or (system is None and vocab.is_ucum_like(code))):
        out.update(system=UCUM, code=code)
    elif code and system:
        out.update(system=system, code=code)
    return out if out["unit"] else {}


def quantity(
    number: str | None, unit: dict[str, Any], comparator: str | None = None
) -> dict[str, Any] | None:
    value = decimal(number)
    if value is None:
        return None
    q: dict[str, Any] = {"value": value}
    if comparator:
        q["comparator"] = comparator
    q.update(unit)
    return q


def value(ctx: Ctx, obx: Any) -> dict[str, Any]:
    """The value[x] element(s) for one OBX; an empty dict when OBX-5 is empty."""
    vtype = (first(obx, 2).code(1) if first(obx, 2) else None) or "ST"
    values = reps(obx, 5)
    if not values:
        return {}
    head = values[0]
    if vtype in ("ST", "TX", "FT", "VR", "ID"):
        return {"valueString": text(obx, 5)}
    if vtype in ("CWE", "CE", "CNE", "CF", "IS"):
        cc = cwe(ctx, head)
        return {"valueCodeableConcept": cc} if cc else {}
    if vtype == "NM":
        q = quantity(head.get(1), units(ctx, obx))
        return {"valueQuantity": q} if q else _sn(ctx, obx, head.get(1) or "")
    if vtype == "SN":
        return _sn(ctx, obx, None, head)
    if vtype in ("DT", "DTM", "TS"):
        when = dtm(ctx, head.get(1), where(obx, 5))
        return {"valueDateTime": when} if when else {}
    if vtype == "TM":
        t = time_of(head.get(1))
        return {"valueTime": t} if t else {"valueString": head.get(1)}
    if vtype == "NR":
        rng = _range(quantity(head.get(1), units(ctx, obx)), quantity(head.get(2), units(ctx, obx)))
        return {"valueRange": rng} if rng else {}
    if vtype == "DR":
        period = {
            k: v
            for k, v in (
                ("start", dtm(ctx, head.sub(1).get(1), where(obx, 5))),
                ("end", dtm(ctx, head.sub(2).get(1), where(obx, 5))),
            )
            if v
        }
        return {"valuePeriod": period} if period else {}
    if vtype in ("ED", "RP"):
        att = _attachment(head) if vtype == "ED" else {"url": head.get(1)}
        return {"extension": [{"url": VALUE_ATTACHMENT, "valueAttachment": att}]} if att else {}
    # Any other type (CP, MO, XCN...) keeps its text rather than lose it.
    return {"valueString": text(obx, 5)}


def _sn(ctx: Ctx, obx: Any, raw: str | None, sn: Comp | None = None) -> dict[str, Any]:
    """SN (or a comparator written into an NM) -> Quantity with comparator, Range, Ratio or string."""
    if sn is not None:
        comparator, n1, sep, n2 = sn.code(1), sn.code(2), sn.code(3), sn.code(4)
        raw = " ".join(x for x in (comparator, n1, sep, n2) if x)
    else:
        m = _SN.fullmatch(raw or "")
        if m is None:
            return {"valueString": raw} if raw else {}
        comparator, n1, sep, n2 = m.groups()
    unit = units(ctx, obx)
    if comparator in (None, "=") or comparator in _COMPARATORS:
        cmp_ = _COMPARATORS.get(comparator or "")
        if sep in (":", "/") and n1 is not None and n2 is not None and cmp_ is None:
            ratio = {"numerator": quantity(n1, {}), "denominator": quantity(n2, {})}
            if all(ratio.values()):
                return {"valueRatio": ratio}
        elif sep == "-" and cmp_ is None:
            rng = _range(quantity(n1, unit), quantity(n2, unit))
            if rng:
                return {"valueRange": rng}
        elif sep is None:
            q = quantity(n1, unit, cmp_)
            if q:
                return {"valueQuantity": q}
    text_ = " ".join(x for x in (raw, unit.get("unit")) if x)
    return {"valueString": text_} if text_ else {}


def _range(low: dict | None, high: dict | None) -> dict[str, Any] | None:
    rng = {k: v for k, v in (("low", low), ("high", high)) if v}
    return rng or None


def _attachment(ed: Comp) -> dict[str, Any] | None:
    """ED (source^type^subtype^encoding^data) -> Attachment; ASCII (A) data is base64-encoded here."""
    kind, subtype, encoding, data = ed.code(2), ed.code(3), (ed.code(4) or "").upper(), ed.get(5)
    if not data:
        return None
    att: dict[str, Any] = {}
    if subtype and "/" in subtype:
        att["contentType"] = subtype.lower()
    elif subtype:
        major = {
            "AP": "application",
            "IM": "image",
            "TEXT": "text",
            "AU": "audio",
            "Application": "application",
        }
        att["contentType"] = f"{major.get(kind or '', (kind or 'application').lower())}/{subtype.lower()}"
    if encoding == "BASE64":
        att["data"] = "".join(data.split())
    elif encoding == "HEX":
        try:
            att["data"] = base64.b64encode(bytes.fromhex(data)).decode()
        except ValueError:
            return None
    else:
        att["data"] = base64.b64encode(data.encode("utf-8")).decode()
    return att


def reference_range(ctx: Ctx, obx: Any) -> list[dict[str, Any]] | None:
    """OBX-7 -> referenceRange (its text always; low/high too when it reads as "low-high", "<x" or ">x")."""
    raw = text(obx, 7)
    if not raw:
        return None
    rr: dict[str, Any] = {}
    unit = units(ctx, obx)
    m = re.fullmatch(r"\s*([+-]?\d*\.?\d+)\s*-\s*([+-]?\d*\.?\d+)\s*", raw)
    if m:
        rr.update({"low": quantity(m.group(1), unit), "high": quantity(m.group(2), unit)})
    else:
        m = re.fullmatch(r"\s*(<|<=|>|>=)\s*([+-]?\d*\.?\d+)\s*", raw)
        if m:
            rr["high" if m.group(1).startswith("<") else "low"] = quantity(m.group(2), unit)
    rr["text"] = raw
    return [{k: v for k, v in rr.items() if v}]

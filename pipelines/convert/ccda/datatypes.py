"""CDA data types to FHIR: II, CD with translations, TS, IVL_TS, PIVL_TS, PQ, values, PN, AD, TEL."""

from __future__ import annotations

import calendar
import re
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

import orjson
from lxml import etree

from pipelines.convert.ccda.maps import concept, oid_systems

NS = "{urn:hl7-org:v3}"
SDTC = "{urn:hl7-org:sdtc}"
XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
UCUM = "http://unitsofmeasure.org"
DAR = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"

_OID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+")
_UUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")
_TS = re.compile(
    r"(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(\.\d+)?)?)?)?)?)?(?:([+-])(\d{2})(\d{2})?|(Z))?"
)
_FHIR_DECIMAL = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")


def tag(name: str) -> str:
    return NS + name


# iterchildren with a tag filter runs in C; find() parses an ElementPath each call (twice as slow).
def child(el: Any, name: str) -> Any:
    return None if el is None or not len(el) else next(el.iterchildren(NS + name), None)


def children(el: Any, name: str) -> list[Any]:
    return [] if el is None else list(el.iterchildren(NS + name))


def local(el: Any) -> str:
    t = el.tag
    return t.rsplit("}", 1)[-1] if isinstance(t, str) else ""


_TEMPLATE_ID, _ID, _TRANSLATION = NS + "templateId", NS + "id", NS + "translation"
_ORIGINAL_TEXT = NS + "originalText"
_LOW, _HIGH, _CENTER = NS + "low", NS + "high", NS + "center"


def template_ids(el: Any) -> list[str]:
    return [r for t in el.iterchildren(_TEMPLATE_ID) if (r := t.get("root"))]


def xsi_type(el: Any) -> str | None:
    value = el.get(XSI_TYPE) or el.get("xsi:type")
    return value.rsplit(":", 1)[-1] if value else None


def clean(value: str | None) -> str | None:
    if value is None:
        return None
    value = " ".join(value.split())
    return value or None


# --- identifiers and code systems -------------------------------------------------------------------


@lru_cache(maxsize=4096)  # a document names the same few code systems on every coded element
def system_uri(oid: str | None) -> str | None:
    """The FHIR URI for a code system OID; an unknown OID stays itself as urn:oid (never a guessed URI)."""
    if not oid:
        return None
    oid = oid.strip()
    known = oid_systems().get(oid)
    if known:
        return known
    if _OID.fullmatch(oid):
        return f"urn:oid:{oid}"
    if _UUID.fullmatch(oid):
        return f"urn:uuid:{oid.lower()}"
    return None


def id_pairs(el: Any, ids: Any = None) -> list[tuple[str, str | None]]:
    """(root, extension) of each usable <id> (nullFlavor ids and ids without root are left out); ids are
    el's <id> children when the caller already has them."""
    out = []
    for i in el.iterchildren(_ID) if ids is None else ids:
        root = i.get("root")
        if root and not i.get("nullFlavor"):
            ext = i.get("extension")
            out.append((root.strip(), (ext.strip() or None) if ext else None))
    return out


def id_key(el: Any) -> str | None:
    return pairs_key(id_pairs(el))


def pairs_key(pairs: list[tuple[str, str | None]]) -> str | None:
    """The source key of id_pairs' first pair (root|extension, or the root alone)."""
    if not pairs:
        return None
    root, ext = pairs[0]
    return f"{root}|{ext}" if ext else root


def identifier(root: str, ext: str | None) -> dict[str, str]:
    if ext:
        return {"system": system_uri(root) or f"urn:oid:{root}", "value": ext}
    prefix = "urn:uuid:" if _UUID.fullmatch(root) else "urn:oid:"
    return {
        "system": "urn:ietf:rfc:3986",
        "value": prefix + (root.lower() if prefix == "urn:uuid:" else root),
    }


def identifiers(el: Any) -> list[dict[str, str]]:
    return [identifier(r, e) for r, e in id_pairs(el)]


# --- codes ----------------------------------------------------------------------------------------------


def coding(el: Any) -> dict[str, str] | None:
    code = (el.get("code") or "").strip()
    if not code:
        return None
    out: dict[str, str] = {}
    system = system_uri(el.get("codeSystem"))
    if system:
        out["system"] = system
    version = el.get("codeSystemVersion")
    if version:
        out["version"] = version
    out["code"] = code
    display = clean(el.get("displayName"))
    if display:
        out["display"] = display
    return out


def codeable(el: Any, doc: Any, text_from_display: bool = False) -> dict[str, Any] | None:
    """CD/CE/CV -> CodeableConcept: the code and every translation as codings, originalText as text.

    A nullFlavor code with nothing else yields None; the caller decides whether FHIR wants a
    data-absent-reason there. No code is ever made up.
    """
    if el is None:
        return None
    codings = []
    first = coding(el)
    if first:
        codings.append(first)
    original = None
    if len(el):  # most codes have no children: no scan at all then
        for sub in el:
            if sub.tag == _TRANSLATION:
                c = coding(sub)
                if c and c not in codings:
                    codings.append(c)
            elif sub.tag == _ORIGINAL_TEXT:
                original = sub
    out: dict[str, Any] = {}
    if codings:
        out["coding"] = codings
    text = doc.text_of(original) if original is not None else None
    if text:
        out["text"] = text
    elif text_from_display and first is None:
        display = clean(el.get("displayName"))
        if display:
            out["text"] = display
    return out or None


def absent(null_flavor: str | None) -> dict[str, Any]:
    """A data-absent-reason extension for a nullFlavor (unknown when there is none to say more)."""
    return {"extension": [{"url": DAR, "valueCode": concept("null_flavor", null_flavor) or "unknown"}]}


# --- times ----------------------------------------------------------------------------------------------


_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _days_in(year: int, month: int) -> int:
    return 29 if month == 2 and calendar.isleap(year) else _DAYS[month - 1]


@lru_cache(maxsize=8192)  # documents repeat the same instants many times over
def ts(value: str | None) -> str | None:
    """HL7 TS (any precision, with or without a zone) -> FHIR dateTime; None when it is not a TS.

    FHIR requires a zone once there is a time of day: a time without one is cut to its date rather
    than given a zone it never had. Missing minutes or seconds are written as 00.
    """
    if not value:
        return None
    m = _TS.fullmatch(value.strip())
    if not m:
        return None
    year, month, day, hour, minute, second, frac, sign, tzh, tzm, zulu = m.groups()
    if month and not 1 <= int(month) <= 12:
        return None
    if day and not 1 <= int(day) <= _days_in(int(year), int(month)):
        return None
    if hour and (int(hour) > 23 or int(minute or 0) > 59 or int(second or 0) > 60):
        return None
    out = year + (f"-{month}" if month else "") + (f"-{day}" if day else "")
    if hour and (sign or zulu):
        out += f"T{hour}:{minute or '00'}:{second or '00'}{frac or ''}"
        if zulu:
            out += "Z"
        elif tzh is not None:
            if int(tzh) > 14 or int(tzm or 0) > 59:
                return None
            out += f"{sign}{tzh}:{tzm or '00'}"
    return out


def effective(el: Any) -> tuple[str, Any] | None:
    """IVL_TS / TS -> ("dateTime", v) or ("Period", {...}); center is a point in time, width needs low."""
    if el is None:
        return None
    point = ts(el.get("value"))
    if point:
        return ("dateTime", point)
    if not len(el):
        return None
    center = low = high = None
    for part in el:  # one pass for the first center, low and high
        t = part.tag
        if t == _LOW:
            if low is None:
                low = part
        elif t == _HIGH:
            if high is None:
                high = part
        elif t == _CENTER and center is None:
            center = part
    if center is not None and ts(center.get("value")):
        return ("dateTime", ts(center.get("value")))
    start = ts(low.get("value")) if low is not None else None
    end = ts(high.get("value")) if high is not None else None
    period: dict[str, str] = {}
    if start:
        period["start"] = start
    if end:
        period["end"] = end
    return ("Period", period) if period else None


def timing(els: list[Any]) -> dict[str, Any] | None:
    """PIVL_TS (period, frequency) and EIVL_TS (event) effectiveTimes -> Timing.repeat."""
    repeat: dict[str, Any] = {}
    for el in els:
        kind = xsi_type(el)
        if kind == "PIVL_TS":
            period = child(el, "period")
            if period is not None:
                value = decimal(period.get("value"))
                unit = concept("pivl_unit", period.get("unit"))
                if value is not None and unit:
                    repeat["period"] = value
                    repeat["periodUnit"] = unit
                    repeat.setdefault("frequency", 1)
                else:
                    low, high = child(period, "low"), child(period, "high")
                    lo = decimal(low.get("value")) if low is not None else None
                    hi = decimal(high.get("value")) if high is not None else None
                    unit = concept("pivl_unit", (low if low is not None else period).get("unit"))
                    if lo is not None and unit:
                        repeat.update({"period": lo, "periodUnit": unit, "frequency": 1})
                        if hi is not None:
                            repeat["periodMax"] = hi
            frequency = child(el, "frequency")
            if frequency is not None:
                n = child(frequency, "numerator")
                d = child(frequency, "denominator")
                if n is not None and d is not None and n.get("value", "").isdigit():
                    unit = concept("pivl_unit", d.get("unit"))
                    if unit and decimal(d.get("value")) is not None:
                        repeat.update(
                            {
                                "frequency": int(n.get("value")),
                                "period": decimal(d.get("value")),
                                "periodUnit": unit,
                            }
                        )
        elif kind == "EIVL_TS":
            event = child(el, "event")
            if event is not None and event.get("code"):
                repeat.setdefault("when", []).append(event.get("code"))
    return {"repeat": repeat} if repeat else None


# --- quantities and values ------------------------------------------------------------------------------


def decimal(value: str | None) -> orjson.Fragment | None:
    """A decimal as spelled (1.50 stays 1.50), written into JSON verbatim; None when it is not a number."""
    if value is None:
        return None
    value = value.strip().lstrip("+")
    if value.startswith("."):
        value = "0" + value
    elif value.startswith("-."):
        value = "-0" + value[1:]
    if not _FHIR_DECIMAL.fullmatch(value):
        try:
            d = Decimal(value)
        except InvalidOperation:
            return None
        if not d.is_finite():
            return None
        value = str(d)
        if not _FHIR_DECIMAL.fullmatch(value):
            return None
    return orjson.Fragment(value.encode())


def quantity(el: Any) -> dict[str, Any] | None:
    """PQ -> Quantity with UCUM system when a unit is given ("1" is UCUM's unity and is kept)."""
    if el is None:
        return None
    value = decimal(el.get("value"))
    if value is None:
        return None
    out: dict[str, Any] = {"value": value}
    unit = (el.get("unit") or "").strip()
    if unit:
        out.update({"unit": unit, "system": UCUM, "code": unit})
    return out


def value_range(el: Any) -> dict[str, Any] | None:
    low, high = quantity(child(el, "low")), quantity(child(el, "high"))
    out = {}
    if low:
        out["low"] = low
    if high:
        out["high"] = high
    return out or None


def value(el: Any, doc: Any) -> tuple[str, Any] | None:
    """An observation's <value> by its xsi:type -> (FHIR value[x] element name, value)."""
    if el is None:
        return None
    kind = xsi_type(el) or ""
    if el.get("nullFlavor") and kind not in ("CD", "CE", "CV", "CO"):
        return None
    if kind == "PQ":
        q = quantity(el)
        return ("valueQuantity", q) if q else None
    if kind in ("CD", "CE", "CV", "CO", "CS"):
        cc = codeable(el, doc, text_from_display=True)
        return ("valueCodeableConcept", cc) if cc else None
    if kind in ("ST", "ED", "SC"):
        text = doc.text_of(el)
        return ("valueString", text) if text else None
    if kind == "IVL_PQ":
        r = value_range(el)
        return ("valueRange", r) if r else None
    if kind == "INT":
        raw = (el.get("value") or "").strip()
        if re.fullmatch(r"[+-]?\d{1,9}", raw):
            return ("valueInteger", int(raw))
        return None
    if kind in ("REAL", "MO"):
        d = decimal(el.get("value"))
        return ("valueQuantity", {"value": d}) if d is not None else None
    if kind == "BL":
        raw = el.get("value")
        return ("valueBoolean", raw == "true") if raw in ("true", "false") else None
    if kind in ("TS", "IVL_TS"):
        e = effective(el)
        if e is None:
            return None
        return ("valueDateTime", e[1]) if e[0] == "dateTime" else ("valuePeriod", e[1])
    if kind == "RTO_PQ_PQ" or kind == "RTO":
        n, d = quantity(child(el, "numerator")), quantity(child(el, "denominator"))
        return ("valueRatio", {"numerator": n, "denominator": d}) if n and d else None
    return None


# --- people and places ----------------------------------------------------------------------------------


_NAME_PARTS = {NS + "family": 0, NS + "given": 1, NS + "prefix": 2, NS + "suffix": 3}
_ADDR_LINE = NS + "streetAddressLine"
# The address parts read from each one's first element only, in FHIR's order.
_ADDR_PARTS = {
    NS + "city": "city",
    NS + "county": "district",
    NS + "state": "state",
    NS + "postalCode": "postalCode",
    NS + "country": "country",
}


def human_names(el: Any) -> list[dict[str, Any]]:
    out = []
    for name in children(el, "name"):
        if name.get("nullFlavor"):
            continue
        n: dict[str, Any] = {}
        use = concept("name_use", (name.get("use") or "").split(" ")[0])
        if use:
            n["use"] = use
        # One pass over the name's parts (each kind keeps its document order).
        parts: tuple[list[str], ...] = ([], [], [], [])
        for part in name:
            i = _NAME_PARTS.get(part.tag)
            if i is not None:
                text = clean(part.text)
                if text:
                    parts[i].append(text)
        family, given, prefix, suffix = parts
        if family:
            n["family"] = " ".join(family)
        if given:
            n["given"] = given
        if prefix:
            n["prefix"] = prefix
        if suffix:
            n["suffix"] = suffix
        if not (family or given):
            text = clean("".join(name.itertext()))
            if text:
                n["text"] = text
        if len(n) > (1 if "use" in n else 0):
            out.append(n)
    return out


def addresses(el: Any) -> list[dict[str, Any]]:
    out = []
    for addr in children(el, "addr"):
        if addr.get("nullFlavor"):
            continue
        a: dict[str, Any] = {}
        use = concept("address_use", (addr.get("use") or "").split(" ")[0])
        if use:
            a["use"] = use
        # One pass over the address's parts: every street line, the first of each other part.
        lines = []
        first: dict[str, Any] = {}
        for part in addr:
            t = part.tag
            if t == _ADDR_LINE:
                text = clean(part.text)
                if text:
                    lines.append(text)
            elif t in _ADDR_PARTS and t not in first:
                first[t] = part
        if lines:
            a["line"] = lines
        for t, fhir in _ADDR_PARTS.items():
            v = first.get(t)
            if v is not None:
                text = clean(v.text)
                if text:
                    a[fhir] = text
        if len(a) > (1 if "use" in a else 0):
            out.append(a)
    return out


def telecoms(el: Any) -> list[dict[str, str]]:
    out = []
    for t in children(el, "telecom"):
        raw = (t.get("value") or "").strip()
        if not raw or t.get("nullFlavor"):
            continue
        scheme, sep, rest = raw.partition(":")
        system = concept("telecom_system", scheme.lower()) if sep else None
        c: dict[str, str] = {}
        if system:
            c["system"] = system
            c["value"] = raw if system == "url" else rest.lstrip("/").strip()
        else:
            c["system"] = "other"
            c["value"] = raw
        use = concept("telecom_use", (t.get("use") or "").split(" ")[0])
        if use:
            c["use"] = use
        if c["value"]:
            out.append(c)
    return out


def element_text(el: Any) -> str | None:
    return clean("".join(el.itertext())) if el is not None else None


def is_element(el: Any) -> bool:
    return isinstance(el.tag, str) and not isinstance(el, etree._Comment)


def add_contacts(res: dict[str, Any], el: Any) -> None:
    """Set res.telecom and res.address from an element's telecom and addr children, when it has any."""
    tel = telecoms(el)
    if tel:
        res["telecom"] = tel
    addr = addresses(el)
    if addr:
        res["address"] = addr

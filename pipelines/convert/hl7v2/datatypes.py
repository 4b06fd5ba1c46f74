"""HL7 v2 data types to FHIR R4 data types, after the v2-to-FHIR IG's datatype maps."""

from __future__ import annotations

import calendar
import re
from collections import Counter
from functools import lru_cache
from typing import Any

import orjson

from pipelines.common.unit import StagedResource, stage_dict
from pipelines.convert.fhir.prepare import warehouse_id
from pipelines.convert.hl7v2 import vocab
from pipelines.intake import site

HL7_NULL = '""'  # the explicit HL7 null: treated as absent
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
_DTM = re.compile(
    r"(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(\.\d{1,4})?)?)?)?)?)?\s*(?:([+-])(\d{2})(\d{2}))?"
)
_DECIMAL = re.compile(r"([+-])?0*(\d*)(?:\.(\d*))?")


def clean(value: str | None) -> str | None:
    """A value, or None for absent, blank or the HL7 null."""
    if value is None or value == HL7_NULL:
        return None
    return value if value.strip() else None


class Ctx:
    """What mapping one message needs: its ids, its time, the shared resources it mints, what it lost."""

    def __init__(self, source_system: str, unit_key: str) -> None:
        self.source_system = source_system
        self.unit_key = unit_key
        self.last_updated: str | None = None
        self.meta_source: str | None = None
        self.lost: Counter[str] = Counter()
        self.shared: dict[tuple[str, str], dict[str, Any]] = {}

    def rid(self, rtype: str, key: str) -> str:
        return warehouse_id(self.source_system, rtype, key)

    def meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {}
        if self.last_updated:
            meta["lastUpdated"] = self.last_updated
        if self.meta_source:
            meta["source"] = self.meta_source
        return meta

    def share(self, resource: dict[str, Any]) -> dict[str, str]:
        """Keep a stand-in resource (Practitioner, Organization, Location) and return its reference."""
        key = (resource["resourceType"], resource["id"])
        self.shared.setdefault(key, resource)
        return {"reference": f"{key[0]}/{key[1]}"}

    def staged_shared(self) -> list[StagedResource]:
        # References pulled out of a message vary in detail from one message to the next, so they are
        # stand-ins: stored if nothing fuller exists, never in conflict with another message's copy.
        return [stage_dict(r, reference_only=True) for r in self.shared.values()]


class Comp:
    """A composite value seen through 1-based accessors: a field repetition (components) or a
    component (subcomponents)."""

    __slots__ = ("_parts",)

    def __init__(self, parts: list[str | None]) -> None:
        self._parts = parts

    @classmethod
    def of(cls, rep: Any) -> Comp:
        return _RepComp(rep, rep.component_count)

    def get(self, i: int) -> str | None:
        return clean(self._parts[i - 1]) if 0 < i <= len(self._parts) else None

    def code(self, i: int) -> str | None:
        v = self.get(i)
        return v.strip() if v else None

    def sub(self, i: int) -> Comp:
        return Comp([self.get(i)])

    def empty(self) -> bool:
        return all(clean(p) is None for p in self._parts)


_UNSET: Any = object()


class _RepComp(Comp):
    # Mappers read the same component several times (code, then display, then a key): each is
    # split and unescaped once.
    __slots__ = ("_cache", "_n", "_rep")

    def __init__(self, rep: Any, n: int) -> None:
        self._rep = rep
        self._n = n
        self._cache: list[Any] = [_UNSET] * n

    def get(self, i: int) -> str | None:
        if not 0 < i <= self._n:
            return None
        v = self._cache[i - 1]
        if v is _UNSET:
            v = self._cache[i - 1] = clean(self._rep.component(i))
        return v

    def sub(self, i: int) -> Comp:
        if not 0 < i <= self._n:
            return Comp([])
        return Comp(list(self._rep.subcomponents(i)))

    def empty(self) -> bool:
        return all(self.get(i) is None for i in range(1, self._n + 1))


def reps(seg: Any, n: int) -> list[Comp]:
    """The non-empty repetitions of field n of a segment (a shared list: callers do not change it).

    Mappers read one field several times (an identity key, then the resource; a code, then its
    display): the field is split once per segment, and each component unescaped once.
    """
    if seg is None:
        return []
    memo = seg.memo
    if memo is None:
        memo = seg.memo = {}
    found = memo.get(n)
    if found is None:
        field = seg.field(n)
        found = [c for c in (Comp.of(r) for r in field.repetitions) if not _blank(c)] if field else []
        memo[n] = found
    return found


def _blank(c: Comp) -> bool:
    # Most repetitions hold some character other than delimiters, spaces and quotes: those are not
    # blank, and need no unescaping to say so. The rest ("", ^^, "" nulls, escapes) are checked fully.
    rep = c._rep if isinstance(c, _RepComp) else None
    if rep is not None:
        raw, ctx = rep.raw, rep.context
        if ctx.esc is None or ctx.esc not in raw:
            drop = _DROP.get((ctx.comp, ctx.sub))
            if drop is None:
                drop = _DROP[(ctx.comp, ctx.sub)] = str.maketrans("", "", ctx.comp + ctx.sub + '"')
            if raw.translate(drop).strip():
                return False
    return c.empty()


_DROP: dict[tuple[str, str], dict[int, None]] = {}


def first(seg: Any, n: int) -> Comp | None:
    found = reps(seg, n)
    return found[0] if found else None


def val(seg: Any, n: int, component: int = 1) -> str | None:
    if seg is None:
        return None
    v = clean(seg.get(n, component))
    return v.strip() if v else None


def text(seg: Any, n: int) -> str | None:
    """A text field's repetitions joined by line breaks (TX and FT repeat by line)."""
    if seg is None or n > seg.field_count or not seg.field(n):
        return None
    # Free text often carries a bare "&" (the subcomponent separator) where "\T\" belongs: rejoin it.
    lines = [clean("&".join(x or "" for x in r.subcomponents(1))) for r in seg.field(n).repetitions]
    joined = "\n".join(x or "" for x in lines).strip("\n")
    return joined or None


def where(seg: Any, n: int) -> str:
    return f"{seg.name}-{n}"


# --- date and time ----------------------------------------------------------------------------------


def dtm(ctx: Ctx, value: str | None, at: str, *, date_only: bool = False) -> str | None:
    """A v2 DTM/TS/DT as a FHIR dateTime (or date), precision and offset kept; invalid -> None, counted."""
    value = clean(value)
    if value is None:
        return None
    out = _fhir_time(value.strip(), date_only, site.time_zone_name())
    if out is None:
        ctx.lost[at] += 1
    return out


def period(ctx: Ctx, seg: Any, start: int, end: int) -> dict[str, str]:
    """A FHIR Period from two DTM fields of a segment; empty when neither holds a valid time."""
    out = {}
    for key, n in (("start", start), ("end", end)):
        value = dtm(ctx, val(seg, n), where(seg, n))
        if value:
            out[key] = value
    return out


@lru_cache(maxsize=4096)
def _fhir_time(value: str, date_only: bool, zone: str) -> str | None:
    # Messages repeat their timestamps (MSH-7, EVN-2, OBR-7 and each OBX-14): each is parsed once.
    m = _DTM.fullmatch(value)
    if m is None or not _valid(m):
        return None
    year, month, day, hour, minute, sec, frac, sign, tzh, tzm = m.groups()
    out = year
    if month:
        out += f"-{month}"
    if day:
        out += f"-{day}"
    if date_only or not hour or not day:
        return out
    # FHIR has no hour or minute precision: the missing parts are written as zero.
    out += f"T{hour}:{minute or '00'}:{sec or '00'}{frac or '' if sec else ''}"
    if sign:
        out += f"{sign}{tzh}:{tzm}"
    else:
        # FHIR requires an offset on a time; the v2-to-FHIR IG reads a time without one in the sender's
        # zone, which the site states (schemas/site.json, EHRLIFT_SITE_TIME_ZONE).
        out += site.offset(zone, int(year), int(month), int(day), int(hour), int(minute or 0), int(sec or 0))
    return out


def date(ctx: Ctx, value: str | None, at: str) -> str | None:
    return dtm(ctx, value, at, date_only=True)


def instant(ctx: Ctx, value: str | None, at: str) -> str | None:
    """A DTM as a FHIR instant for meta.lastUpdated. A time without an offset is read as UTC: the
    instant only orders one sender's messages, which share one clock."""
    full = dtm(ctx, value, at)
    if full is None:
        return None
    if "T" not in full:
        full = (full + "-01-01")[:10] + "T00:00:00"
    if not re.search(r"[+-]\d\d:\d\d$", full):
        full += "Z"
    return full


def _valid(m: re.Match[str]) -> bool:
    year, month, day, hour, minute, sec, _frac, sign, tzh, tzm = m.groups()
    if month and not 1 <= int(month) <= 12:
        return False
    if day and not 1 <= int(day) <= calendar.monthrange(int(year), int(month))[1]:
        return False
    if (hour and int(hour) > 23) or (minute and int(minute) > 59) or (sec and int(sec) > 59):
        return False
    if sign and (int(tzh) > 14 or int(tzm) > 59):
        return False
    return int(year) > 0


def time_of(value: str | None) -> str | None:
    """A v2 TM (HHMM[SS[.S]]) as a FHIR time, or None."""
    value = clean(value)
    m = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(\.\d+)?(?:[+-]\d{4})?", value.strip()) if value else None
    if m is None or int(m.group(1)) > 23 or int(m.group(2) or 0) > 59 or int(m.group(3) or 0) > 59:
        return None
    return f"{m.group(1)}:{m.group(2) or '00'}:{m.group(3) or '00'}{m.group(4) or ''}"


# --- numbers ----------------------------------------------------------------------------------------


def decimal(value: str | None) -> orjson.Fragment | None:
    """A v2 NM as a JSON number written exactly as sent (no float round trip: "1.50" stays 1.50)."""
    value = clean(value)
    if value is None:
        return None
    m = _DECIMAL.fullmatch(value.strip())
    if m is None or not (m.group(2) or m.group(3)):
        return None
    sign, whole, frac = m.groups()
    text_ = ("-" if sign == "-" else "") + (whole or "0") + (f".{frac}" if frac else "")
    return orjson.Fragment(text_.encode())


# --- identifiers --------------------------------------------------------------------------------------


def authority_system(ctx: Ctx, hd: Comp) -> str | None:
    """Identifier.system for an assigning authority: its universal id when it is an OID or URI, else
    the authority's namespace as a local ehrlift system (kept, never dressed up as standard)."""
    universal, kind = hd.code(2), (hd.code(3) or "").upper()
    if universal and kind == "ISO":
        return universal if universal.startswith("urn:") else f"urn:oid:{universal}"
    if universal and kind in ("URI", "URL", "UUID"):
        return universal if kind != "UUID" else f"urn:uuid:{universal}"
    name = hd.code(1) or universal
    return vocab.local_system(ctx.source_system, f"id:{name}") if name else None


def cx(ctx: Ctx, v: Comp | None, *, type_code: str | None = None) -> dict[str, Any] | None:
    """CX -> Identifier."""
    if v is None or not v.code(1):
        return None
    ident: dict[str, Any] = {}
    code = v.code(5) or type_code
    if code:
        ident["type"] = _identifier_type(code)
    hd = v.sub(4)
    system = authority_system(ctx, hd)
    if system:
        ident["system"] = system
    ident["value"] = v.code(1)
    period = _period(ctx, v.get(7), v.get(8), "CX")
    if period:
        ident["period"] = period
    if hd.code(1) or hd.code(2):
        ident["assigner"] = {"display": hd.code(1) or hd.code(2)}
    return ident


def cx_key(v: Comp) -> str:
    """The identity key of a CX: "authority|value" when it names an authority, else the value."""
    hd = v.sub(4)
    authority = hd.code(1) or hd.code(2)
    return f"{authority}|{v.code(1)}" if authority else str(v.code(1))


def ei(ctx: Ctx, v: Comp | None, *, type_code: str | None = None) -> dict[str, Any] | None:
    """EI -> Identifier (system from the universal id, else the namespace as a local system)."""
    if v is None or not v.code(1):
        return None
    ident: dict[str, Any] = {}
    if type_code:
        ident["type"] = _identifier_type(type_code)
    system = authority_system(ctx, Comp([v.get(2), v.get(3), v.get(4)]))
    if system:
        ident["system"] = system
    ident["value"] = v.code(1)
    return ident


def ei_key(v: Comp | None) -> str | None:
    if v is None or not v.code(1):
        return None
    authority = v.code(2) or v.code(3)
    return f"{authority}|{v.code(1)}" if authority else v.code(1)


def _identifier_type(code: str) -> dict[str, Any]:
    hit = vocab.coding_of("identifier_type", code)
    if hit is None:
        return {"text": code}
    return {"coding": [{"system": V2_0203, "code": hit["code"]}]}


def _period(ctx: Ctx, start: str | None, end: str | None, at: str) -> dict[str, str] | None:
    period = {k: v for k, v in (("start", dtm(ctx, start, at)), ("end", dtm(ctx, end, at))) if v}
    return period or None


# --- names, addresses, telecom -------------------------------------------------------------------------


def xpn(v: Comp | None) -> dict[str, Any] | None:
    """XPN -> HumanName."""
    if v is None:
        return None
    name: dict[str, Any] = {}
    use = vocab.code_of("name_use", v.code(7))
    if use:
        name["use"] = use
    family = v.sub(1).get(1) or v.get(1)
    if family:
        name["family"] = family
    given = [g for g in (v.get(2), v.get(3)) if g]
    if given:
        name["given"] = given
    prefix = v.get(5)
    if prefix:
        name["prefix"] = [prefix]
    suffix = [s for s in (v.get(4), v.get(6), v.get(14)) if s]
    if suffix:
        name["suffix"] = suffix
    return name if len(name) > ("use" in name) else None


def xad(ctx: Ctx, v: Comp | None) -> dict[str, Any] | None:
    """XAD -> Address."""
    if v is None:
        return None
    addr: dict[str, Any] = {}
    kind = v.code(7)
    use, typ = vocab.code_of("address_use", kind), vocab.code_of("address_type", kind)
    if use:
        addr["use"] = use
    if typ:
        addr["type"] = typ
    lines = [x for x in (v.sub(1).get(1) or v.get(1), v.get(2), v.get(19)) if x]
    if lines:
        addr["line"] = lines
    for i, key in ((3, "city"), (9, "district"), (4, "state"), (5, "postalCode"), (6, "country")):
        x = v.get(i)
        if x:
            addr[key] = x
    period = _period(ctx, v.get(13), v.get(14), "XAD")
    if period:
        addr["period"] = period
    return addr if set(addr) - {"use", "type"} else None


def xtn(v: Comp | None, default_use: str | None = None) -> dict[str, Any] | None:
    """XTN -> ContactPoint (value from XTN-1, XTN-4 for e-mail, XTN-12, or composed from its parts)."""
    if v is None:
        return None
    equip = v.code(3)
    email = equip in ("Internet", "X.400") or (equip is None and bool(v.get(4)) and not v.get(1))
    value = (v.get(4) or v.get(1)) if email else (v.get(12) or _phone(v) or v.get(1))
    if not value:
        return None
    cp: dict[str, Any] = {}
    if email:
        cp["system"] = "email"
    elif equip == "CP":  # the IG's CP row names a use (mobile), not a system: a cell phone is a phone
        cp["system"] = "phone"
    elif vocab.code_of("telecom_system", equip):
        cp["system"] = vocab.code_of("telecom_system", equip)
    else:
        cp["_system"] = {
            "extension": [
                {"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}
            ]
        }
    cp["value"] = value
    use = "mobile" if equip == "CP" else vocab.code_of("telecom_use", v.code(2)) or default_use
    if use:
        cp["use"] = use
    rank = v.code(18)
    if rank and rank.isdigit() and int(rank) > 0:
        cp["rank"] = int(rank)
    return cp


def _phone(v: Comp) -> str | None:
    country, area, local, ext = v.get(5), v.get(6), v.get(7), v.get(8)
    if not local:
        return None
    out = " ".join(x for x in (f"+{country}" if country else None, area, local) if x)
    return f"{out} X{ext}" if ext else out


# --- coded values -----------------------------------------------------------------------------------------

_TRIPLETS = ((1, 2, 3, 7), (4, 5, 6, 8), (10, 11, 12, 13))


def cwe(ctx: Ctx, v: Comp | None, table: str | None = None) -> dict[str, Any] | None:
    """CWE/CE/CNE -> CodeableConcept: every triplet kept (code, display, system, version), then text.

    table names the HL7 table a field is bound to, the system of a code sent without one.
    """
    if v is None:
        return None
    codings: list[dict[str, Any]] = []
    displays: list[str] = []
    for n, (c, d, s, ver) in enumerate(_TRIPLETS):
        code, display = v.code(c), v.get(d)
        if not code:
            if display:
                displays.append(display)
            continue
        coding: dict[str, Any] = {}
        system = vocab.system_uri(v.code(s), ctx.source_system)
        if system is None and table and n == 0:
            system = vocab.table_system(table)
        if system:
            coding["system"] = system
        if v.get(ver):
            coding["version"] = v.get(ver)
        coding["code"] = code
        if display:
            coding["display"] = display
        codings.append(coding)
    cc: dict[str, Any] = {}
    if codings:
        cc["coding"] = codings
    text_ = v.get(9) or (displays[0] if displays else None)
    if text_:
        cc["text"] = text_
    return cc or None


def translated(cc: dict[str, Any] | None, table: str, mapped: dict[str, str] | None) -> dict[str, Any] | None:
    """cc with its v2-table coding replaced by the FHIR coding the IG's vocabulary map gives for it.

    The IG's table maps are one-to-one and THO retired these v2 tables in favour of their FHIR targets, so
    the v2 coding is replaced rather than repeated (its display becomes the text when none was sent); a
    coding in any other system (a sender's local alternate) is kept after the mapped one, and an unmapped
    code keeps its v2 coding.
    """
    if cc is None or mapped is None:
        return cc
    v2 = vocab.v2_table_uri(table)
    codings = cc.get("coding", [])
    sent = next((c.get("display") for c in codings if c.get("system") == v2 and c.get("display")), None)
    cc["coding"] = [mapped, *(c for c in codings if c.get("system") != v2 and c != mapped)]
    if sent and "text" not in cc:
        cc["text"] = sent  # the sender's own wording survives the translation
    return cc


def language_cc(ctx: Ctx, v: Comp | None) -> dict[str, Any] | None:
    """A language CWE (PID-15, NK1-20; table 0296) -> CodeableConcept of BCP 47 codings, as the IG's
    PrimaryLanguage map gives; a code that is no registered language keeps its v2 coding."""
    cc = cwe(ctx, v, "0296")
    if cc is None:
        return None
    v2 = vocab.v2_table_uri("0296")
    for coding in cc.get("coding", []):
        if coding.get("system") in (v2, vocab.BCP47):
            tag = vocab.language_tag(coding["code"])
            if tag:
                coding["system"], coding["code"] = vocab.BCP47, tag
                coding.pop("version", None)
    seen: set[tuple[str | None, str]] = set()
    kept = []
    for coding in cc.get("coding", []):
        key = (coding.get("system"), coding["code"])
        if key not in seen:
            seen.add(key)
            kept.append(coding)
    if kept:
        cc["coding"] = kept
    return cc


def cwe_all(ctx: Ctx, seg: Any, n: int, table: str | None = None) -> list[dict[str, Any]]:
    return [cc for cc in (cwe(ctx, r, table) for r in reps(seg, n)) if cc]


def coded(ctx: Ctx, seg: Any, n: int, table: str | None = None) -> dict[str, Any] | None:
    return cwe(ctx, first(seg, n), table)


def is_code(table: str, code: str | None, display: str | None = None) -> dict[str, Any] | None:
    """An IS/ID code of an HL7 table as a CodeableConcept."""
    if not code:
        return None
    coding = {"system": vocab.v2_table_uri(table), "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding]}


# --- people, organizations, places -------------------------------------------------------------------


def xcn(ctx: Ctx, v: Comp | None) -> dict[str, str] | None:
    """XCN -> a Practitioner stand-in; returns the reference to it."""
    if v is None:
        return None
    ident, name = v.code(1), _xcn_name(v)
    if not ident and not name:
        return None
    authority = v.sub(9).code(1) or v.sub(9).code(2)
    key = (f"{authority}|{ident}" if authority else ident) if ident else "name:" + _name_key(name)
    prac: dict[str, Any] = {"resourceType": "Practitioner", "id": ctx.rid("Practitioner", str(key))}
    if ident:
        identifier: dict[str, Any] = {}
        if v.code(13):
            identifier["type"] = _identifier_type(v.code(13) or "")
        system = authority_system(ctx, v.sub(9))
        if system:
            identifier["system"] = system
        identifier["value"] = ident
        prac["identifier"] = [identifier]
    if name:
        prac["name"] = [name]
    if v.get(7):
        # XCN-7 is a degree from HL7 table 0360 (MD, RN...): written with its system, as v2-to-FHIR maps it.
        degree = {"system": "http://terminology.hl7.org/CodeSystem/v2-0360", "code": v.code(7)}
        prac["qualification"] = [{"code": {"coding": [degree]}}]
    ref = ctx.share(prac)
    if name:
        ref["display"] = " ".join([*name.get("given", []), name.get("family", "")]).strip()
    return ref


def _xcn_name(v: Comp) -> dict[str, Any] | None:
    name: dict[str, Any] = {}
    family = v.sub(2).get(1) or v.get(2)
    if family:
        name["family"] = family
    given = [g for g in (v.get(3), v.get(4)) if g]
    if given:
        name["given"] = given
    if v.get(6):
        name["prefix"] = [v.get(6)]
    suffix = [s for s in (v.get(5), v.get(21)) if s]
    if suffix:
        name["suffix"] = suffix
    return name or None


def _name_key(name: dict[str, Any] | None) -> str:
    name = name or {}
    return "^".join([name.get("family", ""), *name.get("given", [])])


def organization(ctx: Ctx, name: str | None, ident: str | None, authority: Comp | None = None) -> dict | None:
    """An Organization stand-in from a name and/or identifier; returns the reference to it."""
    if not name and not ident:
        return None
    auth = authority.code(1) if authority else None
    key = (f"{auth}|{ident}" if auth else ident) if ident else f"name:{name}"
    org: dict[str, Any] = {"resourceType": "Organization", "id": ctx.rid("Organization", str(key))}
    if ident:
        identifier: dict[str, Any] = {}
        system = authority_system(ctx, authority) if authority else None
        if system:
            identifier["system"] = system
        identifier["value"] = ident
        org["identifier"] = [identifier]
    if name:
        org["name"] = name
    ref = ctx.share(org)
    if name:
        ref["display"] = name
    return ref


def xon(ctx: Ctx, v: Comp | None) -> dict[str, str] | None:
    """XON -> an Organization stand-in (identifier from XON-10, else XON-3)."""
    if v is None:
        return None
    return organization(ctx, v.get(1), v.code(10) or v.code(3), v.sub(6))


def hd(ctx: Ctx, v: Comp | None) -> dict[str, str] | None:
    """HD -> an Organization stand-in (a facility or application namespace)."""
    if v is None or not (v.code(1) or v.code(2)):
        return None
    return organization(ctx, None, v.code(1) or v.code(2), Comp([None, v.get(2), v.get(3)]))


def hd_text(v: Comp | None) -> str | None:
    if v is None:
        return None
    return v.code(1) or v.code(2)


# PL components from the widest place to the narrowest, with their location-physical-type codes.
_PL_LEVELS = ((4, "si"), (7, "bu"), (1, None), (8, "lvl"), (2, "ro"), (3, "bd"))


def pl(ctx: Ctx, v: Comp | None) -> dict[str, str] | None:
    """PL -> a chain of Location stand-ins (facility > building > point of care > floor > room > bed);
    returns the reference to the narrowest."""
    if v is None:
        return None
    path: list[str] = []
    parent: dict[str, str] | None = None
    ref: dict[str, str] | None = None
    for comp, physical in _PL_LEVELS:
        value = v.sub(comp).code(1) if comp == 4 else v.code(comp)
        if not value:
            continue
        path.append(f"{comp}={value}")
        loc: dict[str, Any] = {
            "resourceType": "Location",
            "id": ctx.rid("Location", "|".join(path)),
            "identifier": [{"value": value}],
            "name": value,
            "mode": "instance",
        }
        if physical:
            loc["physicalType"] = {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/location-physical-type",
                        "code": physical,
                    }
                ]
            }
        if parent:
            loc["partOf"] = parent
        parent = ref = ctx.share(loc)
    if ref is not None and v.get(9):
        ctx.shared[("Location", ref["reference"].split("/")[1])]["description"] = v.get(9)
    return ref


def place(resource: dict[str, Any], key: str, value: Any, after: tuple[str, ...]) -> None:
    """Set resource[key], in place, where FHIR's element order puts it: after the last of `after`
    present (the elements that precede it), so output reads in the specification's order."""
    if key in resource:
        resource[key] = value
        return
    items = list(resource.items())
    at = max((i for i, (k, _) in enumerate(items) if k in after), default=len(items) - 1)
    items.insert(at + 1, (key, value))
    resource.clear()
    resource.update(items)

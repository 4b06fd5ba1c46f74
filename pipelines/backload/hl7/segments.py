"""FHIR resources -> HL7 v2 segments (the v2-to-FHIR segment maps read in reverse): MSH, EVN, PID, PD1, PV1,
ORC, OBR, OBX, NTE, SPM, RXA, RXR, TXA."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import orjson

from pipelines.backload.hl7.encode import (
    Coder,
    comp,
    cx,
    ei,
    esc,
    is_code,
    segment,
    ts,
    xad,
    xpn,
    xtn,
)
from pipelines.convert.hl7v2 import vocab

Lookup = Any  # callable: "Type/id" reference dict -> resource or None
Ids = tuple[str | None, str | None]  # placer's and filler's order numbers (order_ids)
Person = Any  # callable: a Practitioner's reference -> its XCN or None (messages.Context.person)


@cache
def maps() -> dict[str, Any]:
    # From the package's own folder (a compiled build of this module lies elsewhere: native.py).
    found = resources.files("pipelines.backload.hl7").joinpath("maps.json")
    return json.loads(found.read_text(encoding="utf-8"))


@cache
def reverse(map_name: str) -> dict[str, str]:
    """FHIR code -> v2 code for one concept map: the preferred choice, else the map's first row."""
    out: dict[str, str] = dict(maps()["prefer"].get(map_name, {}))
    for (name, v2_code), hit in vocab.concept_maps().items():
        if name == map_name:
            out.setdefault(hit["code"], v2_code)
    return out


@dataclass(frozen=True)
class Header:
    """MSH-3..6 and the version: who sends, who receives."""

    version: str = "2.5.1"
    sending_application: str = "EHRLIFT"
    sending_facility: str = "EHRLIFT"
    receiving_application: str = "MILLENNIUM"
    receiving_facility: str = "MILLENNIUM"
    processing_id: str = "P"


def msh(h: Header, message_type: str, control_id: str, when: str) -> str:
    return segment(
        "MSH",
        {
            1: "^~\\&",
            2: esc(h.sending_application),
            3: esc(h.sending_facility),
            4: esc(h.receiving_application),
            5: esc(h.receiving_facility),
            6: when,
            8: message_type,
            9: control_id,
            10: h.processing_id,
            11: h.version,
            # 2.3.1's table 0211 has no UTF-8: such interfaces agree the encoding when they are set up.
            17: "UNICODE UTF-8" if h.version != "2.3.1" else None,
        },
    )


def evn(event: str, when: str) -> str:
    return segment("EVN", {1: event, 2: when})


def pid(patient: dict[str, Any], coder: Coder) -> str:
    idents = [x for x in (cx(i, "MR") for i in patient.get("identifier") or []) if x]
    names = [x for x in (xpn(n) for n in patient.get("name") or []) if x]
    homes = [t for t in patient.get("telecom") or [] if t.get("use") != "work"]
    works = [t for t in patient.get("telecom") or [] if t.get("use") == "work"]
    deceased = patient.get("deceasedDateTime")
    return segment(
        "PID",
        {
            1: "1",
            3: "~".join(idents),
            5: "~".join(names),
            7: ts(patient.get("birthDate")),
            8: reverse("administrative_sex").get(patient.get("gender") or ""),
            11: "~".join(
                x for x in (xad(a, maps()["country_alpha3"]) for a in patient.get("address") or []) if x
            ),
            13: "~".join(x for x in (xtn(t) for t in homes) if x),
            14: "~".join(x for x in (xtn(t) for t in works) if x),
            16: _marital(patient.get("maritalStatus"), coder),
            29: ts(deceased),
            30: "Y" if deceased or patient.get("deceasedBoolean") else None,
        },
    )


def _marital(cc: Any, coder: Coder) -> str | None:
    for c in (cc or {}).get("coding") or []:
        code = reverse("marital_status").get(c.get("code") or "")
        if code:
            return is_code("http://terminology.hl7.org/CodeSystem/v2-0002", code, c.get("display"))
    return coder.cwe(cc)


def pd1(patient: dict[str, Any], person: Person) -> str | None:
    gps = [x for x in (person(r) for r in patient.get("generalPractitioner") or []) if x]
    if not gps:
        return None
    return segment("PD1", {4: "~".join(gps)})


def pv1(encounter: dict[str, Any] | None, lookup: Lookup, person: Person) -> str:
    """The visit, or "PV1|1|N" (not applicable) where a message needs PV1 and the resource has none."""
    if encounter is None:
        return "PV1|1|N"
    klass = (encounter.get("class") or {}).get("code")
    pclass = reverse("patient_class").get(klass or "") or "U"
    attending = None
    for p in encounter.get("participant") or []:
        attending = person(p.get("individual"))
        if attending:
            break
    visit = next((cx(i, "VN") for i in encounter.get("identifier") or [] if i.get("value")), None)
    period = encounter.get("period") or {}
    loc = None
    for entry in encounter.get("location") or []:
        place = lookup(entry.get("location"))
        if place and place.get("name"):
            loc = comp(esc(place["name"]))
            break
    return segment(
        "PV1",
        {
            1: "1",
            2: pclass,
            3: loc,
            7: attending,
            19: visit,
            44: ts(period.get("start")),
            45: ts(period.get("end")),
        },
    )


def _ident(resource: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The identifier typed PLAC or FILL, else (for FILL) the first one."""
    idents = [i for i in resource.get("identifier") or [] if i.get("value")]
    for i in idents:
        if any(c.get("code") == kind for c in (i.get("type") or {}).get("coding") or []):
            return i
    if kind == "FILL":
        untyped = [i for i in idents if not i.get("type")]
        return untyped[0] if untyped else None
    return None


def order_ids(resource: dict[str, Any]) -> tuple[str | None, str | None]:
    """The placer's and the filler's order numbers (EI), as ORC-2/3 and OBR-2/3 both carry them."""
    return ei(_ident(resource, "PLAC")), ei(_ident(resource, "FILL"))


def orc(resource: dict[str, Any], ordering: str | None = None, ids: Ids | None = None) -> str:
    placer, filler = ids or order_ids(resource)
    if ordering:
        return segment("ORC", {1: "RE", 2: placer, 3: filler, 12: ordering})
    return f"ORC|RE|{placer or ''}|{filler or ''}".rstrip("|")


def obr(report: dict[str, Any], coder: Coder, person: Person, version: str, ids: Ids | None = None) -> str:
    effective = report.get("effectivePeriod") or {}
    start = report.get("effectiveDateTime") or effective.get("start")
    section = None
    for cat in report.get("category") or []:
        for c in cat.get("coding") or []:
            if c.get("system") == vocab.v2_table_uri("0074"):
                section = esc(c.get("code"))
    interpreters = [x for x in (person(r) for r in report.get("resultsInterpreter") or []) if x]
    placer, filler = ids or order_ids(report)
    return segment(
        "OBR",
        {
            1: "1",
            2: placer,
            3: filler,
            4: coder.cwe(report.get("code")),
            7: ts(start),
            8: ts(effective.get("end")),
            22: ts(report.get("issued")),
            24: section,
            25: reverse("result_status").get(report.get("status") or "", "F"),
            32: "~".join(interpreters) if version != "2.3.1" else None,
        },
    )


VALUE_KEYS = (
    "valueQuantity", "valueCodeableConcept", "valueString", "valueInteger", "valueDateTime", "valueRange",
    "valueBoolean",
)  # fmt: skip  # the value[x] types an OBX carries (see _value)


def components(obs: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in obs.get("component") or [] if isinstance(c, dict) and c.get("code")]


def own_obx(obs: dict[str, Any]) -> bool:
    """Whether an Observation goes as an OBX of its own: not a panel that only groups its components (such
    an OBX would have no value, which OBX-2's condition refuses unless OBX-11 is X)."""
    return not obs.keys().isdisjoint(VALUE_KEYS) or bool(obs.get("dataAbsentReason")) or not components(obs)


def obxs(obs: dict[str, Any], first: int, sub_id: int, coder: Coder, version: str) -> tuple[list[str], int]:
    """An Observation's OBX (OBX-1 = first), its NTEs, then one OBX per component in the same OBR group
    (v2-to-FHIR's OBX[Observation-Component] read in reverse): OBX-4 n for the observation, n.k for its
    k-th component, which carries the observation's status and time. With the number of OBX among them
    (OBX-1 runs on over the report's groups)."""
    status = reverse("observation_status").get(obs.get("status") or "", "F")
    when = ts(obs.get("effectiveDateTime") or (obs.get("effectivePeriod") or {}).get("start"))
    parts = components(obs) if "component" in obs else []
    own = not obs.keys().isdisjoint(VALUE_KEYS) or bool(obs.get("dataAbsentReason")) or not parts
    out = [_obx(obs, first, str(sub_id), status, when, coder, version)] if own else []
    for k, c in enumerate(parts, start=1):
        out.append(_obx(c, first + len(out), f"{sub_id}.{k}", status, when, coder, version))
    notes = obs.get("note")
    if not notes:
        return out, len(out)
    # NTE follows the group's first OBX: the notes are the observation's
    return out[:1] + ntes(notes) + out[1:], len(out)


def _obx(
    item: dict[str, Any], set_id: int, sub_id: str, status: str, when: str | None, coder: Coder, version: str
) -> str:
    """One OBX from an Observation or one of its components (they share code, value[x], dataAbsentReason,
    interpretation and referenceRange)."""
    kind, value, units = _value(item, coder, version)
    ranges = item.get("referenceRange")
    rr = None
    if ranges:
        low, high = (ranges[0].get("low") or {}).get("value"), (ranges[0].get("high") or {}).get("value")
        rr = esc(ranges[0].get("text")) or (f"{_num(low) or ''}-{_num(high) or ''}" if low or high else None)
    interps = item.get("interpretation")
    interp = "~".join([x for x in (_interpretation(i) for i in interps) if x]) if interps else ""
    if not kind and item.get("dataAbsentReason"):
        status = "X"
        # OBX-2 may stay empty with X from 2.5 on; 2.3.1's definitions require it: an empty ST then.
        kind = "ST" if version == "2.3.1" else None
    code = coder.cwe(item.get("code"))
    # Absent in most results: not looked up as concepts.
    method = coder.cwe(item["method"]) if "method" in item else None
    site = coder.cwe(item["bodySite"]) if version != "2.3.1" and "bodySite" in item else None
    # The OBX template, written out (an OBX per result makes this the builders' hottest line): fields in
    # order, empty ones empty, trailing ones dropped. No encoded value ends with "|" (they are escaped).
    return (
        f"OBX|{set_id}|{kind or ''}|{code or ''}|{sub_id}|{value or ''}|{units or ''}|{rr or ''}|{interp}"
        f"|||{status}|||{when or ''}|||{method or ''}|||{site or ''}"
    ).rstrip("|")


def _interpretation(cc: Any) -> str | None:
    """OBX-8 from one interpretation concept (table 0078), remembered per concept: a lab's few flags."""
    if not isinstance(cc, dict):
        return _v2_code(cc, "0078")
    key = orjson.dumps(cc)
    found = _FLAGS.get(key, _NONE)
    if found is _NONE:
        if len(_FLAGS) >= 10_000:
            _FLAGS.clear()
        found = _FLAGS[key] = _v2_code(cc, "0078")
    return found  # type: ignore[return-value]


_FLAGS: dict[bytes, str | None] = {}
_NONE = object()


def _num(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, float) and v.is_integer() and "e" not in repr(v):
        return repr(v)  # 118.0 stays 118.0: the reader keeps the decimal's precision
    return str(v)


def _unit(q: Any) -> str | None:
    code, unit = q.get("code"), q.get("unit")
    if not code and not unit:
        return None
    system = q.get("system")
    if not (
        (code is None or code.__class__ is str)
        and (unit is None or unit.__class__ is str)
        and (system is None or system.__class__ is str)
    ):  # malformed: built as it is, not kept
        return _unit_of(q, code, unit)
    key = (code, unit, system)
    found = _UNITS.get(key)  # a lab's few units, in result after result
    if found is None:
        if len(_UNITS) >= 10_000:
            _UNITS.clear()
        found = _UNITS[key] = _unit_of(q, code, unit)
    return found


_UNITS: dict[tuple[Any, Any, Any], str] = {}


def _unit_of(q: Any, code: Any, unit: Any) -> str:
    if q.get("system") == "http://unitsofmeasure.org" and code:
        return comp(esc(code), esc(unit) if unit != code else None, "UCUM")
    return comp(esc(code or unit), esc(unit) if code and unit != code else None)


def _value(obs: dict[str, Any], coder: Coder, version: str) -> tuple[str | None, str | None, str | None]:
    cw = "CE" if version == "2.3.1" else "CWE"
    if "valueQuantity" in obs:
        q = obs["valueQuantity"]
        comparator = q.get("comparator")
        if comparator:
            return "SN", comp(esc(comparator), _num(q.get("value"))), _unit(q)
        return "NM", _num(q.get("value")), _unit(q)
    if "valueCodeableConcept" in obs:
        return cw, coder.cwe(obs["valueCodeableConcept"]), None
    if "valueString" in obs:
        s = obs["valueString"]
        return ("TX" if len(s) > 199 or "\n" in s else "ST"), esc(s), None
    if "valueInteger" in obs:
        return "NM", str(obs["valueInteger"]), None
    if "valueDateTime" in obs:
        return "TS", ts(obs["valueDateTime"]), None
    if "valueRange" in obs:
        r = obs["valueRange"]
        low, high = (r.get("low") or {}).get("value"), (r.get("high") or {}).get("value")
        return "SN", comp(None, _num(low), "-", _num(high)), _unit(r.get("low") or r.get("high") or {})
    if "valueBoolean" in obs:
        return cw, comp("Y" if obs["valueBoolean"] else "N", None, "HL70136"), None
    return None, None, None


def ntes(notes: Any) -> list[str]:
    return [
        segment("NTE", {1: str(i), 3: esc(n.get("text"))}) for i, n in enumerate(notes, 1) if n.get("text")
    ]


def spm(specimen: dict[str, Any], set_id: int, coder: Coder) -> str:
    placer, filler = _ident(specimen, "PLAC"), _ident(specimen, "FILL")
    ids = None
    if placer or filler:
        ids = comp(*(x.replace("^", "&") if x else None for x in (ei(placer), ei(filler))))
    collection = specimen.get("collection") or {}
    collected = collection.get("collectedDateTime") or (collection.get("collectedPeriod") or {}).get("start")
    return segment(
        "SPM",
        {
            1: str(set_id),
            2: ids,
            4: coder.cwe(specimen.get("type")) or "UNK^unknown^NULLFL",
            17: ts(collected),
            18: ts(specimen.get("receivedTime")),
        },
    )


def rxa(im: dict[str, Any], coder: Coder, lookup: Lookup, person: Person) -> str:
    when = ts(im.get("occurrenceDateTime"))
    dose = im.get("doseQuantity") or {}
    notes = maps()["administration_notes"]
    origin = notes["primary"] if im.get("primarySource", True) else notes["historical"]
    performer = None
    for p in im.get("performer") or []:
        performer = person(p.get("actor"))
        if performer:
            break
    maker = lookup(im.get("manufacturer"))
    mvx = None
    if maker:
        code = next((i.get("value") for i in maker.get("identifier") or [] if i.get("value")), None)
        mvx = comp(esc(code), esc(maker.get("name")), "MVX" if code else None)
    not_done = im.get("status") == "not-done"
    return segment(
        "RXA",
        {
            1: "0",
            2: "1",
            3: when,
            4: when,
            5: coder.cwe(im.get("vaccineCode")),
            6: _num(dose.get("value")) or "999",
            7: _unit(dose) if dose.get("value") is not None else None,
            9: origin if not not_done else None,
            10: performer,
            15: esc(im.get("lotNumber")),
            16: ts(im.get("expirationDate")),
            17: mvx,
            18: coder.cwe(im.get("statusReason")) if not_done else None,
            19: "~".join(x for x in (coder.cwe(r) for r in im.get("reasonCode") or []) if x),
            # The IG maps RXA-21 "D" to entered-in-error and RXA-20 to status otherwise.
            20: None if im.get("status") == "entered-in-error" else _completion(im),
            21: "D" if im.get("status") == "entered-in-error" else "A",
            22: ts(im.get("recorded")),
        },
    )


def _completion(im: dict[str, Any]) -> str:
    """RXA-20: CP done, RE refused (statusReason a refusal), NA not administered for any other reason."""
    if im.get("status") != "not-done":
        return "CP"
    refusals = maps()["refusal_reasons"]
    for c in (im.get("statusReason") or {}).get("coding") or []:
        if c.get("code") in refusals.get(c.get("system") or "", ()):
            return "RE"
    return "NA"


def rxr(im: dict[str, Any], coder: Coder) -> str | None:
    route, site = coder.cwe(im.get("route")), coder.cwe(im.get("site"))
    if not route:
        return None
    return segment("RXR", {1: route, 2: site})


_TXA_STATUS = {"final": "AU", "preliminary": "IP", "amended": "LA", "entered-in-error": "DE"}


def txa(doc: dict[str, Any], coder: Coder, person: Person, version: str) -> str:
    ctx = doc.get("context") or {}
    authors = [x for x in (person(a) for a in doc.get("author") or []) if x]
    placer = [x for x in (ei(i) for i in doc.get("identifier") or []) if x]
    status = (
        "DE" if doc.get("status") == "entered-in-error" else _TXA_STATUS.get(doc.get("docStatus") or "", "AU")
    )
    confidentiality = None
    for label in doc.get("securityLabel") or []:
        for c in label.get("coding") or []:
            if c.get("code"):
                confidentiality = maps()["confidentiality"].get(c["code"], esc(c["code"]))
    return segment(
        "TXA",
        {
            1: "1",
            2: esc(_first_code(doc.get("type"))),  # IS: the code alone (the type goes in full in OBX-3)
            3: "TX",
            4: ts((ctx.get("period") or {}).get("start") or doc.get("date")),
            9: "~".join(authors),
            12: ei(doc.get("masterIdentifier")),
            14: "~".join(placer),
            17: status,
            18: confidentiality,
        },
    )


def _first_code(cc: Any) -> Any:
    return next((c.get("code") for c in (cc or {}).get("coding") or [] if c.get("code")), None)


def _v2_code(cc: Any, table: str) -> str | None:
    """An IS/ID field: the code from the field's own v2 table, else the first code."""
    codings = [c for c in (cc or {}).get("coding") or [] if c.get("code")]
    own = next((c for c in codings if c.get("system") == vocab.v2_table_uri(table)), None)
    return esc((own or (codings[0] if codings else {})).get("code"))

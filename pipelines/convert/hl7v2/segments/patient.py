"""PID (+PD1, NK1, MRG) -> Patient, after the IG's PID[Patient], PD1[Patient] and NK1[Patient] maps."""

from __future__ import annotations

from typing import Any

from pipelines.common.unit import Quarantine
from pipelines.convert.hl7v2 import vocab
from pipelines.convert.hl7v2.datatypes import (
    V2_0203,
    Ctx,
    coded,
    cwe,
    cx,
    cx_key,
    date,
    dtm,
    first,
    language_cc,
    reps,
    val,
    where,
    xad,
    xcn,
    xon,
    xpn,
    xtn,
)
from pipelines.convert.hl7v2.datatypes import (
    period as dtm_period,
)

EXT = "http://hl7.org/fhir/StructureDefinition/"
US_CORE = "http://hl7.org/fhir/us/core/StructureDefinition/"
CDCREC = "urn:oid:2.16.840.1.113883.6.238"
_OMB_RACE = {"1002-5", "2028-9", "2054-5", "2076-8", "2106-3", "2131-1"}
_OMB_ETHNICITY = {"2135-2", "2186-5"}


def patient_key(pid: Any) -> str:
    """The Patient's identity: the first PID-3 identifier with an assigning authority, else the first."""
    ids = [c for c in reps(pid, 3) if c.code(1)]
    if not ids:
        raise Quarantine("hl7_missing_required", "PID-3 is empty", "Patient")
    for c in ids:
        if c.sub(4).code(1) or c.sub(4).code(2):
            return cx_key(c)
    return cx_key(ids[0])


# A Patient known only by the message's own demographics carries this tag: identity linking, not the
# converter, decides which person it is, and the compliance report counts them.
NO_TRUSTED_IDENTIFIER = {
    "system": "urn:ehrlift:identity",
    "code": "no-trusted-identifier",
    "display": "identified from the message's demographics, without an identifier",
}


def demographic_key(pid: Any, submitter: str | None) -> str | None:
    """A Patient key from PID's own content when PID-3 is empty (ELR senders identify by demographics):
    name, birth date, sex, address and the submitting facility, normalized so that re-sends of the same
    person by the same submitter agree. None when name or birth date is missing: too little to be anyone."""
    name, addr = first(pid, 5), first(pid, 11)
    family = (name.sub(1).code(1) or "") if name is not None else ""
    given = (name.code(2) or "") if name is not None else ""
    born = (val(pid, 7) or "")[:8]
    if not (family or given) or not born:
        return None
    parts = [family, given, born, val(pid, 8) or ""]
    if addr is not None:
        parts += [addr.sub(1).code(1) or "", (addr.code(5) or "")[:5]]
    parts.append(submitter or "")
    return "demographic:" + "|".join(" ".join(p.upper().split()) for p in parts)


def patient_ref(ctx: Ctx, pid: Any) -> dict[str, str]:
    return {"reference": f"Patient/{ctx.rid('Patient', patient_key(pid))}"}


def patient(
    ctx: Ctx, pid: Any, pd1: Any = None, nk1s: list[Any] = (), key: str | None = None
) -> dict[str, Any]:
    """PID -> Patient (with PD1's providers and NK1's contacts); a demographic key marks it untrusted."""
    p: dict[str, Any] = {"resourceType": "Patient", "id": ctx.rid("Patient", key or patient_key(pid))}
    meta = ctx.meta()
    if key is not None and key.startswith("demographic:"):
        meta["tag"] = [dict(NO_TRUSTED_IDENTIFIER)]
    if meta:
        p["meta"] = meta
    ext: list[dict[str, Any]] = []
    idents = [cx(ctx, c) for n in (2, 3, 4) for c in reps(pid, n)]
    ssn = val(pid, 19)
    if ssn:
        idents.append(
            {
                "type": {"coding": [{"system": V2_0203, "code": "SS"}]},
                "system": "http://hl7.org/fhir/sid/us-ssn",
                "value": ssn,
            }
        )
    dl = first(pid, 20)
    if dl is not None and dl.code(1):
        idents.append({"type": {"coding": [{"system": V2_0203, "code": "DL"}]}, "value": dl.code(1)})
    found = _unique([i for i in idents if i])
    if found:
        p["identifier"] = found
    names = [xpn(c) for n in (5, 9) for c in reps(pid, n)]
    if any(names):
        p["name"] = [n for n in names if n]
    telecom = [xtn(c, "home") for c in reps(pid, 13)] + [xtn(c, "work") for c in reps(pid, 14)]
    telecom += [xtn(c) for c in reps(pid, 40)]
    if any(telecom):
        p["telecom"] = [t for t in telecom if t]
    gender = vocab.code_of("administrative_sex", val(pid, 8))
    if gender:
        p["gender"] = gender
    elif val(pid, 8):
        ctx.lost[where(pid, 8)] += 1
    birth = val(pid, 7)
    if birth:
        bd = date(ctx, birth, where(pid, 7))
        if bd:
            p["birthDate"] = bd
            full = dtm(ctx, birth, where(pid, 7))
            if full and "T" in full:
                p["_birthDate"] = {"extension": [{"url": EXT + "patient-birthTime", "valueDateTime": full}]}
    death = dtm(ctx, val(pid, 29), where(pid, 29))
    if death:
        p["deceasedDateTime"] = death
    elif vocab.code_of("yes_no", val(pid, 30)):
        p["deceasedBoolean"] = vocab.code_of("yes_no", val(pid, 30)) == "true"
    addresses = [xad(ctx, c) for c in reps(pid, 11)]
    if any(addresses):
        p["address"] = [a for a in addresses if a]
    county = val(pid, 12)
    if county:
        if len(p.get("address", [])) == 1 and "district" not in p["address"][0]:
            p["address"][0]["district"] = county
        else:
            p.setdefault("address", []).append({"district": county})
    marital = coded(ctx, pid, 16, "0002")
    if marital:
        mapped = vocab.coding_of("marital_status", val(pid, 16))
        if mapped:
            marital["coding"] = [mapped, *marital.get("coding", [])]
        p["maritalStatus"] = marital
    birth_order = val(pid, 25)
    if birth_order and birth_order.isdigit():
        p["multipleBirthInteger"] = int(birth_order)
    elif vocab.code_of("yes_no", val(pid, 24)):
        p["multipleBirthBoolean"] = vocab.code_of("yes_no", val(pid, 24)) == "true"
    language = language_cc(ctx, first(pid, 15))
    if language:
        p["communication"] = [{"language": language}]
    _extensions(ctx, pid, ext)
    if ext:
        p["extension"] = ext
    if pd1 is not None:
        gp = [xon(ctx, c) for c in reps(pd1, 3)] + [xcn(ctx, c) for c in reps(pd1, 4)]
        if any(gp):
            p["generalPractitioner"] = [g for g in gp if g]
    contacts = [c for c in (contact(ctx, nk1) for nk1 in nk1s) if c]
    if contacts:
        p["contact"] = contacts
    return {k: p[k] for k in _ORDER if k in p}


_ORDER = [
    "resourceType",
    "id",
    "meta",
    "extension",
    "identifier",
    "active",
    "name",
    "telecom",
    "gender",
    "birthDate",
    "_birthDate",
    "deceasedBoolean",
    "deceasedDateTime",
    "address",
    "maritalStatus",
    "multipleBirthBoolean",
    "multipleBirthInteger",
    "contact",
    "communication",
    "generalPractitioner",
    "managingOrganization",
    "link",
]


def _extensions(ctx: Ctx, pid: Any, ext: list[dict[str, Any]]) -> None:
    maiden = next((n for n in (xpn(c) for c in reps(pid, 6)) if n and n.get("family")), None)
    if maiden:
        ext.append({"url": EXT + "patient-mothersMaidenName", "valueString": maiden["family"]})
    for n, url, omb in ((10, "us-core-race", _OMB_RACE), (22, "us-core-ethnicity", _OMB_ETHNICITY)):
        codes = [c for c in (cwe(ctx, r) for r in reps(pid, n)) if c]
        if codes:
            ext.append(_omb(codes, url, omb))
    religion = coded(ctx, pid, 17, "0006")
    if religion:
        ext.append({"url": EXT + "patient-religion", "valueCodeableConcept": religion})
    if val(pid, 23):
        ext.append({"url": EXT + "patient-birthPlace", "valueAddress": {"text": val(pid, 23)}})
    for n, url in ((26, "patient-citizenship"), (28, "patient-nationality")):
        for cc in (cwe(ctx, r) for r in reps(pid, n)):
            if cc:
                ext.append({"url": EXT + url, "extension": [{"url": "code", "valueCodeableConcept": cc}]})


def _omb(codes: list[dict[str, Any]], url: str, omb: set[str]) -> dict[str, Any]:
    """US Core race/ethnicity: CDC codes of the OMB categories as ombCategory, every other coding
    (local ones included: no code is dropped) as detailed, and the text the extension requires."""
    parts: list[dict[str, Any]] = []
    texts: list[str] = []
    for cc in codes:
        for coding in cc.get("coding", []):
            kind = "ombCategory" if coding.get("system") == CDCREC and coding["code"] in omb else "detailed"
            parts.append({"url": kind, "valueCoding": coding})
        label = cc.get("text") or next((c.get("display") or c["code"] for c in cc.get("coding", [])), None)
        if label:
            texts.append(label)
    parts.append({"url": "text", "valueString": ", ".join(dict.fromkeys(texts))})
    return {"url": US_CORE + url, "extension": parts}


def contact(ctx: Ctx, nk1: Any) -> dict[str, Any] | None:
    """NK1 -> Patient.contact."""
    c: dict[str, Any] = {}
    relationship = []
    rel = coded(ctx, nk1, 3, "0063")
    if rel:
        mapped = vocab.coding_of("relationship", val(nk1, 3))
        if mapped:
            rel["coding"] = [mapped, *rel.get("coding", [])]
        relationship.append(rel)
    role = coded(ctx, nk1, 7, "0131")
    if role:
        relationship.append(role)
    if relationship:
        c["relationship"] = relationship
    name = next((n for n in (xpn(r) for r in reps(nk1, 2)) if n), None)
    if name:
        c["name"] = name
    telecom = [xtn(r) for r in reps(nk1, 5)] + [xtn(r, "work") for r in reps(nk1, 6)]
    telecom += [xtn(r) for n in (40, 41) for r in reps(nk1, n)]
    if any(telecom):
        c["telecom"] = [t for t in telecom if t]
    address = next((a for a in (xad(ctx, r) for r in reps(nk1, 4)) if a), None)
    if address:
        c["address"] = address
    gender = vocab.code_of("administrative_sex", val(nk1, 15))
    if gender:
        c["gender"] = gender
    org = xon(ctx, first(nk1, 13))
    if org:
        c["organization"] = org
    period = dtm_period(ctx, nk1, 8, 9)
    if period:
        c["period"] = period
    return c if set(c) - {"relationship"} else None


def merge_links(ctx: Ctx, survivor: dict[str, Any], mrg: Any) -> dict[str, Any] | None:
    """MRG -> the retired Patient (replaced-by the survivor) and the survivor's link and old identifiers.

    Returns the retired Patient, or None when MRG names no prior identifier.
    """
    olds = [c for c in reps(mrg, 1) if c.code(1)] or [c for c in reps(mrg, 4) if c.code(1)]
    if not olds:
        return None
    old_key = next((cx_key(c) for c in olds if c.sub(4).code(1) or c.sub(4).code(2)), cx_key(olds[0]))
    old_id = ctx.rid("Patient", old_key)
    if old_id == survivor["id"]:
        return None
    old_idents = [i for i in (cx(ctx, c) for c in olds) if i]
    for ident in old_idents:
        ident["use"] = "old"
    survivor["identifier"] = _unique(survivor.get("identifier", []) + old_idents)
    survivor.setdefault("link", []).append({"other": {"reference": f"Patient/{old_id}"}, "type": "replaces"})
    retired: dict[str, Any] = {"resourceType": "Patient", "id": old_id}
    if survivor.get("meta"):
        retired["meta"] = survivor["meta"]
    retired["identifier"] = [{k: v for k, v in i.items() if k != "use"} for i in old_idents]
    retired["active"] = False
    retired["link"] = [{"other": {"reference": f"Patient/{survivor['id']}"}, "type": "replaced-by"}]
    return retired


def _unique(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen

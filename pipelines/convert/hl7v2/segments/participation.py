"""ROL and PRT -> PractitionerRole stand-ins and participants, after the IG's ROL[...] and PRT[...] maps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipelines.convert.hl7v2 import vocab
from pipelines.convert.hl7v2.datatypes import (
    Ctx,
    coded,
    dtm,
    ei,
    first,
    pl,
    reps,
    val,
    where,
    xcn,
    xon,
    xtn,
)

# Field numbers of ROL and PRT: role, person, begin, end, telecom, location, organization, specialty.
_FIELDS = {
    "ROL": {
        "role": 3,
        "table": "0443",
        "person": 4,
        "start": 5,
        "end": 6,
        "telecom": 12,
        "loc": 13,
        "org": 14,
    },
    "PRT": {
        "role": 4,
        "table": "0912",
        "person": 5,
        "start": 11,
        "end": 12,
        "telecom": 15,
        "loc": 9,
        "org": 8,
    },
}
# ROL-2/PRT-2 action code DE: the sender withdraws the role, so it is not a participant.
_DELETED = "DE"


@dataclass
class Role:
    code: str  # ROL-3.1 or PRT-4.1, upper-cased ("" when absent)
    concept: dict[str, Any] | None  # the role as a CodeableConcept (mapped coding first, the v2 code kept)
    ref: dict[str, str]  # the PractitionerRole (or, with no person, the Organization)
    practitioner: dict[str, str] | None
    period: dict[str, str] | None


def role(ctx: Ctx, seg: Any) -> Role | None:
    """A ROL or PRT as a PractitionerRole stand-in; None when it names no person and no organization
    (a device or location participation) or withdraws the role."""
    f = _FIELDS[seg.name]
    if (val(seg, 2) or "").upper() == _DELETED:
        return None
    concept = coded(ctx, seg, f["role"], f["table"])
    code = (val(seg, f["role"]) or "").upper()
    # ROL-3 by the IG's ProviderRole map, PRT-4 by its Participation map.
    mapped = (
        vocab.coding_of("provider_role" if seg.name == "ROL" else "participation", code) if code else None
    )
    if concept and mapped:
        concept["coding"] = [mapped, *concept.get("coding", [])]
    person = next((r for r in (xcn(ctx, c) for c in reps(seg, f["person"])) if r), None)
    org = xon(ctx, first(seg, f["org"]))
    if person is None and org is None:
        return None
    period = {
        k: v
        for k, v in (
            ("start", dtm(ctx, val(seg, f["start"]), where(seg, f["start"]))),
            ("end", dtm(ctx, val(seg, f["end"]), where(seg, f["end"]))),
        )
        if v
    } or None
    if person is None:
        return Role(code, concept, org or {}, None, period)
    loc = pl(ctx, first(seg, f["loc"]))
    key = "|".join(x["reference"] if x else "" for x in (person, org, loc)) + f"|{code}"
    pr: dict[str, Any] = {"resourceType": "PractitionerRole", "id": ctx.rid("PractitionerRole", key)}
    ident = ei(ctx, first(seg, 1)) if seg.name == "ROL" else None
    if ident:
        pr["identifier"] = [ident]
    if period:
        pr["period"] = period
    pr["practitioner"] = {"reference": person["reference"]}
    if org:
        pr["organization"] = {"reference": org["reference"]}
    if concept:
        pr["code"] = [concept]
    specialty = coded(ctx, seg, 6) if seg.name == "PRT" else None
    if specialty:
        pr["specialty"] = [specialty]
    if loc:
        pr["location"] = [loc]
    telecom = [t for t in (xtn(c) for c in reps(seg, f["telecom"])) if t]
    if telecom:
        pr["telecom"] = telecom
    ref = ctx.share(pr)
    if person.get("display"):
        ref["display"] = person["display"]
    return Role(code, concept, ref, person, period)


def participant_type(r: Role) -> list[dict[str, Any]] | None:
    return [r.concept] if r.concept else None


def care_team(ctx: Ctx, roles: list[Role], subject: dict, patient_key: str) -> dict[str, Any]:
    """Patient-level roles other than the primary care provider -> the patient's CareTeam (the IG's
    ROL[CareTeam] and PRT[CareTeam]); one per patient and source, the newest message's."""
    ct: dict[str, Any] = {"resourceType": "CareTeam", "id": ctx.rid("CareTeam", f"{patient_key}|roles")}
    meta = ctx.meta()
    if meta:
        ct["meta"] = meta
    ct["status"] = "active"
    ct["subject"] = subject
    members = []
    for r in roles:
        m: dict[str, Any] = {}
        if r.concept:
            m["role"] = [r.concept]
        m["member"] = r.ref
        if r.period:
            m["period"] = r.period
        members.append(m)
    ct["participant"] = members
    return ct


def withdrawn(seg: Any) -> bool:
    return (val(seg, 2) or "").upper() == _DELETED


def device(ctx: Ctx, prt: Any) -> dict[str, str] | None:
    """PRT-10 (a device participating in an observation) -> a Device stand-in (the IG's PRT[Device])."""
    if prt.name != "PRT" or withdrawn(prt):
        return None
    ids = [i for i in (ei(ctx, r) for r in reps(prt, 10)) if i]
    if not ids:
        return None
    key = "|".join(f"{i.get('system', '')}|{i['value']}" for i in ids)
    d: dict[str, Any] = {"resourceType": "Device", "id": ctx.rid("Device", f"prt:{key}"), "identifier": ids}
    return ctx.share(d)

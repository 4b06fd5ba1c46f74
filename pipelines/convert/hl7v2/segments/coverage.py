"""IN1 (+IN2) -> Coverage, GT1 -> Account guarantor, NK1 -> RelatedPerson (the IG's IN1[Coverage] and
NK1[RelatedPerson] maps; GT1 and IN2, which the IG leaves unmapped, by FHIR R4's Account and Coverage)."""

from __future__ import annotations

from typing import Any

from pipelines.convert.hl7v2 import vocab
from pipelines.convert.hl7v2.datatypes import (
    V2_0203,
    Ctx,
    coded,
    cx,
    cx_key,
    date,
    first,
    language_cc,
    organization,
    reps,
    val,
    where,
    xad,
    xpn,
    xtn,
)
from pipelines.convert.hl7v2.datatypes import (
    period as dtm_period,
)

COVERAGE_CLASS = "http://terminology.hl7.org/CodeSystem/coverage-class"
DATA_ABSENT = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
SSN = "http://hl7.org/fhir/sid/us-ssn"
SELF = "SEL"
# NK1-3 codes the IG keeps on Patient.contact only: employer, emergency contact and agency roles.
_CONTACT_ONLY = {"EMR", "E", "F", "I", "S"}


def _relationship(ctx: Ctx, seg: Any, n: int) -> dict[str, Any] | None:
    """A v2 table 0063 relationship, the IG's Relationship map's coding first, the v2 code kept."""
    rel = coded(ctx, seg, n, "0063")
    mapped = vocab.coding_of("relationship", val(seg, n))
    if rel and mapped:
        rel["coding"] = [mapped, *rel.get("coding", [])]
    return rel


def _ssn(value: str | None) -> dict[str, Any] | None:
    if not value:
        return None
    return {"type": {"coding": [{"system": V2_0203, "code": "SS"}]}, "system": SSN, "value": value}


def person_key(patient_key: str, name: dict[str, Any], relationship: str | None) -> str:
    """A related person's identity: the patient, the person's name and relationship. NK1, IN1's insured
    and GT1's guarantor name the same spouse or parent with different identifiers (or none), so the
    name is what they share; merge_person joins what each segment says."""
    names = "^".join([name.get("family", ""), *name.get("given", [])]).upper()
    return f"{patient_key}|person:{names}|{(relationship or '').upper()}"


_PERSON_ORDER = ("resourceType", "id", "meta", "identifier", "active", "patient", "relationship", "name")
_PERSON_ORDER += ("telecom", "gender", "birthDate", "address", "photo", "period", "communication")


def merge_person(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two segments' RelatedPerson of one message joined: lists unioned, first value of the rest kept."""
    out = dict(a)
    for k, v in b.items():
        if k not in out:
            out[k] = v
        elif isinstance(v, list):
            out[k] = out[k] + [x for x in v if x not in out[k]]
    return {k: out[k] for k in _PERSON_ORDER if k in out}


def _related_person(
    ctx: Ctx,
    key: str,
    subject: dict,
    relationship: list[dict[str, Any]],
    names: list[dict[str, Any]],
    idents: list[dict[str, Any]],
    telecom: list[dict[str, Any]],
    addresses: list[dict[str, Any]],
    gender: str | None,
    birth: str | None,
) -> dict[str, Any]:
    rp: dict[str, Any] = {"resourceType": "RelatedPerson", "id": ctx.rid("RelatedPerson", key)}
    meta = ctx.meta()
    if meta:
        rp["meta"] = meta
    if idents:
        rp["identifier"] = idents
    rp["patient"] = subject
    if relationship:
        rp["relationship"] = relationship
    for k, v in (("name", names), ("telecom", telecom), ("gender", gender), ("birthDate", birth)):
        if v:
            rp[k] = v
    if addresses:
        rp["address"] = addresses
    return rp


# --- NK1 ------------------------------------------------------------------------------------------------


def nk1_related_person(ctx: Ctx, nk1: Any, subject: dict, patient_key: str) -> dict[str, Any] | None:
    """NK1 -> RelatedPerson, except for the employer and agency roles the IG keeps on Patient.contact."""
    if (val(nk1, 3) or "").upper() in _CONTACT_ONLY:
        return None
    names = [n for n in (xpn(r) for k in (2, 30) for r in reps(nk1, k)) if n]
    if not names:
        return None
    relationship = [r for r in (_relationship(ctx, nk1, 3), coded(ctx, nk1, 7, "0131")) if r]
    idents = [i for i in (cx(ctx, r) for k in (12, 33) for r in reps(nk1, k)) if i]
    ssn = _ssn(val(nk1, 37))
    if ssn:
        idents.append(ssn)
    telecom = [xtn(r) for r in reps(nk1, 5)] + [xtn(r, "work") for r in reps(nk1, 6)]
    telecom += [xtn(r) for k in (31, 40, 41) for r in reps(nk1, k)]
    addresses = [a for a in (xad(ctx, r) for k in (4, 32) for r in reps(nk1, k)) if a]
    rp = _related_person(
        ctx,
        person_key(patient_key, names[0], val(nk1, 3)),
        subject,
        relationship,
        names,
        idents,
        [t for t in telecom if t],
        addresses,
        vocab.code_of("administrative_sex", val(nk1, 15)),
        date(ctx, val(nk1, 16), where(nk1, 16)),
    )
    period = dtm_period(ctx, nk1, 8, 9)
    if period:
        rp["period"] = period
    language = language_cc(ctx, first(nk1, 20))
    if language:
        rp["communication"] = [{"language": language}]
    return rp


# --- IN1 / IN2 --------------------------------------------------------------------------------------------


def coverage(
    ctx: Ctx, in1: Any, in2: Any, subject: dict, patient_key: str
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """IN1 (+IN2) -> Coverage; returns it and the subscriber's RelatedPerson when the insured is not
    the patient (IN1-17 other than SEL)."""
    company = first(in1, 4)
    company_id = first(in1, 3)
    payor = organization(
        ctx,
        company.get(1) if company else None,
        (company_id.code(1) if company_id else None) or (company.code(10) if company else None),
        company_id.sub(4) if company_id else None,
    )
    if payor is not None:
        address = next((a for a in (xad(ctx, r) for r in reps(in1, 5)) if a), None)
        org = ctx.shared[("Organization", payor["reference"].split("/")[1])]
        if address and "address" not in org:
            org["address"] = [address]
    member = val(in1, 36) or val(in1, 49)
    plan = val(in1, 2)
    key = f"{patient_key}|{payor['reference'] if payor else ''}|{member or val(in1, 8) or ''}|{plan or ''}"
    if not (member or plan or payor):
        key += f"|in1:{val(in1, 1) or ''}|{ctx.unit_key}"
    c: dict[str, Any] = {"resourceType": "Coverage", "id": ctx.rid("Coverage", key)}
    meta = ctx.meta()
    if meta:
        c["meta"] = meta
    idents = []
    plan_id = first(in1, 2)
    if plan_id is not None and plan_id.code(1):
        ident: dict[str, Any] = {}
        system = vocab.system_uri(plan_id.code(3), ctx.source_system)
        if system:
            ident["system"] = system
        ident["value"] = plan_id.code(1)
        idents.append(ident)
    if val(in1, 36):
        idents.append({"type": {"text": "policy number"}, "value": val(in1, 36)})
    if in2 is not None:
        for n, label in ((6, "Medicare health insurance card number"), (8, "Medicaid case number")):
            if val(in2, n):
                idents.append({"type": {"text": label}, "value": val(in2, n)})
        for r in reps(in2, 61):
            ident = cx(ctx, r, type_code="MB")
            if ident:
                idents.append(ident)
    if idents:
        c["identifier"] = idents
    c["status"] = "active"
    plan_type = coded(ctx, in1, 15, "0086")
    if plan_type:
        c["type"] = plan_type
    holder_id = first(in1, 10)
    subscriber_ext = None
    if holder_id is not None and (holder_id.code(5) or "").upper() == "SN":
        subscriber_ext = cx(ctx, holder_id)
        holder_id = None
    employer = first(in1, 11)
    holder = organization(
        ctx,
        employer.get(1) if employer else None,
        (holder_id.code(1) if holder_id else None) or (employer.code(10) if employer else None),
        holder_id.sub(4) if holder_id else None,
    )
    if holder:
        c["policyHolder"] = holder
    if subscriber_ext:
        c["extension"] = [
            {
                "url": "http://hl7.org/fhir/5.0/StructureDefinition/extension-subscriberId",
                "valueIdentifier": subscriber_ext,
            }
        ]
    insured = first(in1, 49)
    if insured is not None and insured.code(1):
        c["subscriberId"] = insured.code(1)
    relationship = _relationship(ctx, in1, 17)
    related = None
    if (val(in1, 17) or "").upper() == SELF:
        c["subscriber"] = subject
    else:
        related = _subscriber(ctx, in1, in2, subject, patient_key, relationship)
        if related is not None:
            c["subscriber"] = {"reference": f"RelatedPerson/{related['id']}"}
    c["beneficiary"] = subject
    if relationship:
        c["relationship"] = relationship
    period = dtm_period(ctx, in1, 12, 13)
    if period:
        c["period"] = period
    # Coverage.payor is required: an IN1 naming no company says so rather than inventing one.
    c["payor"] = [payor] if payor else [{"extension": [{"url": DATA_ABSENT, "valueCode": "unknown"}]}]
    classes = []
    if val(in1, 8):
        group = {"type": {"coding": [{"system": COVERAGE_CLASS, "code": "group"}]}, "value": val(in1, 8)}
        if val(in1, 9):
            group["name"] = val(in1, 9)
        classes.append(group)
    if classes:
        c["class"] = classes
    priority = val(in1, 22)
    if priority and priority.isdigit() and int(priority) > 0:
        c["order"] = int(priority)
    return c, related


def _subscriber(
    ctx: Ctx, in1: Any, in2: Any, subject: dict, patient_key: str, relationship: dict | None
) -> dict[str, Any] | None:
    names = [n for n in (xpn(r) for r in reps(in1, 16)) if n]
    if not names:
        return None
    idents = []
    insured = first(in1, 49)
    if insured is not None:
        ident = cx(ctx, insured)
        if ident:
            idents.append(ident)
    if in2 is not None:
        for r in reps(in2, 1):
            ident = cx(ctx, r, type_code="EI")
            if ident:
                idents.append(ident)
        ssn = _ssn(val(in2, 2))
        if ssn:
            idents.append(ssn)
    telecom = [t for t in (xtn(r) for r in reps(in2, 63)) if t] if in2 is not None else []
    addresses = [a for a in (xad(ctx, r) for r in reps(in1, 19)) if a]
    return _related_person(
        ctx,
        person_key(patient_key, names[0], val(in1, 17)),
        subject,
        [relationship] if relationship else [],
        names,
        idents,
        telecom,
        addresses,
        vocab.code_of("administrative_sex", val(in1, 43)),
        date(ctx, val(in1, 18), where(in1, 18)),
    )


# --- GT1 ----------------------------------------------------------------------------------------------------


def account_key(pid: Any, patient_key: str) -> str:
    """The Account's identity: the patient account number (PID-18), else one account per patient."""
    number = first(pid, 18)
    if number is not None and number.code(1):
        return "acct:" + cx_key(number)
    return f"patient:{patient_key}"


def guarantor(ctx: Ctx, gt1: Any, subject: dict, patient_key: str) -> tuple[dict, dict | None] | None:
    """GT1 -> an Account.guarantor entry and the party's resource (RelatedPerson or, for an
    organization guarantor, None: its Organization is a stand-in); the patient when GT1-11 is SEL."""
    party: dict[str, Any] | None = None
    resource = None
    names = [n for n in (xpn(r) for r in reps(gt1, 3)) if n]
    if (val(gt1, 11) or "").upper() == SELF:
        party = subject
    elif names:
        idents = [i for i in (cx(ctx, r) for r in reps(gt1, 2)) if i]
        ssn = _ssn(val(gt1, 12))
        if ssn:
            idents.append(ssn)
        relationship = _relationship(ctx, gt1, 11)
        telecom = [xtn(r, "home") for r in reps(gt1, 6)] + [xtn(r, "work") for r in reps(gt1, 7)]
        resource = _related_person(
            ctx,
            person_key(patient_key, names[0], val(gt1, 11)),
            subject,
            [relationship] if relationship else [],
            names,
            idents,
            [t for t in telecom if t],
            [a for a in (xad(ctx, r) for r in reps(gt1, 5)) if a],
            vocab.code_of("administrative_sex", val(gt1, 9)),
            date(ctx, val(gt1, 8), where(gt1, 8)),
        )
        party = {"reference": f"RelatedPerson/{resource['id']}"}
    else:
        org = first(gt1, 21)
        if org is not None:
            party = organization(ctx, org.get(1), org.code(10) or org.code(3), org.sub(6))
    if party is None:
        return None
    entry: dict[str, Any] = {"party": party}
    period = {
        k: v
        for k, v in (
            ("start", date(ctx, val(gt1, 13), where(gt1, 13))),
            ("end", date(ctx, val(gt1, 14), where(gt1, 14))),
        )
        if v
    }
    if period:
        entry["period"] = period
    return entry, resource


def account(
    ctx: Ctx, pid: Any, key: str, subject: dict, guarantors: list[dict], coverages: list[tuple[dict, Any]]
) -> dict[str, Any]:
    """The patient's Account (the IG's PID[Account]: PID-18 its identifier) with its guarantors and the
    message's coverages in IN1-22 priority order."""
    a: dict[str, Any] = {"resourceType": "Account", "id": ctx.rid("Account", key)}
    meta = ctx.meta()
    if meta:
        a["meta"] = meta
    number = first(pid, 18)
    ident = cx(ctx, number, type_code="AN") if number is not None else None
    if ident:
        a["identifier"] = [ident]
    a["status"] = "active"
    a["subject"] = [subject]
    if coverages:
        a["coverage"] = [
            {"coverage": ref, **({"priority": c["order"]} if "order" in c else {})} for c, ref in coverages
        ]
    if guarantors:
        a["guarantor"] = guarantors
    return a

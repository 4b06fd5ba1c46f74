"""Payers section: Coverage Activity -> one Coverage per Policy Activity (C-CDA on FHIR's Coverage map)."""

from __future__ import annotations

from typing import Any

from pipelines.convert.ccda.datatypes import (
    add_contacts,
    child,
    children,
    codeable,
    effective,
    human_names,
    id_pairs,
    identifier,
    template_ids,
)
from pipelines.convert.ccda.document import Doc, EntrySkipped, Section, entry_label, section_label
from pipelines.convert.ccda.practitioners import organization
from pipelines.convert.ccda.sections.common import base

T = "2.16.840.1.113883.10.20.22.4."
POLICY, PAYER, COVERED, HOLDER = T + "61", T + "87", T + "89", T + "90"


def coverage_activity(doc: Doc, stmt: Any, section: Section) -> None:
    """Coverage Activity (an act holding Policy Activities in COMP entryRelationships), or a Policy
    Activity standing alone -> Coverage per policy; a policy without a payer names no coverage."""
    policies = (
        [stmt]
        if POLICY in template_ids(stmt)
        else [
            act
            for rel in children(stmt, "entryRelationship")
            for act in children(rel, "act")
            if POLICY in template_ids(act) or not template_ids(act)
        ]
    )
    # Each policy is counted on its own (found, converted or not), so a policy without a payer inside
    # an activity that converted is not lost without a trace in the document's accounting.
    label = section_label(section.element)
    made = 0
    for policy in policies:
        coverage = policy_coverage(doc, policy)
        made += coverage is not None
        doc.count_nested(label, entry_label(policy), coverage is not None, "policy without a payer")
    if not made:
        raise EntrySkipped("no policy with a payer")


def policy_coverage(doc: Doc, policy: Any) -> dict[str, str] | None:
    payer = None
    for performer in children(policy, "performer"):
        entity = child(performer, "assignedEntity")
        code = child(entity, "code") if entity is not None else None
        if PAYER in template_ids(performer) or (code is not None and code.get("code") == "PAYOR"):
            payer = organization(doc, child(entity, "representedOrganization"))
            if payer is not None:
                break
    if payer is None:
        return None
    res = base(doc, "Coverage", policy, subject_field="beneficiary")
    beneficiary = res.pop("beneficiary")
    status = child(policy, "statusCode")
    res["status"] = (
        "cancelled" if status is not None and status.get("code") in ("cancelled", "aborted") else "active"
    )
    kind = codeable(child(policy, "code"), doc)
    if kind:
        res["type"] = kind
    holder = _participant(policy, "HLD", HOLDER)
    if holder is not None:
        person = _holder(doc, holder)
        if person:
            res["policyHolder"] = person
    covered = _participant(policy, "COV", COVERED)
    role = child(covered, "participantRole") if covered is not None else None
    member = next((e for r, e in id_pairs(role) if e), None) if role is not None else None
    if member:
        res["subscriberId"] = member
    res["beneficiary"] = beneficiary
    relationship = codeable(child(role, "code"), doc) if role is not None else None
    if relationship:
        res["relationship"] = relationship
    period = effective(child(covered, "time")) if covered is not None else None
    if period is not None:
        res["period"] = period[1] if period[0] == "Period" else {"start": period[1], "end": period[1]}
    res["payor"] = [payer]
    return doc.emit(res, policy)


def _participant(policy: Any, type_code: str, template: str) -> Any:
    for p in children(policy, "participant"):
        if p.get("typeCode") == type_code or template in template_ids(p):
            return p
    return None


def _holder(doc: Doc, participant: Any) -> dict[str, str] | None:
    """The policy holder as a RelatedPerson of the patient (C-CDA on FHIR: Coverage.policyHolder)."""
    role = child(participant, "participantRole")
    names = human_names(child(role, "playingEntity")) if role is not None else []
    if not names:
        return None
    res: dict[str, Any] = {"resourceType": "RelatedPerson", "id": doc.rid("RelatedPerson", role)}
    ids = [identifier(r, e) for r, e in id_pairs(role)]
    if ids:
        res["identifier"] = ids
    res["patient"] = doc.patient_ref
    res["relationship"] = [
        {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": "POLHOLD"}]}
    ]
    res["name"] = names
    add_contacts(res, role)
    return doc.emit(res, role)

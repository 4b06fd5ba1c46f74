"""C-CDA people and authorship beyond the Patient: PractitionerRole, RelatedPerson, Provenance."""

from __future__ import annotations

import re
from typing import Any

from pipelines.convert.ccda.datatypes import (
    add_contacts,
    child,
    children,
    codeable,
    human_names,
    id_key,
    ts,
)
from pipelines.convert.ccda.document import Doc
from pipelines.convert.ccda.practitioners import organization, practitioner
from pipelines.convert.fhir.prepare import warehouse_id

PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
ROLE_CLASS = "http://terminology.hl7.org/CodeSystem/v3-RoleClass"
ROLE_CODE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
# Provenance.recorded is an instant: a time without seconds and zone says too little to be one.
_INSTANT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")
# associatedEntity classes that are people around the patient, not providers (v3 RoleClass).
_PERSONAL = {"NOK", "ECON", "GUARD", "PRS", "CAREGIVER", "AGNT", "GUAR"}
# Resource types that are parties, places or bookkeeping: never the target of an entry's authorship.
NOT_TARGETS = frozenset(
    {"Patient", "Practitioner", "PractitionerRole", "Organization", "Location", "Device", "Medication"}
    | {"Provenance", "RelatedPerson"}
)


def related_persons(doc: Doc) -> list[dict[str, str]]:
    """The patient's guardians and the header's personal participants (next of kin, emergency contacts,
    caregivers) -> RelatedPerson."""
    made = []
    person = child(child(child(doc.root, "recordTarget"), "patientRole"), "patient")
    for guardian in children(person, "guardian") if person is not None else ():
        ref = _related(doc, guardian, child(guardian, "guardianPerson"), "GUARD")
        if ref:
            made.append(ref)
    for participant in children(doc.root, "participant"):
        entity = child(participant, "associatedEntity")
        if entity is None or entity.get("classCode") not in _PERSONAL:
            continue
        ref = _related(doc, entity, child(entity, "associatedPerson"), entity.get("classCode"))
        if ref:
            made.append(ref)
    return made


def _related(doc: Doc, role: Any, person: Any, role_class: str) -> dict[str, str] | None:
    names = human_names(person) if person is not None else []
    if not names:
        return None  # a relationship without a person named identifies no one
    res: dict[str, Any] = {"resourceType": "RelatedPerson", "id": doc.rid("RelatedPerson", role)}
    relationship = []
    rel = codeable(child(role, "code"), doc)
    if rel is not None:
        relationship.append(rel)
    relationship.append({"coding": [{"system": ROLE_CLASS, "code": role_class}]})
    res["patient"] = doc.patient_ref
    res["relationship"] = relationship
    res["name"] = names
    add_contacts(res, role)
    return doc.emit(res, role)


def _instant(value: str | None) -> str | None:
    return value if value and _INSTANT.fullmatch(value) else None


def _author_agents(doc: Doc, el: Any) -> tuple[list[dict[str, Any]], str | None]:
    """el's <author>s as Provenance agents (who, on behalf of whom) and the first author time that is an
    instant."""
    agents, when = [], None
    for author in children(el, "author"):
        assigned = child(author, "assignedAuthor")
        who = practitioner(doc, assigned) if assigned is not None else None
        if who is None:
            continue
        agent: dict[str, Any] = {"type": _type("author", "Author"), "who": who}
        org = organization(doc, child(assigned, "representedOrganization"))
        if org is not None and org != who:
            agent["onBehalfOf"] = org
        if agent not in agents:
            agents.append(agent)
        t = child(author, "time")
        when = when or _instant(ts(t.get("value")) if t is not None else None)
    return agents, when


def _type(code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": PARTICIPANT_TYPE, "code": code, "display": display}]}


def document_provenance(doc: Doc, composition: dict[str, str]) -> dict[str, str] | None:
    """The document's authorship: its authors, legal authenticator and custodian, of the Composition."""
    agents, when = _author_agents(doc, doc.root)
    legal = child(child(doc.root, "legalAuthenticator"), "assignedEntity")
    who = practitioner(doc, legal) if legal is not None else None
    if who is not None:
        agents.append({"type": _type("legal", "Legal Authenticator"), "who": who})
    custodian = child(
        child(child(doc.root, "custodian"), "assignedCustodian"), "representedCustodianOrganization"
    )
    org = organization(doc, custodian) if custodian is not None else None
    if org is not None:
        agents.append({"type": _type("custodian", "Custodian"), "who": org})
    return _provenance(doc, [composition], agents, when or _instant(doc.last_updated), doc.doc_key)


def entry_provenance(doc: Doc, stmt: Any, made: list[tuple[str, str]]) -> dict[str, str] | None:
    """An entry's own <author>s as the Provenance of the resources the entry made."""
    if child(stmt, "author") is None:
        return None
    targets = [{"reference": f"{t}/{i}"} for t, i in dict.fromkeys(made) if t not in NOT_TARGETS]
    if not targets:
        return None
    agents, when = _author_agents(doc, stmt)
    return _provenance(doc, targets, agents, when, id_key(stmt) or doc.position_key(stmt))


def _provenance(
    doc: Doc, targets: list[dict[str, str]], agents: list[dict[str, Any]], when: str | None, key: str
) -> dict[str, str] | None:
    if not agents or when is None:
        return None  # R4 requires an agent and an instant: an author time without a zone is no instant
    res = {
        "resourceType": "Provenance",
        "id": warehouse_id(doc.source_system, "Provenance", f"{key}|provenance"),
        "target": targets,
        "recorded": when,
        "agent": agents,
    }
    return doc.emit(res)

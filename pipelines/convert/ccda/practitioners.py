"""The people and organizations a document names: authors and performers -> Practitioner with their
PractitionerRole, and organizations; the header, sections, places and provenance all reference them."""

from __future__ import annotations

from typing import Any

from lxml import etree

from pipelines.convert.ccda.datatypes import (
    add_contacts,
    child,
    children,
    clean,
    codeable,
    human_names,
    id_pairs,
    identifier,
    identifiers,
    pairs_key,
)
from pipelines.convert.ccda.document import Doc
from pipelines.convert.fhir.prepare import warehouse_id


def practitioner(doc: Doc, assigned: Any) -> dict[str, str] | None:
    """assignedAuthor / assignedEntity -> Practitioner (a person) or Organization (no person named)."""
    if assigned is None:
        return None
    person = child(assigned, "assignedPerson")
    if person is None:
        return organization(doc, child(assigned, "representedOrganization"))
    pairs = id_pairs(assigned)
    # The same author recurs on entry after entry, byte for byte: with an <id> the Practitioner depends
    # only on the element's content (never on its position), so a repeat is the reference already made.
    seen = etree.tostring(assigned, with_tail=False) if pairs else None
    if seen is not None and seen in doc.parties:
        ref = doc.parties[seen]
        return dict(ref) if ref is not None else None
    ref = _practitioner(doc, assigned, person, pairs)
    if seen is not None:
        doc.parties[seen] = ref
        return dict(ref) if ref is not None else None
    return ref


def _practitioner(
    doc: Doc, assigned: Any, person: Any, pairs: list[tuple[str, str | None]]
) -> dict[str, str] | None:
    res: dict[str, Any] = {
        "resourceType": "Practitioner",
        "id": doc.rid("Practitioner", assigned, pairs_key(pairs)),
    }
    ids = [identifier(r, e) for r, e in pairs]
    if ids:
        res["identifier"] = ids
    names = human_names(person)
    if names:
        res["name"] = names
    add_contacts(res, assigned)
    qual = codeable(child(assigned, "code"), doc)
    if qual:
        res["qualification"] = [{"code": qual}]
    if len(res) == 2:
        return None  # neither an id nor a name: nothing to identify the person by
    ref = doc.emit(res, assigned)
    practitioner_role(doc, assigned, ref, organization(doc, child(assigned, "representedOrganization")))
    return ref


def organization(doc: Doc, org: Any) -> dict[str, str] | None:
    if org is None or org.get("nullFlavor"):
        return None
    res: dict[str, Any] = {"resourceType": "Organization", "id": doc.rid("Organization", org)}
    ids = identifiers(org)
    if ids:
        res["identifier"] = ids
    name = clean(" ".join(clean(n.text) or "" for n in children(org, "name")))
    if name:
        res["name"] = name
    add_contacts(res, org)
    if "identifier" not in res and "name" not in res:
        return None
    return doc.emit(res, org)


def practitioner_role(
    doc: Doc, assigned: Any, practitioner: dict[str, str], organization: dict[str, str] | None
) -> dict[str, str] | None:
    """An author's or performer's role: the person, the organization they act for, their specialty
    (assignedAuthor/code, NUCC taxonomy in US documents). None when neither organization nor code."""
    specialty = codeable(child(assigned, "code"), doc)
    if organization is None and specialty is None:
        return None
    code = ((specialty or {}).get("coding") or [{}])[0]
    key = "|".join(
        [
            practitioner["reference"],
            (organization or {}).get("reference", ""),
            f"{code.get('system', '')}|{code.get('code', '')}",
        ]
    )
    res: dict[str, Any] = {
        "resourceType": "PractitionerRole",
        "id": warehouse_id(doc.source_system, "PractitionerRole", key),
        "practitioner": practitioner,
    }
    if organization is not None:
        res["organization"] = organization
    if specialty is not None:
        res["specialty"] = [specialty]
    return doc.emit(res, assigned)

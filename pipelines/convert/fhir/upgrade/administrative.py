"""Patient, Practitioner, Organization and Location: DSTU2 -> STU3 and STU3 -> R4."""

from __future__ import annotations

import hashlib
from typing import Any

from pipelines.convert.fhir.upgrade.base import Mover, as_list
from pipelines.convert.fhir.upgrade.datatypes import r2_human_name, r2_human_names

_LINK_TYPE_R2 = {"replace": "replaced-by", "refer": "refer", "seealso": "seealso"}


def r2_patient(m: Mover) -> None:
    m.same("identifier", "active", "telecom", "gender", "birthDate", "address", "maritalStatus", "photo")
    m.same("managingOrganization")
    m.rename("name", "name", r2_human_names)
    m.choice("deceased")
    m.choice("multipleBirth")
    m.rename("careProvider", "generalPractitioner")
    m.each("contact", _r2_contact)
    m.each("animal", lambda c: c.same("species", "breed", "genderStatus"))
    m.each("communication", lambda c: c.same("language", "preferred"))
    m.each("link", _r2_link)


def _r2_contact(m: Mover) -> None:
    m.same("relationship", "telecom", "address", "gender", "organization", "period")
    m.rename("name", "name", r2_human_name)


def _r2_link(m: Mover) -> None:
    m.same("other")
    if m.has("type"):
        m.out["type"] = _LINK_TYPE_R2.get(m.take("type")) or m.fail(
            "upgrade_unmappable_code", f"{m.path}.type code has no counterpart in the next release"
        )


def r3_patient(m: Mover) -> None:
    m.same("identifier", "active", "name", "telecom", "gender", "birthDate", "address", "maritalStatus")
    m.same("photo", "generalPractitioner", "managingOrganization")
    m.choice("deceased")
    m.choice("multipleBirth")
    m.each("contact", lambda c: c.same(*_CONTACT))
    m.each("communication", lambda c: c.same("language", "preferred"))
    m.each("link", lambda c: c.same("other", "type"))
    if m.has("animal"):
        m.fail("upgrade_no_r4_home", "Patient.animal (veterinary patient) has no R4 element")


_CONTACT = ("relationship", "name", "telecom", "address", "gender", "organization", "period")


def r2_practitioner(m: Mover) -> list[dict[str, Any]]:
    """DSTU2 practitionerRole becomes PractitionerRole resources, as HL7's map does."""
    m.same("identifier", "active", "telecom", "address", "gender", "birthDate", "photo")
    m.rename("name", "name", r2_human_names)
    m.each("qualification", lambda c: c.same("identifier", "code", "period", "issuer"))
    m.same("communication")
    roles = []
    for n, role in enumerate(as_list(m.take("practitionerRole")), 1):
        child = Mover(role, m.release, "PractitionerRole", "Practitioner.practitionerRole")
        child.same("extension", "modifierExtension", "specialty", "period", "location", "healthcareService")
        child.rename("managingOrganization", "organization")
        child.rename("role", "code", lambda v: [v])
        body = child.finish()
        source_id = m.src.get("id") or m.out.get("id")
        if not isinstance(source_id, str):
            m.fail(
                "upgrade_no_r4_home", "Practitioner.practitionerRole without a Practitioner id to point to"
            )
        role_id = hashlib.sha256(f"{source_id}\x1fpractitionerRole\x1f{n}".encode()).hexdigest()[:32]
        roles.append(
            {
                "resourceType": "PractitionerRole",
                "id": role_id,
                "practitioner": {"reference": f"Practitioner/{source_id}"},
                **body,
            }
        )
    return roles


def r3_practitioner(m: Mover) -> None:
    m.same("identifier", "active", "name", "telecom", "address", "gender", "birthDate", "photo")
    m.same("communication")
    m.each("qualification", lambda c: c.same("identifier", "code", "period", "issuer"))


def r2_organization(m: Mover) -> None:
    m.same("identifier", "active", "name", "telecom", "address", "partOf")
    m.rename("type", "type", lambda v: [v])
    m.each("contact", _r2_org_contact)


def _r2_org_contact(m: Mover) -> None:
    m.same("purpose", "telecom", "address")
    m.rename("name", "name", r2_human_name)


def r3_organization(m: Mover) -> None:
    m.same("identifier", "active", "type", "name", "alias", "telecom", "address", "partOf", "endpoint")
    m.each("contact", lambda c: c.same("purpose", "name", "telecom", "address"))


def r2_location(m: Mover) -> None:
    m.same("identifier", "name", "description", "mode", "type", "telecom", "address", "physicalType")
    m.same("managingOrganization", "partOf")
    m.code("status", "r2.location-status")
    m.each("position", lambda c: c.same("longitude", "latitude", "altitude"))


def r3_location(m: Mover) -> None:
    m.same("identifier", "status", "operationalStatus", "name", "alias", "description", "mode", "telecom")
    m.same("address", "physicalType", "managingOrganization", "partOf", "endpoint")
    m.rename("type", "type", lambda v: [v])
    m.each("position", lambda c: c.same("longitude", "latitude", "altitude"))

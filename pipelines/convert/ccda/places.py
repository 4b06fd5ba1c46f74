"""Places and devices: delivery locations -> Location; authoring devices, product instances -> Device."""

from __future__ import annotations

from typing import Any

from pipelines.convert.ccda.datatypes import (
    addresses,
    child,
    children,
    clean,
    codeable,
    id_pairs,
    identifier,
    pairs_key,
    telecoms,
)
from pipelines.convert.ccda.document import Doc
from pipelines.convert.ccda.practitioners import organization

FDA_UDI = "2.16.840.1.113883.3.3719"
DEVICE_NAME = {"manufacturerModelName": "model-name", "softwareName": "other"}


def _name(el: Any) -> str | None:
    return clean(" ".join(clean(n.text) or "" for n in children(el, "name"))) if el is not None else None


def location(doc: Doc, role: Any, place: Any = None, organization: dict[str, str] | None = None) -> Any:
    """healthCareFacility (with its location place) or participantRole[@classCode=SDLOC] -> Location."""
    if role is None or role.get("nullFlavor"):
        return None
    pairs = id_pairs(role)
    res: dict[str, Any] = {"resourceType": "Location", "id": doc.rid("Location", role, pairs_key(pairs))}
    ids = [identifier(r, e) for r, e in pairs]
    if ids:
        res["identifier"] = ids
    res["mode"] = "instance"
    playing = place if place is not None else child(role, "playingEntity")
    name = _name(playing)
    if name:
        res["name"] = name
    kind = codeable(child(role, "code"), doc, text_from_display=True)
    if kind:
        res["type"] = [kind]
    tel = telecoms(role)
    if tel:
        res["telecom"] = tel
    addr = addresses(place if place is not None and child(place, "addr") is not None else role)
    if addr:
        res["address"] = addr[0]
    if organization:
        res["managingOrganization"] = organization
    if not (ids or name or kind or addr):
        return None  # nothing to tell this place by
    return doc.emit(res, role)


def encompassing_location(doc: Doc) -> None:
    """encompassingEncounter/location/healthCareFacility -> Location, the header Encounter's location."""
    if doc.encounter_ref is None:
        return
    enc = child(child(doc.root, "componentOf"), "encompassingEncounter")
    facility = child(child(enc, "location"), "healthCareFacility")
    if facility is None:
        return
    org = organization(doc, child(facility, "serviceProviderOrganization"))
    ref = location(doc, facility, child(facility, "location"), org)
    encounter = doc.out.get(tuple(doc.encounter_ref["reference"].split("/", 1)))  # type: ignore[arg-type]
    if ref and encounter is not None:
        encounter["location"] = [{"location": ref}]


def entry_locations(doc: Doc, stmt: Any) -> list[dict[str, str]]:
    """participant[@typeCode=LOC]/participantRole (Service Delivery Location) -> Location references."""
    refs = []
    for p in children(stmt, "participant"):
        if p.get("typeCode") == "LOC":
            ref = location(doc, child(p, "participantRole"))
            if ref and ref not in refs:
                refs.append(ref)
    return refs


def authoring_device(doc: Doc, assigned: Any) -> dict[str, str] | None:
    """assignedAuthor with assignedAuthoringDevice -> Device (the system that authored the content)."""
    device = child(assigned, "assignedAuthoringDevice")
    if device is None:
        return None
    pairs = id_pairs(assigned)
    res: dict[str, Any] = {"resourceType": "Device", "id": doc.rid("Device", assigned, pairs_key(pairs))}
    ids = [identifier(r, e) for r, e in pairs]
    if ids:
        res["identifier"] = ids
    names = []
    for field, kind in DEVICE_NAME.items():
        text = clean(child(device, field).text) if child(device, field) is not None else None
        if text:
            names.append({"name": text, "type": kind})
    if names:
        res["deviceName"] = names
    kind = codeable(child(device, "code"), doc, text_from_display=True)
    if kind:
        res["type"] = kind
    tel = telecoms(assigned)
    if tel:
        res["contact"] = tel
    owner = organization(doc, child(assigned, "representedOrganization"))
    if owner:
        res["owner"] = owner
    if not (ids or names or kind):
        return None
    return doc.emit(res, assigned)


def product_instances(doc: Doc, stmt: Any) -> list[dict[str, str]]:
    """participant[@typeCode=DEV]/participantRole (Product Instance) -> Device references (the patient's)."""
    refs = []
    for p in children(stmt, "participant"):
        if p.get("typeCode") != "DEV":
            continue
        role = child(p, "participantRole")
        if role is None or role.get("nullFlavor"):
            continue
        pairs = id_pairs(role)
        res: dict[str, Any] = {"resourceType": "Device", "id": doc.rid("Device", role, pairs_key(pairs))}
        udi = [e for r, e in pairs if r == FDA_UDI and e]
        ids = [identifier(r, e) for r, e in pairs]
        if ids:
            res["identifier"] = ids
        if udi:
            res["udiCarrier"] = [{"carrierHRF": udi[0]}]
        playing = child(role, "playingDevice")
        kind = codeable(child(playing, "code"), doc, text_from_display=True) if playing is not None else None
        if kind:
            res["type"] = kind
        scoping = child(role, "scopingEntity")
        maker = (
            clean("".join(child(scoping, "desc").itertext())) if child(scoping, "desc") is not None else None
        )
        if maker:
            res["manufacturer"] = maker
        res["patient"] = doc.patient_ref
        if ids or kind:
            ref = doc.emit(res, role)
            if ref not in refs:
                refs.append(ref)
    return refs

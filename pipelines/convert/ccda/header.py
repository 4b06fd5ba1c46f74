"""The C-CDA header: recordTarget -> Patient, authors, custodian, encompassingEncounter, DocumentReference."""

from __future__ import annotations

import base64
from typing import Any

from pipelines.convert.ccda import places
from pipelines.convert.ccda.datatypes import (
    NS,
    SDTC,
    absent,
    addresses,
    child,
    children,
    clean,
    codeable,
    coding,
    effective,
    human_names,
    id_pairs,
    identifier,
    identifiers,
    telecoms,
    ts,
)
from pipelines.convert.ccda.document import Doc
from pipelines.convert.ccda.maps import concept
from pipelines.convert.ccda.practitioners import organization, practitioner

US_CORE = "http://hl7.org/fhir/us/core/StructureDefinition/"
CDC_RACE = "urn:oid:2.16.840.1.113883.6.238"
NULL_FLAVOR = "http://terminology.hl7.org/CodeSystem/v3-NullFlavor"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
OMB_RACE = frozenset({"1002-5", "2028-9", "2054-5", "2076-8", "2106-3"})
OMB_ETHNICITY = frozenset({"2135-2", "2186-5"})
FORMAT_CODES = "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode"
RELATION = {"RPLC": "replaces", "APND": "appends", "XFRM": "transforms"}


class MissingRecordTarget(Exception):
    """The document names no patient (recordTarget/patientRole)."""


def patient(doc: Doc) -> dict[str, str]:
    """Emit the document's Patient and return its reference; raises MissingRecordTarget."""
    role = child(child(doc.root, "recordTarget"), "patientRole")
    if role is None:
        raise MissingRecordTarget
    pairs = id_pairs(role)
    with_ext = [p for p in pairs if p[1]]
    key = f"{with_ext[0][0]}|{with_ext[0][1]}" if with_ext else (pairs[0][0] if pairs else None)
    person = child(role, "patient")
    res: dict[str, Any] = {"resourceType": "Patient", "id": doc.rid("Patient", role, key)}
    ext = _race_ethnicity(person, doc) if person is not None else []
    if ext:
        res["extension"] = ext
    ids = identifiers(role)
    if ids:
        res["identifier"] = ids
    if person is not None:
        names = human_names(person)
        if names:
            res["name"] = names
    tel = telecoms(role)
    if tel:
        res["telecom"] = tel
    if person is not None:
        gender = child(person, "administrativeGenderCode")
        g = concept("gender", gender.get("code")) if gender is not None else None
        if g:
            res["gender"] = g
        birth = child(person, "birthTime")
        b = ts(birth.get("value")) if birth is not None else None
        if b:
            res["birthDate"] = b[:10]
        deceased = person.find(SDTC + "deceasedInd")
        deceased_time = person.find(SDTC + "deceasedTime")
        if deceased_time is not None and ts(deceased_time.get("value")):
            res["deceasedDateTime"] = ts(deceased_time.get("value"))
        elif deceased is not None and deceased.get("value") in ("true", "false"):
            res["deceasedBoolean"] = deceased.get("value") == "true"
    addr = addresses(role)
    if addr:
        res["address"] = addr
    if person is not None:
        marital = codeable(child(person, "maritalStatusCode"), doc)
        if marital:
            res["maritalStatus"] = marital
        comms = []
        for lc in children(person, "languageCommunication"):
            code = child(lc, "languageCode")
            if code is None or not code.get("code"):
                continue
            c: dict[str, Any] = {
                "language": {"coding": [{"system": "urn:ietf:bcp:47", "code": code.get("code")}]}
            }
            pref = child(lc, "preferenceInd")
            if pref is not None and pref.get("value") in ("true", "false"):
                c["preferred"] = pref.get("value") == "true"
            comms.append(c)
        if comms:
            res["communication"] = comms
    org = organization(doc, child(role, "providerOrganization"))
    if org:
        res["managingOrganization"] = org
    doc.patient = res
    doc.patient_ref = {"reference": f"Patient/{res['id']}"}
    return doc.patient_ref


def _race_ethnicity(person: Any, doc: Doc) -> list[dict[str, Any]]:
    out = []
    for name, codes_of, omb in (
        ("race", ("raceCode",), OMB_RACE),
        ("ethnicity", ("ethnicGroupCode",), OMB_ETHNICITY),
    ):
        els = [*children(person, codes_of[0]), *person.findall(SDTC + codes_of[0])]
        parts: list[dict[str, Any]] = []
        texts: list[str] = []
        for el in els:
            code = el.get("code")
            if code:
                c = coding(el) or {}
                c["system"] = CDC_RACE  # the CDC race and ethnicity code system, whatever OID spelling
                parts.append({"url": "ombCategory" if code in omb else "detailed", "valueCoding": c})
                if c.get("display"):
                    texts.append(c["display"])
            elif el.get("nullFlavor") in ("UNK", "ASKU"):
                nf = el.get("nullFlavor")
                parts.append({"url": "ombCategory", "valueCoding": {"system": NULL_FLAVOR, "code": nf}})
                texts.append("Unknown" if nf == "UNK" else "Asked but no answer")
        if parts:
            parts.append({"url": "text", "valueString": ", ".join(texts) or "Unknown"})
            out.append({"url": f"{US_CORE}us-core-{name}", "extension": parts})
    return out


def author_refs(doc: Doc, el: Any, authors: Any = None, devices: bool = False) -> list[dict[str, str]]:
    """Authors -> Practitioner / Organization references (authors: el's <author> children, when already
    found); with devices, an authoring system -> Device (only where the FHIR element may reference one)."""
    refs = []
    for author in children(el, "author") if authors is None else authors:
        assigned = child(author, "assignedAuthor")
        ref = places.authoring_device(doc, assigned) if devices and assigned is not None else None
        ref = ref or practitioner(doc, assigned)
        if ref and ref not in refs:
            refs.append(ref)
    return refs


def author_time(el: Any, authors: Any = None) -> str | None:
    for author in children(el, "author") if authors is None else authors:
        t = child(author, "time")
        if t is not None and ts(t.get("value")):
            return ts(t.get("value"))
    return None


def encounter(doc: Doc) -> dict[str, str] | None:
    """componentOf/encompassingEncounter -> Encounter (the visit the document is about)."""
    enc = child(child(doc.root, "componentOf"), "encompassingEncounter")
    if enc is None:
        return None
    res: dict[str, Any] = {"resourceType": "Encounter", "id": doc.rid("Encounter", enc)}
    ids = identifiers(enc)
    if ids:
        res["identifier"] = ids
    eff = effective(child(enc, "effectiveTime"))
    period = ({"start": eff[1], "end": eff[1]} if eff[0] == "dateTime" else eff[1]) if eff else None
    dispo = codeable(child(enc, "dischargeDispositionCode"), doc)
    res["status"] = "finished" if (period and "end" in period) or dispo else "unknown"
    code_el = child(enc, "code")
    code = coding(code_el) if code_el is not None else None
    res["class"] = code if code and code.get("system") == ACT_CODE else absent(None)
    enc_type = codeable(code_el, doc)
    if enc_type:
        res["type"] = [enc_type]
    res["subject"] = doc.patient_ref
    participants = []
    for p in children(enc, "encounterParticipant"):
        ref = practitioner(doc, child(p, "assignedEntity"))
        if ref:
            part: dict[str, Any] = {"individual": ref}
            if p.get("typeCode"):
                part["type"] = [
                    {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                "code": p.get("typeCode"),
                            }
                        ]
                    }
                ]
            participants.append(part)
    if participants:
        res["participant"] = participants
    if period:
        res["period"] = period
    if dispo:
        res["hospitalization"] = {"dischargeDisposition": dispo}
    facility = child(child(enc, "location"), "healthCareFacility")
    provider = organization(doc, child(facility, "serviceProviderOrganization"))
    if provider:
        res["serviceProvider"] = provider
    doc.encounter_ref = doc.emit(res, enc)
    return doc.encounter_ref


def document_reference(doc: Doc, attachment: dict[str, Any], format_code: str | None) -> None:
    """The document itself, pointing at the landed original byte for byte."""
    root = doc.root
    res: dict[str, Any] = {"resourceType": "DocumentReference", "id": doc.rid("DocumentReference", root)}
    pairs = id_pairs(root)
    if pairs:
        res["masterIdentifier"] = identifier(*pairs[0])
    set_id = child(root, "setId")
    if set_id is not None and set_id.get("root"):
        res["identifier"] = [identifier(set_id.get("root"), set_id.get("extension"))]
    res["status"] = "current"
    if child(root, "legalAuthenticator") is not None:
        res["docStatus"] = "final"
    doc_type = codeable(child(root, "code"), doc, text_from_display=True)
    res["type"] = doc_type or absent(
        child(root, "code").get("nullFlavor") if child(root, "code") is not None else None
    )
    res["subject"] = doc.patient_ref
    if doc.last_updated:
        res["date"] = doc.last_updated
    authors = author_refs(doc, root, devices=True)
    if authors:
        res["author"] = authors
    legal = child(root, "legalAuthenticator")
    if legal is not None:
        ref = practitioner(doc, child(legal, "assignedEntity"))
        if ref:
            res["authenticator"] = ref
    custodian = organization(
        doc, child(child(child(root, "custodian"), "assignedCustodian"), "representedCustodianOrganization")
    )
    if custodian:
        res["custodian"] = custodian
    relates = []
    for rel in children(root, "relatedDocument"):
        parent = child(rel, "parentDocument")
        code = RELATION.get(rel.get("typeCode") or "")
        ids = id_pairs(parent) if parent is not None else []
        if code and ids:
            relates.append({"code": code, "target": {"identifier": identifier(*ids[0])}})
    if relates:
        res["relatesTo"] = relates
    title = clean(child(root, "title").text) if child(root, "title") is not None else None
    if title:
        res["description"] = title
    conf = codeable(child(root, "confidentialityCode"), doc)
    if conf:
        res["securityLabel"] = [conf]
    att = dict(attachment)
    lang = child(root, "languageCode")
    if lang is not None and lang.get("code"):
        att["language"] = lang.get("code")
    if title:
        att["title"] = title
    content: dict[str, Any] = {"attachment": att}
    if format_code:
        content["format"] = {"system": FORMAT_CODES, "code": format_code}
    res["content"] = [content, *_body_content(root), *_media_content(root)]
    context: dict[str, Any] = {}
    if doc.encounter_ref:
        context["encounter"] = [doc.encounter_ref]
    events, period = [], None
    for doc_of in children(root, "documentationOf"):
        event = child(doc_of, "serviceEvent")
        cc = codeable(child(event, "code"), doc) if event is not None else None
        if cc:
            events.append(cc)
        eff = effective(child(event, "effectiveTime")) if event is not None else None
        if eff and period is None:
            period = {"start": eff[1], "end": eff[1]} if eff[0] == "dateTime" else eff[1]
    if events:
        context["event"] = events
    if period:
        context["period"] = period
    if context:
        res["context"] = context
    doc.emit(res, root)


def _body_content(root: Any) -> list[dict[str, Any]]:
    """An unstructured body's own content: embedded (B64 or plain text) as data, a reference as url."""
    text = child(child(child(root, "component"), "nonXMLBody"), "text")
    if text is None:
        return []
    media = text.get("mediaType") or "text/plain"
    ref = child(text, "reference")
    if ref is not None and ref.get("value"):
        return [{"attachment": {"contentType": media, "url": ref.get("value")}}]
    raw = "".join(text.itertext()).strip()
    if not raw:
        return []
    if text.get("representation") == "B64":
        data = "".join(raw.split())
    else:
        data = base64.b64encode(raw.encode()).decode()
    return [{"attachment": {"contentType": media, "data": data}}]


def _media_content(root: Any) -> list[dict[str, Any]]:
    """Each embedded observationMedia (an image or PDF in a section) as one more attachment, kept whole.

    The narrative shows images inline; a PDF or other kind has no place there, so without this it would
    be lost. The attachment's title is the element's document-local ID, which renderMultiMedia names.
    """
    out: list[dict[str, Any]] = []
    for media in root.iter(NS + "observationMedia"):
        value = media.find(NS + "value")
        if value is None or value.get("representation") != "B64":
            continue
        data = "".join("".join(value.itertext()).split())
        if not data:
            continue
        att: dict[str, Any] = {
            "contentType": value.get("mediaType") or "application/octet-stream",
            "data": data,
        }
        if media.get("ID"):
            att["title"] = media.get("ID")
        out.append({"attachment": att})
    return out


def format_code(doc_type: str, root: Any) -> str | None:
    """IHE format code for the document: structured or unstructured body, C-CDA 1.1 or 2.1."""
    body = child(root, "component")
    unstructured = body is not None and child(body, "nonXMLBody") is not None
    r21 = any(t.get("extension") for t in children(root, "templateId"))
    version = "2.1" if r21 else "1.1"
    kind = "nonXMLBody" if unstructured or doc_type == "Unstructured Document" else "structuredBody"
    return f"urn:hl7-org:sdwg:ccda-{kind}:{version}"

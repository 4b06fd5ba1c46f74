"""The document itself -> Composition (header, one section per C-CDA section); a Care Plan -> CarePlan too."""

from __future__ import annotations

from typing import Any

from pipelines.convert.ccda.datatypes import (
    DAR,
    absent,
    child,
    children,
    clean,
    codeable,
    effective,
    id_pairs,
    ts,
)
from pipelines.convert.ccda.datatypes import identifier as make_identifier
from pipelines.convert.ccda.document import Doc
from pipelines.convert.ccda.header import author_refs
from pipelines.convert.ccda.narrative import XHTML_DIV, Narrative
from pipelines.convert.ccda.practitioners import practitioner
from pipelines.convert.ccda.sections import ConvertedSection

CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
DOC_CATEGORY = "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category"
LIST_EMPTY = "http://terminology.hl7.org/CodeSystem/list-empty-reason"
CAREPLAN_CATEGORY = "http://hl7.org/fhir/us/core/CodeSystem/careplan-category"
# Parties, places and products: referenced by the clinical resources, never entries of a section themselves.
NOT_ENTRIES = frozenset(
    {"Patient", "Practitioner", "PractitionerRole", "Organization", "Location", "Device", "Medication"}
    | {"Provenance", "RelatedPerson"}
)
EMPTY_REASON = {"NASK": "notasked", "MSK": "withheld"}  # any other nullFlavor: unavailable
INTERVENTIONS = "2.16.840.1.113883.10.20.21.2.3"
OUTCOMES = "2.16.840.1.113883.10.20.22.2.61"
REQUESTS = frozenset({"ServiceRequest", "MedicationRequest", "NutritionOrder", "DeviceRequest"})
NO_TEXT = f"{XHTML_DIV}No human-readable text provided in this section</div>"


def composition(doc: Doc, sections: list[ConvertedSection]) -> dict[str, str]:
    """Emit the Composition (and, for a Care Plan document, the CarePlan its event points at)."""
    root = doc.root
    res: dict[str, Any] = {"resourceType": "Composition", "id": doc.rid("Composition", root)}
    set_id = child(root, "setId")
    pairs = id_pairs(root)
    # Composition.identifier is version-independent: the setId, else the document's own id.
    if set_id is not None and set_id.get("root") and not set_id.get("nullFlavor"):
        res["identifier"] = make_identifier(set_id.get("root").strip(), set_id.get("extension"))
    elif pairs:
        res["identifier"] = make_identifier(*pairs[0])
    conf = child(root, "confidentialityCode")
    conf_code = conf.get("code") if conf is not None else None
    conf_cc = codeable(conf, doc)
    if conf_cc and conf_cc.get("coding"):
        # C-CDA on FHIR carries the confidentiality code as a security label; FHIR R4's own element takes
        # only v3 Confidentiality codes (set below when it is one).
        res["meta"] = {"security": conf_cc["coding"]}
    legal = child(root, "legalAuthenticator")
    res["status"] = "final" if legal is not None else "preliminary"
    code = child(root, "code")
    res["type"] = codeable(code, doc, text_from_display=True) or absent(
        code.get("nullFlavor") if code is not None else None
    )
    res["category"] = [
        {"coding": [{"system": DOC_CATEGORY, "code": "clinical-note", "display": "Clinical Note"}]}
    ]
    res["subject"] = doc.patient_ref
    if doc.encounter_ref:
        res["encounter"] = doc.encounter_ref
    if doc.date:
        res["date"] = doc.date
    else:
        res["_date"] = {"extension": [{"url": DAR, "valueCode": "unknown"}]}
    # The header's parties were converted for the DocumentReference already: the same references serve.
    docref = doc.out.get(("DocumentReference", doc.rid("DocumentReference", root))) or {}
    authors = docref.get("author") or []
    res["author"] = authors or [{"extension": [{"url": DAR, "valueCode": "unknown"}]}]
    title = clean("".join(child(root, "title").itertext())) if child(root, "title") is not None else None
    res["title"] = title or _display(res["type"]) or doc.doc_type
    if conf_code and conf_cc and any(c.get("system") == CONFIDENTIALITY for c in conf_cc.get("coding", [])):
        res["confidentiality"] = conf_code
    attesters = _attesters(doc, root, docref.get("authenticator"))
    if attesters:
        res["attester"] = attesters
    if docref.get("custodian"):
        res["custodian"] = docref["custodian"]
    if docref.get("relatesTo"):
        # The DocumentReference read the relatedDocuments; the Composition names the same targets.
        res["relatesTo"] = [
            {"code": r["code"], "targetIdentifier": r["target"]["identifier"]} for r in docref["relatesTo"]
        ]
    events = _events(doc, root)
    narrative = Narrative(root, doc.unconsumed)
    res_sections = [_section(doc, s, narrative) for s in sections]
    plan = care_plan(doc, sections, events, authors) if doc.doc_type == "Care Plan" else None
    if plan and events:
        events[0]["detail"] = [plan]
    elif plan:
        events = [{"detail": [plan]}]
    if events:
        res["event"] = events
    if res_sections:
        res["section"] = res_sections
    ref = doc.emit(res, root)
    if docref:
        # The DocumentReference (the landed original) names the Composition made from it as related.
        docref.setdefault("context", {})["related"] = [ref]
    return ref


def _display(cc: dict[str, Any]) -> str | None:
    if cc.get("text"):
        return cc["text"]
    return next((c["display"] for c in cc.get("coding", []) if c.get("display")), None)


def _attesters(doc: Doc, root: Any, legal_party: dict[str, str] | None) -> list[dict[str, Any]]:
    """legalAuthenticator -> a legal attester, each authenticator -> a professional one."""
    out = []
    for mode, els in (
        ("legal", children(root, "legalAuthenticator")[:1]),
        ("professional", children(root, "authenticator")),
    ):
        for el in els:
            att: dict[str, Any] = {"mode": mode}
            t = child(el, "time")
            when = ts(t.get("value")) if t is not None else None
            if when:
                att["time"] = when
            party = legal_party if mode == "legal" else practitioner(doc, child(el, "assignedEntity"))
            if party:
                att["party"] = party
            out.append(att)
    return out


def _events(doc: Doc, root: Any) -> list[dict[str, Any]]:
    """documentationOf/serviceEvent -> event (what was documented: its code and period)."""
    events = []
    for doc_of in children(root, "documentationOf"):
        event = child(doc_of, "serviceEvent")
        if event is None:
            continue
        e: dict[str, Any] = {}
        cc = codeable(child(event, "code"), doc, text_from_display=True)
        if cc:
            e["code"] = [cc]
        eff = effective(child(event, "effectiveTime"))
        if eff:
            e["period"] = {"start": eff[1], "end": eff[1]} if eff[0] == "dateTime" else eff[1]
        if e:
            events.append(e)
    return events


def _entries(made: list[tuple[str, str]]) -> list[dict[str, str]]:
    seen: dict[tuple[str, str], None] = {}
    for key in made:
        if key[0] not in NOT_ENTRIES:
            seen.setdefault(key)
    return [{"reference": f"{t}/{i}"} for t, i in seen]


def _section(doc: Doc, converted: ConvertedSection, narrative: Narrative) -> dict[str, Any]:
    el = converted.section.element
    out: dict[str, Any] = {}
    title = child(el, "title")
    text = clean("".join(title.itertext())) if title is not None else None
    if text:
        out["title"] = text
    code = codeable(child(el, "code"), doc, text_from_display=True)
    if code:
        out["code"] = code
    authors = author_refs(doc, el, devices=True)
    if authors:
        out["author"] = authors
    div = narrative.section_div(child(el, "text"))
    entries = _entries(converted.made)
    subsections = [_section(doc, s, narrative) for s in converted.subsections]
    if div:
        # The C-CDA narrative is the authored, attested text, not a rendering of the entries: it may say
        # more than they do, which is FHIR's "additional".
        out["text"] = {"status": "additional", "div": div}
    elif not entries and not subsections:
        # A section needs text, entries or subsections (cmp-1): say plainly that there was no text.
        out["text"] = {"status": "empty", "div": NO_TEXT}
    if entries:
        out["entry"] = entries
    elif el.get("nullFlavor"):
        reason = EMPTY_REASON.get(el.get("nullFlavor") or "", "unavailable")
        out["emptyReason"] = {"coding": [{"system": LIST_EMPTY, "code": reason}]}
    if subsections:
        out["section"] = subsections
    return out


def _walk(sections: list[ConvertedSection]):
    for s in sections:
        yield s
        yield from _walk(s.subsections)


def care_plan(
    doc: Doc, sections: list[ConvertedSection], events: list[dict[str, Any]], authors: list[dict[str, str]]
) -> dict[str, str]:
    """A Care Plan document -> CarePlan: its health concerns addressed, its goals, its planned activities."""
    root = doc.root
    res: dict[str, Any] = {"resourceType": "CarePlan", "id": doc.rid("CarePlan", root)}
    pairs = id_pairs(root)
    if pairs:
        res["identifier"] = [make_identifier(*pairs[0])]
    # The document is a snapshot of the plan: nothing in it says whether the plan is still in force.
    res["status"] = "unknown"
    res["intent"] = "plan"
    res["category"] = [{"coding": [{"system": CAREPLAN_CATEGORY, "code": "assess-plan"}]}]
    title = child(root, "title")
    if title is not None and clean("".join(title.itertext())):
        res["title"] = clean("".join(title.itertext()))
    res["subject"] = doc.patient_ref
    if doc.encounter_ref:
        res["encounter"] = doc.encounter_ref
    period = next((e["period"] for e in events if e.get("period")), None)
    if period:
        res["period"] = period
    if doc.date:
        res["created"] = doc.date
    if authors:
        res["author"] = authors[0]
        if len(authors) > 1:
            res["contributor"] = authors[1:]
    addresses, goals, activities, outcomes = [], [], [], []
    for s in _walk(sections):
        templates = _templates(s.section.element)
        planning = s.section.family == "plan_of_treatment" or INTERVENTIONS in templates
        for rtype, rid in s.made:
            ref = {"reference": f"{rtype}/{rid}"}
            if rtype == "Condition" and s.section.family == "health_concerns" and ref not in addresses:
                addresses.append(ref)
            elif rtype == "Goal" and ref not in goals:
                goals.append(ref)
            elif rtype in REQUESTS and planning and {"reference": ref} not in activities:
                activities.append({"reference": ref})
            elif (
                (rtype == "Procedure" and planning) or (rtype == "Observation" and OUTCOMES in templates)
            ) and ref not in outcomes:
                # Interventions done and outcomes observed are what the plan's activities came to.
                outcomes.append(ref)
    if outcomes:
        activities.append({"outcomeReference": outcomes})
    if addresses:
        res["addresses"] = addresses
    if goals:
        res["goal"] = goals
    if activities:
        res["activity"] = activities
    return doc.emit(res, root)


def _templates(el: Any) -> list[str]:
    return [t.get("root") for t in children(el, "templateId") if t.get("root")]

"""Goals, functional and mental status, assessment scales and notes (Goal, Observation, DocumentReference)."""

from __future__ import annotations

import base64
from typing import Any

from pipelines.convert.ccda.datatypes import child, codeable, id_pairs, pairs_key, value
from pipelines.convert.ccda.document import Doc, EntrySkipped, Section
from pipelines.convert.ccda.header import author_refs, author_time
from pipelines.convert.ccda.maps import concept
from pipelines.convert.ccda.sections.common import (
    CATEGORY,
    US_CORE_CATEGORY,
    base,
    category,
    components,
    observation,
    related,
    set_effective,
    status_code,
)

CATEGORY_OF = {
    "functional_status": (US_CORE_CATEGORY, "functional-status", "Functional Status"),
    "mental_status": (US_CORE_CATEGORY, "cognitive-status", "Cognitive Status"),
}


def status_observation(doc: Doc, obs: Any, section: Section) -> None:
    """Functional / mental status and assessment-scale observations -> Observation of their category."""
    system, code, display = CATEGORY_OF.get(section.family, (CATEGORY, "survey", "Survey"))
    doc.emit(observation(doc, obs, category(system, code, display)), obs)


def status_organizer(doc: Doc, org: Any, section: Section) -> None:
    system, code, display = CATEGORY_OF.get(section.family, (CATEGORY, "survey", "Survey"))
    cats = category(system, code, display)
    members = [
        doc.emit(observation(doc, o, cats), o) for o in components(org) if o.tag.endswith("}observation")
    ]
    if not members:
        raise EntrySkipped("empty organizer")
    doc.emit(observation(doc, org, cats, members=members), org)


def outcome(doc: Doc, obs: Any, section: Section) -> None:
    """Outcome Observation (a Care Plan's health status evaluation) -> Observation, with no category: C-CDA
    gives it none, and the CarePlan lists it as an activity's outcome."""
    res = observation(doc, obs, [])
    del res["category"]
    doc.emit(res, obs)


def goal(doc: Doc, obs: Any, section: Section) -> None:
    """Goal Observation -> Goal: description from code (or narrative), targets from its value."""
    description = codeable(child(obs, "code"), doc, text_from_display=True)
    v = value(child(obs, "value"), doc)
    if description is None:
        text = doc.text_of(child(obs, "text"))
        if v and v[0] == "valueCodeableConcept":
            description, v = v[1], None
        elif text:
            description = {"text": text}
        else:
            raise EntrySkipped("no goal description")
    res = base(doc, "Goal", obs)
    res["lifecycleStatus"] = concept("goal_status", status_code(obs)) or "active"
    res["description"] = description
    res["subject"] = res.pop("subject")
    start: dict[str, Any] = {}
    if set_effective(start, "start", child(obs, "effectiveTime"), ("dateTime",)):
        res["startDate"] = start["startDateTime"][:10]
    if v:
        detail = {
            "valueQuantity": "detailQuantity",
            "valueRange": "detailRange",
            "valueCodeableConcept": "detailCodeableConcept",
            "valueString": "detailString",
            "valueInteger": "detailInteger",
            "valueBoolean": "detailBoolean",
        }.get(v[0])
        if detail:
            res["target"] = [{detail: v[1]}]
    authored = author_time(obs)
    if authored:
        res["statusDate"] = authored[:10]
    authors = author_refs(doc, obs)
    if authors:
        res["expressedBy"] = authors[0]
    doc.emit(res, obs)


def note(doc: Doc, act: Any, section: Section) -> None:
    """Note Activity -> DocumentReference holding the note's text."""
    text = doc.text_of(child(act, "text"))
    if not text:
        raise EntrySkipped("note without text")
    res = base(doc, "DocumentReference", act)
    res["status"] = "current"
    kind = codeable(child(act, "code"), doc, text_from_display=True)
    if kind:
        res["type"] = kind
    res["category"] = [
        {
            "coding": [
                {
                    "system": "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category",
                    "code": "clinical-note",
                    "display": "Clinical Note",
                }
            ]
        }
    ]
    res["subject"] = res.pop("subject")
    when = author_time(act)
    if when and "T" in when:
        res["date"] = when
    authors = author_refs(doc, act)
    if authors:
        res["author"] = authors
    res["content"] = [
        {"attachment": {"contentType": "text/plain", "data": base64.b64encode(text.encode()).decode()}}
    ]
    # C-CDA on FHIR (Notes): the note's own encounter, else the document's encompassingEncounter.
    encounter = _note_encounter(doc, act)
    if encounter:
        res["context"] = {"encounter": [encounter]}
    doc.emit(res, act)


def _note_encounter(doc: Doc, act: Any) -> dict[str, str] | None:
    """An encounter the note names by id (entryRelationship COMP) that is converted, else the document's."""
    for enc in related(act, type_code="COMP"):
        if enc.tag.endswith("}encounter") and id_pairs(enc):
            rid = doc.rid("Encounter", enc, pairs_key(id_pairs(enc)))
            if ("Encounter", rid) in doc.out:  # converted already (the header's, or an earlier entry)
                return {"reference": f"Encounter/{rid}"}
    return doc.encounter_ref

"""Allergies and intolerances -> AllergyIntolerance with reactions, severity and criticality."""

from __future__ import annotations

from typing import Any

from pipelines.convert.ccda.datatypes import child, codeable, template_ids, ts, value
from pipelines.convert.ccda.document import Doc, EntrySkipped, Section
from pipelines.convert.ccda.header import author_refs, author_time
from pipelines.convert.ccda.maps import concept
from pipelines.convert.ccda.sections.common import (
    AUTHOR,
    RELATIONSHIP,
    base,
    by_tag,
    concern_observations,
    first,
    negated,
    related,
    status_code,
)

ALLERGY_OBS = "2.16.840.1.113883.10.20.22.4.7"
STATUS_OBS = "2.16.840.1.113883.10.20.22.4.28"
REACTION_OBS = "2.16.840.1.113883.10.20.22.4.9"
SEVERITY_OBS = "2.16.840.1.113883.10.20.22.4.8"
CRITICALITY_OBS = "2.16.840.1.113883.10.20.22.4.145"
CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
VERIFICATION = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"
SNOMED = "http://snomed.info/sct"


def concern(doc: Doc, act: Any, section: Section) -> None:
    # Its allergy observations (under any relationship) or untemplated subjects; nothing else.
    observations = [
        o
        for typed, o in concern_observations(act)
        if ALLERGY_OBS in (ids := template_ids(o)) or (typed and not ids)
    ]
    if not observations:
        raise EntrySkipped("no allergy observation")
    for obs in observations:
        allergy(doc, obs, act)


def allergy_observation(doc: Doc, obs: Any, section: Section) -> None:
    allergy(doc, obs, None)


def _value_code(obs: Any) -> str | None:
    v = child(obs, "value")
    return v.get("code") if v is not None else None


def allergy(doc: Doc, obs: Any, act: Any | None) -> dict[str, str]:
    kids = by_tag(obs)  # one pass over the observation's children
    rels = kids.get(RELATIONSHIP, ())
    res = base(doc, "AllergyIntolerance", obs, "patient", kids)
    v = first(kids, "value")
    type_code = v.get("code") if v is not None else None
    status = None
    for st in related(obs, STATUS_OBS, rels=rels):
        status = concept("allergy_status", _value_code(st))
    if status is None and act is not None:
        status = {
            "active": "active",
            "completed": "resolved",
            "aborted": "inactive",
            "suspended": "inactive",
        }.get(status_code(act) or "")
    substance = child(child(first(kids, "participant"), "participantRole"), "playingEntity")
    substance_code = (
        codeable(child(substance, "code"), doc, text_from_display=True) if substance is not None else None
    )
    if negated(obs):
        # "No known allergy": the negated allergy type becomes SNOMED's no-known-allergy concept
        # (C-CDA on FHIR ConceptMap NoKnownAllergies); a negated named substance is refuted instead.
        if substance_code is None and concept("no_known_allergy", type_code):
            nka = concept("no_known_allergy", type_code)
            substance_code = {
                "coding": [
                    {"system": SNOMED, "code": nka, "display": concept("no_known_allergy_display", nka)}
                ]
            }
            res["verificationStatus"] = {"coding": [{"system": VERIFICATION, "code": "confirmed"}]}
        else:
            res["verificationStatus"] = {"coding": [{"system": VERIFICATION, "code": "refuted"}]}
    elif status:
        res["clinicalStatus"] = {"coding": [{"system": CLINICAL, "code": status}]}
    kind = concept("allergy_type", type_code)
    if kind:
        res["type"] = kind
    cat = concept("allergy_category", type_code)
    if cat:
        res["category"] = [cat]
    for crit in related(obs, CRITICALITY_OBS, rels=rels):
        c = concept("criticality", _value_code(crit))
        if c:
            res["criticality"] = c
    if substance_code is None:
        text = doc.text_of(first(kids, "text"))
        if not text:
            raise EntrySkipped("no allergen code")
        substance_code = {"text": text}
    res["code"] = substance_code
    patient = res.pop("patient")
    res["patient"] = patient
    eff = first(kids, "effectiveTime")
    low = child(eff, "low") if eff is not None else None
    onset = ts(low.get("value")) if low is not None else (ts(eff.get("value")) if eff is not None else None)
    if onset:
        res["onsetDateTime"] = onset
    own = kids.get(AUTHOR, ())
    recorded = author_time(obs, own) or (author_time(act) if act is not None else None)
    if recorded:
        res["recordedDate"] = recorded
    authors = author_refs(doc, obs, own)
    if authors:
        res["recorder"] = authors[0]
    reactions = []
    for r in related(obs, REACTION_OBS, rels=rels):
        v = value(child(r, "value"), doc)
        if not v or v[0] != "valueCodeableConcept":
            continue
        reaction: dict[str, Any] = {"manifestation": [v[1]]}
        for sev in related(r, SEVERITY_OBS):
            s = concept("severity", _value_code(sev))
            if s:
                reaction["severity"] = s
        r_onset = child(child(r, "effectiveTime"), "low")
        if r_onset is not None and ts(r_onset.get("value")):
            reaction["onset"] = ts(r_onset.get("value"))
        reactions.append(reaction)
    if reactions:
        # R1.1 puts severity on the allergy itself: it applies to each reaction lacking its own.
        for sev in related(obs, SEVERITY_OBS, rels=rels):
            s = concept("severity", _value_code(sev))
            for reaction in reactions:
                if s and "severity" not in reaction:
                    reaction["severity"] = s
        res["reaction"] = reactions
    return doc.emit(res, obs)

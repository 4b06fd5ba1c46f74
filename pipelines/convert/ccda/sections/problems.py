"""Problems, diagnoses and health concerns -> Condition (C-CDA on FHIR Problem mapping)."""

from __future__ import annotations

from typing import Any

from pipelines.convert.ccda.datatypes import child, codeable, template_ids, ts, value
from pipelines.convert.ccda.document import Doc, EntrySkipped, Section
from pipelines.convert.ccda.header import author_refs, author_time
from pipelines.convert.ccda.maps import concept
from pipelines.convert.ccda.sections.common import (
    AUTHOR,
    CONDITION_CATEGORY,
    RELATIONSHIP,
    US_CORE_CATEGORY,
    base,
    by_tag,
    category,
    concern_observations,
    first,
    negated,
    related,
    status_code,
)

PROBLEM_OBS = "2.16.840.1.113883.10.20.22.4.4"
PROBLEM_STATUS = ("2.16.840.1.113883.10.20.22.4.6",)
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CATEGORY_OF = {
    "problems": (CONDITION_CATEGORY, "problem-list-item", "Problem List Item"),
    "health_concerns": (US_CORE_CATEGORY, "health-concern", "Health Concern"),
    "encounter": (CONDITION_CATEGORY, "encounter-diagnosis", "Encounter Diagnosis"),
}

# Diagnoses of one stay or procedure, not problem-list items.
ENCOUNTER_DIAGNOSIS_SECTIONS = (
    "Hospital Discharge Diagnosis",
    "Admission Diagnosis",
    "Preoperative Diagnosis",
    "Postprocedure Diagnosis",
)


def concern(doc: Doc, act: Any, section: Section) -> None:
    """Problem Concern Act (and diagnosis acts): one Condition per problem observation inside."""
    kind = "encounter" if section.name in ENCOUNTER_DIAGNOSIS_SECTIONS else None
    kind = kind or ("health_concerns" if section.family == "health_concerns" else "problems")
    # Its problem observations (under any relationship) or untemplated subjects; priority, comment and
    # reference entries beside them are not problems.
    observations = [
        o
        for typed, o in concern_observations(act)
        if PROBLEM_OBS in (ids := template_ids(o)) or (typed and not ids)
    ]
    if not observations:
        raise EntrySkipped("no problem observation")
    made = 0
    for obs in observations:
        if condition(doc, obs, kind, act) is not None:
            made += 1
    if not made:
        raise EntrySkipped("no problem code")


def problem_observation(doc: Doc, obs: Any, section: Section) -> None:
    kind = "health_concerns" if section.family == "health_concerns" else "problems"
    if condition(doc, obs, kind, None) is None:
        raise EntrySkipped("no problem code")


def condition(doc: Doc, obs: Any, kind: str, act: Any | None) -> dict[str, str] | None:
    """Problem Observation -> Condition; None when neither value nor narrative names the problem."""
    kids = by_tag(obs)  # one pass over the observation's children
    res = base(doc, "Condition", obs, kids=kids)
    status = None
    for st in related(obs, *PROBLEM_STATUS, rels=kids.get(RELATIONSHIP, ())):
        v = child(st, "value")
        status = concept("problem_status", v.get("code") if v is not None else None)
    eff = first(kids, "effectiveTime")
    if status is None:
        high = child(eff, "high")
        resolved = high is not None and high.get("value")
        act_status = concept("act_status_condition", status_code(act)) if act is not None else None
        status = "resolved" if resolved else act_status or ("active" if not negated(obs) else None)
    if status and not negated(obs):
        res["clinicalStatus"] = {"coding": [{"system": CLINICAL, "code": status}]}
    if negated(obs):
        res["verificationStatus"] = {"coding": [{"system": VERIFICATION, "code": "refuted"}]}
    system, code, display = CATEGORY_OF[kind]
    res["category"] = category(system, code, display)
    v = value(first(kids, "value"), doc)
    cc = v[1] if v and v[0] == "valueCodeableConcept" else None
    if cc is None:
        text = doc.text_of(first(kids, "text"))
        cc = {"text": text} if text else None
    if cc is None:
        return None
    res["code"] = cc
    site = codeable(first(kids, "targetSiteCode"), doc)
    if site:
        res["bodySite"] = [site]
    res["subject"] = res.pop("subject")
    if doc.encounter_ref and kind == "encounter":
        res["encounter"] = doc.encounter_ref
    low = child(eff, "low") if eff is not None else None
    high = child(eff, "high") if eff is not None else None
    onset = ts(low.get("value")) if low is not None else (ts(eff.get("value")) if eff is not None else None)
    if onset:
        res["onsetDateTime"] = onset
    end = ts(high.get("value")) if high is not None else None
    if end:
        res["abatementDateTime"] = end
    own = kids.get(AUTHOR, ())
    recorded = author_time(obs, own) or (author_time(act) if act is not None else None)
    if recorded:
        res["recordedDate"] = recorded
    authors = author_refs(doc, obs, own) or (author_refs(doc, act) if act is not None else [])
    if authors:
        res["recorder"] = authors[0]
    return doc.emit(res, obs)

"""Entry dispatch: templateIds pick the mapper; the section family covers missing or wrong templateIds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipelines.convert.ccda import parties
from pipelines.convert.ccda.datatypes import NS, child, children, local, template_ids
from pipelines.convert.ccda.document import Doc, Section, entry_label, section_label, statement_of
from pipelines.convert.ccda.maps import sections as section_maps
from pipelines.convert.ccda.sections import (
    allergies,
    care,
    encounters,
    family,
    immunizations,
    medications,
    payers,
    problems,
    procedures,
    results,
    social,
)

Mapper = Callable[[Doc, Any, Section], None]
T = "2.16.840.1.113883.10.20.22.4."
CCDA_ENTRY_PREFIX = T

# The one explicit list of entry mappers, by the entry's templateId root.
TEMPLATES: dict[str, Mapper] = {
    T + "3": problems.concern,  # Problem Concern Act
    T + "4": problems.problem_observation,
    T + "132": problems.concern,  # Health Concern Act
    T + "33": problems.concern,  # Hospital Discharge Diagnosis
    T + "34": problems.concern,  # Hospital Admission Diagnosis
    T + "80": problems.concern,  # Encounter Diagnosis
    T + "65": problems.concern,  # Preoperative Diagnosis
    T + "51": problems.concern,  # Postprocedure Diagnosis
    T + "30": allergies.concern,  # Allergy Concern Act
    T + "7": allergies.allergy_observation,
    T + "16": medications.activity,
    T + "35": medications.wrapper,  # Discharge Medication
    T + "36": medications.wrapper,  # Admission Medication
    T + "42": medications.planned,  # Planned Medication Activity
    T + "1": results.result_organizer,
    T + "2": results.result_observation,
    T + "26": results.vital_signs_organizer,
    T + "27": results.vital_sign,
    T + "52": immunizations.immunization,
    T + "14": procedures.procedure,  # Procedure Activity Procedure
    T + "13": procedures.procedure,  # Procedure Activity Observation
    T + "12": procedures.procedure,  # Procedure Activity Act
    T + "39": procedures.planned,  # Planned Act
    T + "40": procedures.planned,  # Planned Encounter
    T + "41": procedures.planned,  # Planned Procedure
    T + "44": procedures.planned,  # Planned Observation
    T + "49": encounters.encounter,
    T + "78": social.social,  # Smoking Status
    T + "85": social.social,  # Tobacco Use
    T + "38": social.social,  # Social History Observation
    "2.16.840.1.113883.10.20.15.3.8": social.social,  # Pregnancy Observation
    T + "200": social.birth_sex,
    T + "121": care.goal,
    T + "66": care.status_organizer,  # Functional Status Organizer
    T + "67": care.status_observation,  # Functional Status Observation
    T + "75": care.status_organizer,  # Cognitive / Mental Status Organizer
    T + "74": care.status_observation,  # Mental Status Observation
    T + "69": care.status_observation,  # Assessment Scale Observation
    T + "5": care.status_observation,  # Health Status Observation
    T + "202": care.note,  # Note Activity
    T + "68": care.status_observation,  # Functional Status Problem Observation (R1.1)
    T + "73": care.status_observation,  # Cognitive Status Problem Observation (R1.1)
    T + "130": procedures.planned,  # Nutrition Recommendation
    T + "120": medications.planned,  # Planned Immunization Activity
    T + "45": family.family_history,  # Family History Organizer
    T + "131": procedures.procedure,  # Intervention Act (Care Plan)
    T + "146": procedures.planned,  # Planned Intervention Act (Care Plan)
    T + "144": care.outcome,  # Outcome Observation (Care Plan)
    T + "60": payers.coverage_activity,  # Coverage Activity
    T + "61": payers.coverage_activity,  # Policy Activity outside a Coverage Activity
}

# When an entry lacks its templateId (or carries a wrong one), its section and element decide.
BY_SECTION: dict[tuple[str, str], Mapper] = {
    ("problems", "act"): problems.concern,
    ("problems", "observation"): problems.problem_observation,
    ("health_concerns", "act"): problems.concern,
    ("health_concerns", "observation"): problems.problem_observation,
    ("allergies", "act"): allergies.concern,
    ("allergies", "observation"): allergies.allergy_observation,
    ("medications", "substanceAdministration"): medications.activity,
    ("medications", "act"): medications.wrapper,
    ("results", "organizer"): results.result_organizer,
    ("results", "observation"): results.result_observation,
    ("vital_signs", "organizer"): results.vital_signs_organizer,
    ("vital_signs", "observation"): results.vital_sign,
    ("immunizations", "substanceAdministration"): immunizations.immunization,
    ("procedures", "procedure"): procedures.procedure,
    ("procedures", "observation"): procedures.procedure,
    ("procedures", "act"): procedures.procedure,
    ("encounters", "encounter"): encounters.encounter,
    ("social_history", "observation"): social.social,
    ("plan_of_treatment", "act"): procedures.planned,
    ("plan_of_treatment", "procedure"): procedures.planned,
    ("plan_of_treatment", "observation"): procedures.planned,
    ("plan_of_treatment", "encounter"): procedures.planned,
    ("plan_of_treatment", "substanceAdministration"): medications.planned,
    ("goals", "observation"): care.goal,
    ("functional_status", "observation"): care.status_observation,
    ("functional_status", "organizer"): care.status_organizer,
    ("mental_status", "observation"): care.status_observation,
    ("mental_status", "organizer"): care.status_organizer,
    ("notes", "act"): care.note,
    ("family_history", "organizer"): family.family_history,
    ("payers", "act"): payers.coverage_activity,
}


def mapper_for(stmt: Any, section: Section, ids: list[str] | None = None) -> Mapper | None:
    ids = template_ids(stmt) if ids is None else ids
    for t in ids:
        if t in TEMPLATES:
            return TEMPLATES[t]
    if any(t.startswith(CCDA_ENTRY_PREFIX) for t in ids):
        return None  # a C-CDA template no mapper takes (comment, coverage, supply): counted, not guessed
    # No C-CDA entry template (none at all, or only HL7 CCD 1.0 / IHE / HITSP ones): the section decides.
    return BY_SECTION.get((section.family, local(stmt)))


# Read by the encounter mapper itself (diagnoses, indications): never run again as entries of their own.
_ENCOUNTER_OWN = {T + "80", T + "19"}


def _nested_in_encounter(doc: Doc, enc: Any, section: Section, label: str | None) -> None:
    """Problems, procedures, medications and results some vendors nest in an Encounter Activity's
    entryRelationships (not its reasons): each runs as an entry of the encounter's section."""
    for rel in enc.iterchildren(NS + "entryRelationship"):
        if rel.get("typeCode") == "RSON":
            continue
        stmt = statement_of(rel)
        if stmt is None:
            continue
        ids = template_ids(stmt)
        if _ENCOUNTER_OWN.intersection(ids):
            continue
        mapper = next((TEMPLATES[t] for t in ids if t in TEMPLATES), None)
        if mapper is None or local(stmt) == "encounter":
            continue
        before = len(doc.emitted)
        doc.run_entry(mapper, stmt, section, entry_label(stmt, ids), label)
        parties.entry_provenance(doc, stmt, doc.emitted[before:])


def identify(section_el: Any) -> Section:
    by_template, by_code = section_maps()
    for t in template_ids(section_el):
        if t in by_template:
            family, name = by_template[t]
            return Section(family, name, section_el)
    code = child(section_el, "code")
    hit = by_code.get(code.get("code") or "") if code is not None else None
    if hit:
        return Section(hit[0], hit[1], section_el)
    return Section("other", "Other", section_el)


@dataclass(slots=True)
class ConvertedSection:
    """One section as converted: what it is, the (type, id) of what its entries made, its subsections."""

    section: Section
    made: list[tuple[str, str]]
    subsections: list[ConvertedSection]


def convert_sections(doc: Doc) -> list[ConvertedSection]:
    body = child(child(doc.root, "component"), "structuredBody")
    if body is None:
        return []
    out = []
    for comp in children(body, "component"):
        section_el = child(comp, "section")
        if section_el is not None:
            out.append(_section(doc, section_el))
    return out


def _section(doc: Doc, section_el: Any) -> ConvertedSection:
    section = identify(section_el)
    start = len(doc.emitted)
    label = None  # the section's label, worked out once for all its entries
    for entry in section_el.iterchildren(NS + "entry"):
        stmt = statement_of(entry)
        if stmt is None:
            continue
        if label is None:
            label = section_label(section_el)
        ids = template_ids(stmt)
        before = len(doc.emitted)
        doc.run_entry(mapper_for(stmt, section, ids), stmt, section, entry_label(stmt, ids), label)
        parties.entry_provenance(doc, stmt, doc.emitted[before:])
        if local(stmt) == "encounter":
            _nested_in_encounter(doc, stmt, section, label)
    made = doc.emitted[start:]
    subsections = []
    for comp in children(section_el, "component"):
        sub = child(comp, "section")
        if sub is not None:
            subsections.append(_section(doc, sub))
    return ConvertedSection(section, made, subsections)

"""Family history organizers -> FamilyMemberHistory: relationship, sex, conditions with onset age."""

from __future__ import annotations

from typing import Any

from pipelines.convert.ccda.datatypes import child, codeable, coding, quantity, value
from pipelines.convert.ccda.document import Doc, EntrySkipped, Section
from pipelines.convert.ccda.sections.common import base, components, related

AGE_OBS = "2.16.840.1.113883.10.20.22.4.31"


def family_history(doc: Doc, org: Any, section: Section) -> None:
    subject = child(child(org, "subject"), "relatedSubject")
    relationship = codeable(child(subject, "code"), doc, text_from_display=True)
    if relationship is None:
        raise EntrySkipped("no relationship")
    res = base(doc, "FamilyMemberHistory", org, "patient")
    res["status"] = "completed"
    res["patient"] = res.pop("patient")
    res["relationship"] = relationship
    person = child(subject, "subject")
    gender = child(person, "administrativeGenderCode") if person is not None else None
    sex = coding(gender) if gender is not None else None
    if sex:
        res["sex"] = {"coding": [sex]}
    deceased = person.find("{urn:hl7-org:sdtc}deceasedInd") if person is not None else None
    if deceased is not None and deceased.get("value") in ("true", "false"):
        res["deceasedBoolean"] = deceased.get("value") == "true"
    conditions = []
    for obs in components(org):
        v = value(child(obs, "value"), doc)
        if not v or v[0] != "valueCodeableConcept":
            continue
        cond: dict[str, Any] = {"code": v[1]}
        for age in related(obs, AGE_OBS):
            q = quantity(child(age, "value"))
            if q:
                cond["onsetAge"] = q
        conditions.append(cond)
    if conditions:
        res["condition"] = conditions
    doc.emit(res, org)

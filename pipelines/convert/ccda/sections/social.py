"""Social history -> Observation (social-history): smoking, tobacco use, pregnancy, others; birth sex."""

from __future__ import annotations

from typing import Any

from pipelines.convert.ccda.datatypes import child
from pipelines.convert.ccda.document import Doc, EntrySkipped, Section
from pipelines.convert.ccda.sections.common import CATEGORY, category, observation

BIRTH_SEX_URL = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex"
SMOKING_PROFILE = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-smokingstatus"
SMOKING_STATUS = ("2.16.840.1.113883.10.20.22.4.78",)


def social(doc: Doc, obs: Any, section: Section) -> None:
    profile = (
        SMOKING_PROFILE
        if any(t.get("root") in SMOKING_STATUS for t in obs.findall("{urn:hl7-org:v3}templateId"))
        else None
    )
    res = observation(doc, obs, category(CATEGORY, "social-history", "Social History"), profile=profile)
    if res["code"].get("extension") and "valueCodeableConcept" not in res and "valueQuantity" not in res:
        raise EntrySkipped("neither code nor value")
    doc.emit(res, obs)


def birth_sex(doc: Doc, obs: Any, section: Section) -> None:
    """Birth Sex Observation -> US Core birthsex extension on the Patient (M, F or UNK)."""
    v = child(obs, "value")
    code = v.get("code") if v is not None else None
    if not code and v is not None and v.get("nullFlavor") == "UNK":
        code = "UNK"
    if code not in ("M", "F", "UNK") or doc.patient is None:
        raise EntrySkipped("no birth sex value")
    exts = [e for e in doc.patient.get("extension", []) if e["url"] != BIRTH_SEX_URL]
    exts.append({"url": BIRTH_SEX_URL, "valueCode": code})
    doc.patient["extension"] = exts

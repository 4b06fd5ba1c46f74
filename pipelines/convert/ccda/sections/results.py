"""Results and vital signs: organizers -> DiagnosticReport or panel Observation; observations."""

from __future__ import annotations

from typing import Any

from pipelines.convert.ccda.datatypes import absent, child, codeable, effective
from pipelines.convert.ccda.document import Doc, EntrySkipped, Section
from pipelines.convert.ccda.maps import concept
from pipelines.convert.ccda.sections.common import (
    CATEGORY,
    base,
    category,
    components,
    observation,
    set_effective,
    status_code,
)

VITALS_PROFILE = "http://hl7.org/fhir/StructureDefinition/vitalsigns"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"


def _lab() -> list[dict[str, Any]]:
    return category(CATEGORY, "laboratory", "Laboratory")


def _vitals() -> list[dict[str, Any]]:
    return category(CATEGORY, "vital-signs", "Vital Signs")


def result_organizer(doc: Doc, org: Any, section: Section) -> None:
    """Result Organizer -> DiagnosticReport whose results are its component Observations."""
    observations = [o for o in components(org) if o.tag.endswith("}observation")]
    refs = [doc.emit(observation(doc, o, _lab()), o) for o in observations]
    res = base(doc, "DiagnosticReport", org)
    res["status"] = concept("result_status", status_code(org) or "completed") or "unknown"
    res["category"] = category(V2_0074, "LAB", "Laboratory")
    code = codeable(child(org, "code"), doc, text_from_display=True)
    res["code"] = code or absent(
        child(org, "code").get("nullFlavor") if child(org, "code") is not None else None
    )
    res["subject"] = res.pop("subject")
    if not set_effective(res, "effective", child(org, "effectiveTime")):
        # The organizer often has no time of its own: its components' span stands for it.
        times = [effective(child(o, "effectiveTime")) for o in observations]
        points = sorted(t[1] for t in times if t and t[0] == "dateTime")
        if points:
            res["effectivePeriod" if points[0] != points[-1] else "effectiveDateTime"] = (
                {"start": points[0], "end": points[-1]} if points[0] != points[-1] else points[0]
            )
    if refs:
        res["result"] = refs
    if not refs and code is None:
        raise EntrySkipped("empty result organizer")
    doc.emit(res, org)


def result_observation(doc: Doc, obs: Any, section: Section) -> None:
    doc.emit(observation(doc, obs, _lab()), obs)


def vital_signs_organizer(doc: Doc, org: Any, section: Section) -> None:
    """Vital Signs Organizer -> a panel Observation with hasMember, each vital sign its own Observation."""
    observations = [o for o in components(org) if o.tag.endswith("}observation")]
    members = [doc.emit(observation(doc, o, _vitals(), profile=VITALS_PROFILE), o) for o in observations]
    if not members:
        raise EntrySkipped("empty vital signs organizer")
    panel = observation(doc, org, _vitals(), profile=VITALS_PROFILE, members=members)
    if "effectiveDateTime" not in panel and "effectivePeriod" not in panel:
        first = effective(child(observations[0], "effectiveTime"))
        if first:
            set_effective(panel, "effective", child(observations[0], "effectiveTime"))
    doc.emit(panel, org)


def vital_sign(doc: Doc, obs: Any, section: Section) -> None:
    doc.emit(observation(doc, obs, _vitals(), profile=VITALS_PROFILE), obs)

"""Data types whose shape changed between releases: HumanName, Timing, dosage (HL7's type maps)."""

from __future__ import annotations

from typing import Any

from pipelines.convert.fhir.upgrade.base import Mover, as_list

FAMILY_REPEAT = "http://hl7.org/fhir/StructureDefinition/humanname-family-repeat"


def r2_human_name(name: Any) -> Any:
    """DSTU2 family is a list; STU3 keeps the first and HL7's map puts the others in an extension."""
    if not isinstance(name, dict) or not isinstance(name.get("family"), list):
        return name
    out = dict(name)
    family = out.pop("family")
    extra = out.pop("_family", None)
    if family:
        out["family"] = family[0]
        if isinstance(extra, list) and extra and extra[0]:
            out["_family"] = extra[0]
        if len(family) > 1:
            ext = out.setdefault("extension", [])
            ext.extend({"url": FAMILY_REPEAT, "valueString": f} for f in family[1:])
    return out


def r2_human_names(names: Any) -> list[Any]:
    return [r2_human_name(n) for n in as_list(names)]


def r2_timing(timing: Any) -> Any:
    """DSTU2 Timing.repeat: periodUnits/durationUnits were renamed and when became a list in STU3."""
    if not isinstance(timing, dict) or not isinstance(timing.get("repeat"), dict):
        return timing
    repeat = dict(timing["repeat"])
    for old, new in (("periodUnits", "periodUnit"), ("durationUnits", "durationUnit")):
        if old in repeat:
            repeat[new] = repeat.pop(old)
    if isinstance(repeat.get("when"), str):
        repeat["when"] = [repeat["when"]]
    return {**timing, "repeat": repeat}


def r2_dosage(m: Mover) -> None:
    """A DSTU2 dosage backbone (MedicationOrder, MedicationDispense) to the STU3 Dosage type."""
    m.same("text", "asNeededBoolean", "asNeededCodeableConcept", "route", "method", "maxDosePerPeriod")
    m.rename("additionalInstructions", "additionalInstruction", lambda v: as_list(v))
    m.rename("timing", "timing", r2_timing)
    m.rename("siteCodeableConcept", "site")
    if m.has("siteReference"):
        m.fail("upgrade_no_target_type", f"{m.path}.site[x] of type Reference has no counterpart")
    m.choice("dose")
    m.choice("rate")


def r2_statement_dosage(m: Mover) -> None:
    """DSTU2 MedicationStatement.dosage (its own backbone) to the STU3 Dosage type."""
    m.same("text", "asNeededBoolean", "asNeededCodeableConcept", "route", "method", "maxDosePerPeriod")
    m.rename("timing", "timing", r2_timing)
    m.rename("siteCodeableConcept", "site")
    if m.has("siteReference"):
        m.fail("upgrade_no_target_type", f"{m.path}.site[x] of type Reference has no counterpart")
    m.rename("quantityQuantity", "doseQuantity")
    m.rename("quantityRange", "doseRange")
    m.choice("rate")


def r3_dosage(m: Mover) -> None:
    """STU3 Dosage to R4: dose[x] and rate[x] move into doseAndRate."""
    m.same(
        "sequence",
        "text",
        "additionalInstruction",
        "patientInstruction",
        "timing",
        "asNeededBoolean",
        "asNeededCodeableConcept",
        "site",
        "route",
        "method",
        "maxDosePerPeriod",
        "maxDosePerAdministration",
        "maxDosePerLifetime",
    )
    dose_rate: dict[str, Any] = {}
    for key in [k for k in m.src if k.startswith(("dose", "rate")) and not k.startswith("_")]:
        dose_rate[key] = m.take(key)
    if dose_rate:
        m.out["doseAndRate"] = [dose_rate]


def r3_dosages(values: Any, release: str, rtype: str, path: str) -> list[Any]:
    out = []
    for value in as_list(values):
        child = Mover(value, release, rtype, path)
        child.same("id", "extension", "modifierExtension")
        r3_dosage(child)
        out.append(child.finish())
    return out

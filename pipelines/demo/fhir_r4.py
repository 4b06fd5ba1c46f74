"""Render a synthetic patient as FHIR R4 resources, with relative Type/id references between them."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from functools import lru_cache
from typing import Any

from pipelines.demo.records import (
    CODES,
    Allergy,
    Condition,
    Encounter,
    Immunization,
    LabPanel,
    LabResult,
    MedicationOrder,
    PatientRecord,
    Procedure,
    VitalSign,
)

Resource = dict[str, Any]
SYS = CODES["systems"]
IDS = CODES["identifiers"]
_VITALS = CODES["vitals"]
_UNITS = CODES["units"]
_TESTS = CODES["lab_tests"]
_INTERPRETATION = {"H": "High", "L": "Low", "N": "Normal"}
_CATEGORY_DISPLAY = {"problem-list-item": "Problem List Item", "encounter-diagnosis": "Encounter Diagnosis"}
_VITAL_CATEGORY = [
    {"coding": [{"system": SYS["observation_category"], "code": "vital-signs", "display": "Vital Signs"}]}
]
_LAB_CATEGORY = [
    {"coding": [{"system": SYS["observation_category"], "code": "laboratory", "display": "Laboratory"}]}
]
_REPORT_CATEGORY = [
    {"coding": [{"system": SYS["diagnostic_service"], "code": "LAB", "display": "Laboratory"}]}
]
_MRN_TYPE = {
    "coding": [{"system": SYS["identifier_type"], "code": "MR", "display": "Medical record number"}],
    "text": "MRN",
}


@lru_cache(maxsize=64)
def _zone(minutes: int) -> timezone:
    return timezone(timedelta(minutes=minutes))


def local_datetime(ts: int, offset_minutes: int) -> str:
    """A FHIR dateTime in the patient's local offset, as legacy systems record clinical times."""
    return datetime.fromtimestamp(ts, _zone(offset_minutes)).isoformat()


def instant_utc(ts: int, millis: int = 0) -> str:
    """A FHIR instant in UTC with milliseconds, as servers stamp meta.lastUpdated."""
    return f"{datetime.fromtimestamp(ts, UTC).isoformat()[:19]}.{millis:03d}Z"


def local_date(ts: int, offset_minutes: int) -> str:
    return datetime.fromtimestamp(ts, _zone(offset_minutes)).date().isoformat()


def _meta(ts: int, uid: str) -> dict[str, str]:
    return {"lastUpdated": instant_utc(ts, int(uid[:3], 16) % 1000)}


def _concept(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def _status(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": code.replace("-", " ").title()}]}


def _quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": _UNITS.get(unit, unit), "system": SYS["ucum"], "code": unit}


def render_patient(p: PatientRecord) -> Iterator[tuple[str, Resource]]:
    """Every resource of one patient as (resourceType, resource), in a fixed order."""
    yield "Patient", patient_resource(p)
    for enc in p.encounters:
        yield "Encounter", encounter_resource(p, enc)
    for cond in p.conditions:
        yield "Condition", condition_resource(p, cond)
    for enc in p.encounters:
        for vital in enc.vitals:
            yield "Observation", vital_resource(p, enc, vital)
        for panel in enc.panels:
            for result in panel.results:
                yield "Observation", lab_resource(p, enc, panel, result)
            yield "DiagnosticReport", report_resource(p, enc, panel)
    for med in p.medications:
        yield "MedicationRequest", medication_resource(p, med)
    for allergy in p.allergies:
        yield "AllergyIntolerance", allergy_resource(p, allergy)
    for imm in p.immunizations:
        yield "Immunization", immunization_resource(p, imm)
    for proc in p.procedures:
        yield "Procedure", procedure_resource(p, proc)


def patient_resource(p: PatientRecord) -> Resource:
    res: Resource = {
        "resourceType": "Patient",
        "id": p.uid,
        "meta": _meta(p.last_updated, p.uid),
        "identifier": [{"use": "usual", "type": _MRN_TYPE, "system": IDS["mrn"], "value": p.mrn}],
        "active": True,
        "name": [{"use": "official", "family": p.family, "given": list(p.given)}],
        "telecom": [{"system": "phone", "value": p.phone, "use": "home"}],
        "gender": p.gender,
        "birthDate": p.birth_date.isoformat(),
    }
    if p.deceased_at is not None:
        res["deceasedDateTime"] = local_datetime(p.deceased_at, p.utc_offset_minutes)
    a = p.address
    res["address"] = [
        {
            "use": "home",
            "line": list(a.line),
            "city": a.city,
            "state": a.state,
            "postalCode": a.postal_code,
            "country": a.country,
        }
    ]
    if p.marital is not None:
        res["maritalStatus"] = _concept(SYS["marital_status"], p.marital["code"], p.marital["display"])
    res["communication"] = [
        {"language": _concept(SYS["language"], p.language["code"], p.language["display"]), "preferred": True}
    ]
    return res


def encounter_resource(p: PatientRecord, enc: Encounter) -> Resource:
    res: Resource = {
        "resourceType": "Encounter",
        "id": enc.uid,
        "meta": _meta(enc.last_updated, enc.uid),
        "identifier": [{"use": "official", "system": IDS["visit"], "value": enc.visit_number}],
        "status": "finished",
        "class": {"system": SYS["act_code"], "code": enc.cls["code"], "display": enc.cls["display"]},
        "type": [_concept(SYS["snomed"], enc.type["code"], enc.type["display"])],
        "subject": {"reference": f"Patient/{p.uid}"},
        "period": {
            "start": local_datetime(enc.start, p.utc_offset_minutes),
            "end": local_datetime(enc.end, p.utc_offset_minutes),
        },
    }
    if enc.reason_uid is not None:
        res["reasonReference"] = [{"reference": f"Condition/{enc.reason_uid}"}]
    return res


def condition_resource(p: PatientRecord, cond: Condition) -> Resource:
    entry = cond.code
    snomed = {"system": SYS["snomed"], "code": entry["snomed"], "display": entry["display"]}
    icd10 = {"system": SYS["icd10cm"], "code": entry["icd10"], "display": entry["icd10_display"]}
    codings = {"snomed": [snomed], "icd10": [icd10], "both": [snomed, icd10]}[cond.coding]
    res: Resource = {
        "resourceType": "Condition",
        "id": cond.uid,
        "meta": _meta(cond.last_updated, cond.uid),
        "clinicalStatus": _status(SYS["condition_clinical"], cond.clinical_status),
        "verificationStatus": _status(SYS["condition_verification"], cond.verification_status),
        "category": [_concept(SYS["condition_category"], cond.category, _CATEGORY_DISPLAY[cond.category])],
        "code": {"coding": codings, "text": codings[0]["display"]},
        "subject": {"reference": f"Patient/{p.uid}"},
    }
    if cond.encounter_uid is not None:
        res["encounter"] = {"reference": f"Encounter/{cond.encounter_uid}"}
    res["onsetDateTime"] = local_date(cond.onset, p.utc_offset_minutes)
    if cond.abatement is not None:
        res["abatementDateTime"] = local_date(cond.abatement, p.utc_offset_minutes)
    res["recordedDate"] = local_datetime(cond.recorded, p.utc_offset_minutes)
    return res


def _observation_head(uid: str, updated: int) -> Resource:
    return {"resourceType": "Observation", "id": uid, "meta": _meta(updated, uid), "status": "final"}


def vital_resource(p: PatientRecord, enc: Encounter, v: VitalSign) -> Resource:
    res = _observation_head(v.uid, v.last_updated)
    res["category"] = _VITAL_CATEGORY
    code = _VITALS["panel"] if v.kind == "blood_pressure" else _VITALS[v.kind]
    res["code"] = _concept(SYS["loinc"], code["code"], code["display"])
    res["subject"] = {"reference": f"Patient/{p.uid}"}
    res["encounter"] = {"reference": f"Encounter/{enc.uid}"}
    res["effectiveDateTime"] = local_datetime(v.when, p.utc_offset_minutes)
    if v.kind == "blood_pressure":
        res["component"] = [
            {
                "code": _concept(SYS["loinc"], _VITALS[part]["code"], _VITALS[part]["display"]),
                "valueQuantity": _quantity(value, v.unit),
            }
            for part, value in zip(("systolic", "diastolic"), v.values, strict=True)
        ]
    else:
        res["valueQuantity"] = _quantity(v.values[0], v.unit)
    return res


def lab_resource(p: PatientRecord, enc: Encounter, panel: LabPanel, r: LabResult) -> Resource:
    spec = _TESTS[r.test]
    loinc = {"system": SYS["loinc"], "code": spec["loinc"], "display": spec["display"]}
    local = {"system": SYS["legacy_lab"], "code": r.test, "display": spec["local_display"]}
    # Legacy interfaces put their own code first and the LOINC alternate second, when they send one at all.
    codings = {"loinc": [loinc], "local": [local], "both": [local, loinc]}[r.coding]
    res = _observation_head(r.uid, r.last_updated)
    res["category"] = _LAB_CATEGORY
    res["code"] = {"coding": codings, "text": codings[0]["display"]}
    res["subject"] = {"reference": f"Patient/{p.uid}"}
    res["encounter"] = {"reference": f"Encounter/{enc.uid}"}
    res["effectiveDateTime"] = local_datetime(panel.collected, p.utc_offset_minutes)
    res["issued"] = local_datetime(panel.issued, p.utc_offset_minutes)
    res["valueQuantity"] = _quantity(r.value, spec["unit"])
    res["interpretation"] = [
        _concept(SYS["interpretation"], r.interpretation, _INTERPRETATION[r.interpretation])
    ]
    bounds: Resource = {}
    if spec["low"] is not None:
        bounds["low"] = _quantity(spec["low"], spec["unit"])
    if spec["high"] is not None:
        bounds["high"] = _quantity(spec["high"], spec["unit"])
    res["referenceRange"] = [bounds]
    return res


def report_resource(p: PatientRecord, enc: Encounter, panel: LabPanel) -> Resource:
    return {
        "resourceType": "DiagnosticReport",
        "id": panel.uid,
        "meta": _meta(panel.last_updated, panel.uid),
        "identifier": [{"system": IDS["accession"], "value": panel.accession}],
        "status": "final",
        "category": _REPORT_CATEGORY,
        "code": _concept(SYS["loinc"], panel.panel["code"], panel.panel["display"]),
        "subject": {"reference": f"Patient/{p.uid}"},
        "encounter": {"reference": f"Encounter/{enc.uid}"},
        "effectiveDateTime": local_datetime(panel.collected, p.utc_offset_minutes),
        "issued": local_datetime(panel.issued, p.utc_offset_minutes),
        "result": [{"reference": f"Observation/{r.uid}"} for r in panel.results],
    }


def medication_resource(p: PatientRecord, med: MedicationOrder) -> Resource:
    drug = med.drug
    codings = []
    if med.coding in ("rxnorm", "both"):
        codings.append({"system": SYS["rxnorm"], "code": drug["rxnorm"], "display": drug["display"]})
    if med.coding in ("ndc", "both"):
        codings.append({"system": SYS["ndc"], "code": drug["ndc"], "display": drug["ndc_display"]})
    unit = CODES["dose_units"][drug["dose_unit"]]
    route = CODES["routes"][drug["route"]]
    dosage: Resource = {
        "sequence": 1,
        "text": drug["text"],
        "timing": {"repeat": {"frequency": drug["frequency"], "period": 1, "periodUnit": "d"}},
    }
    if drug.get("as_needed"):
        dosage["asNeededBoolean"] = True
    dosage["route"] = _concept(SYS["snomed"], route["code"], route["display"])
    dosage["doseAndRate"] = [
        {
            "doseQuantity": {
                "value": drug.get("dose", 1),
                "unit": unit["display"],
                "system": SYS["ucum"],
                "code": unit["code"],
            }
        }
    ]
    res: Resource = {
        "resourceType": "MedicationRequest",
        "id": med.uid,
        "meta": _meta(med.last_updated, med.uid),
        "identifier": [{"system": IDS["order"], "value": med.order_number}],
        "status": med.status,
        "intent": "order",
        "medicationCodeableConcept": {"coding": codings, "text": codings[0]["display"]},
        "subject": {"reference": f"Patient/{p.uid}"},
        "encounter": {"reference": f"Encounter/{med.encounter_uid}"},
        "authoredOn": local_datetime(med.authored, p.utc_offset_minutes),
    }
    if med.reason_uid is not None:
        res["reasonReference"] = [{"reference": f"Condition/{med.reason_uid}"}]
    res["dosageInstruction"] = [dosage]
    if "days" in drug:
        res["dispenseRequest"] = {
            "expectedSupplyDuration": {
                "value": drug["days"],
                "unit": "days",
                "system": SYS["ucum"],
                "code": "d",
            }
        }
    return res


def allergy_resource(p: PatientRecord, a: Allergy) -> Resource:
    sub = a.substance
    res: Resource = {
        "resourceType": "AllergyIntolerance",
        "id": a.uid,
        "meta": _meta(a.last_updated, a.uid),
        "clinicalStatus": _status(SYS["allergy_clinical"], a.clinical_status),
        "verificationStatus": _status(SYS["allergy_verification"], a.verification_status),
        "type": a.type,
        "category": [sub["category"]],
        "criticality": a.criticality,
        "code": _concept(SYS[sub["system"]], sub["code"], sub["display"]),
        "patient": {"reference": f"Patient/{p.uid}"},
    }
    if a.onset is not None:
        res["onsetDateTime"] = a.onset.isoformat()
    res["recordedDate"] = local_datetime(a.recorded, p.utc_offset_minutes)
    res["reaction"] = [
        {
            "manifestation": [_concept(SYS["snomed"], a.reaction["code"], a.reaction["display"])],
            "severity": a.severity,
        }
    ]
    return res


def immunization_resource(p: PatientRecord, imm: Immunization) -> Resource:
    res: Resource = {
        "resourceType": "Immunization",
        "id": imm.uid,
        "meta": _meta(imm.last_updated, imm.uid),
        "status": imm.status,
    }
    if imm.status_reason is not None:
        reason = imm.status_reason
        res["statusReason"] = _concept(SYS["act_reason"], reason["code"], reason["display"])
    res["vaccineCode"] = _concept(SYS["cvx"], imm.vaccine["cvx"], imm.vaccine["display"])
    res["patient"] = {"reference": f"Patient/{p.uid}"}
    res["encounter"] = {"reference": f"Encounter/{imm.encounter_uid}"}
    res["occurrenceDateTime"] = local_datetime(imm.when, p.utc_offset_minutes)
    res["primarySource"] = True
    if imm.lot_number is not None:
        res["lotNumber"] = imm.lot_number
    return res


def procedure_resource(p: PatientRecord, proc: Procedure) -> Resource:
    res: Resource = {
        "resourceType": "Procedure",
        "id": proc.uid,
        "meta": _meta(proc.last_updated, proc.uid),
        "status": "completed",
        "code": _concept(SYS["snomed"], proc.code["code"], proc.code["display"]),
        "subject": {"reference": f"Patient/{p.uid}"},
        "encounter": {"reference": f"Encounter/{proc.encounter_uid}"},
    }
    start = local_datetime(proc.start, p.utc_offset_minutes)
    if proc.end is None:
        res["performedDateTime"] = start
    else:
        res["performedPeriod"] = {"start": start, "end": local_datetime(proc.end, p.utc_offset_minutes)}
    return res

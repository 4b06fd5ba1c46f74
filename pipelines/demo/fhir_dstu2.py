"""Render a synthetic patient as FHIR DSTU2 (1.0.2), the shapes an older Millennium serves.

DSTU2 differs from R4 where the upgrade must work: MedicationOrder, code strings for Condition and
AllergyIntolerance statuses, Encounter.patient and a class code, single-valued categories, Patient
family names as lists, Immunization.wasNotGiven/reported, and the DSTU2 code systems' old URLs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pipelines.demo.fhir_r4 import _concept, _meta, _quantity, local_date, local_datetime
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
_TESTS = CODES["lab_tests"]
# DSTU2's own code-system URLs, before HL7 moved them under terminology.hl7.org.
DSTU2_SYS = {
    "observation_category": "http://hl7.org/fhir/observation-category",
    "condition_category": "http://hl7.org/fhir/condition-category",
    "diagnostic_service": "http://hl7.org/fhir/v2/0074",
    "interpretation": "http://hl7.org/fhir/v2/0078",
}
_ENCOUNTER_CLASS = {"AMB": "ambulatory", "EMER": "emergency", "IMP": "inpatient"}
# Codes R4 added have no DSTU2 spelling; an older system recorded the nearest DSTU2 code.
_CONDITION_CLINICAL = {
    "active": "active",
    "remission": "remission",
    "resolved": "resolved",
    "inactive": "resolved",
}
_CONDITION_VERIFICATION = {
    "confirmed": "confirmed",
    "provisional": "provisional",
    "unconfirmed": "provisional",
}
_CRITICALITY = {"low": "CRITL", "high": "CRITH", "unable-to-assess": "CRITU"}
_CATEGORY_DISPLAY = {"problem-list-item": "Problem List Item", "encounter-diagnosis": "Encounter Diagnosis"}
_INTERPRETATION = {"H": "High", "L": "Low", "N": "Normal"}


def render_patient_dstu2(p: PatientRecord) -> Iterator[tuple[str, Resource]]:
    """Every resource of one patient as (DSTU2 resourceType, resource), in a fixed order."""
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
        yield "MedicationOrder", medication_order_resource(p, med)
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
        "identifier": [{"use": "usual", "system": IDS["mrn"], "value": p.mrn}],
        "active": True,
        "name": [{"use": "official", "family": [p.family], "given": list(p.given)}],
        "telecom": [{"system": "phone", "value": p.phone, "use": "home"}],
        "gender": p.gender,
        "birthDate": p.birth_date.isoformat(),
    }
    if p.deceased_at is not None:
        res["deceasedDateTime"] = local_datetime(p.deceased_at, p.utc_offset_minutes)
    a = p.address
    res["address"] = [
        {"use": "home", "line": list(a.line), "city": a.city, "state": a.state, "postalCode": a.postal_code}
    ]
    return res


def encounter_resource(p: PatientRecord, enc: Encounter) -> Resource:
    res: Resource = {
        "resourceType": "Encounter",
        "id": enc.uid,
        "meta": _meta(enc.last_updated, enc.uid),
        "identifier": [{"use": "official", "system": IDS["visit"], "value": enc.visit_number}],
        "status": "finished",
        "class": _ENCOUNTER_CLASS[enc.cls["code"]],
        "type": [_concept(SYS["snomed"], enc.type["code"], enc.type["display"])],
        "patient": {"reference": f"Patient/{p.uid}"},
        "period": {
            "start": local_datetime(enc.start, p.utc_offset_minutes),
            "end": local_datetime(enc.end, p.utc_offset_minutes),
        },
    }
    if enc.reason_uid is not None:
        res["indication"] = [{"reference": f"Condition/{enc.reason_uid}"}]
    return res


def condition_resource(p: PatientRecord, cond: Condition) -> Resource:
    entry = cond.code
    res: Resource = {
        "resourceType": "Condition",
        "id": cond.uid,
        "meta": _meta(cond.last_updated, cond.uid),
        "patient": {"reference": f"Patient/{p.uid}"},
    }
    if cond.encounter_uid is not None:
        res["encounter"] = {"reference": f"Encounter/{cond.encounter_uid}"}
    res["dateRecorded"] = local_date(cond.recorded, p.utc_offset_minutes)
    snomed = {"system": SYS["snomed"], "code": entry["snomed"], "display": entry["display"]}
    icd10 = {"system": SYS["icd10cm"], "code": entry["icd10"], "display": entry["icd10_display"]}
    codings = {"snomed": [snomed], "icd10": [icd10], "both": [snomed, icd10]}[cond.coding]
    res["code"] = {"coding": codings, "text": codings[0]["display"]}
    res["category"] = _concept(
        DSTU2_SYS["condition_category"], _category(cond), _CATEGORY_DISPLAY[cond.category]
    )
    res["clinicalStatus"] = _CONDITION_CLINICAL[cond.clinical_status]
    res["verificationStatus"] = _CONDITION_VERIFICATION[cond.verification_status]
    res["onsetDateTime"] = local_date(cond.onset, p.utc_offset_minutes)
    if cond.abatement is not None:
        res["abatementDateTime"] = local_date(cond.abatement, p.utc_offset_minutes)
    return res


def _category(cond: Condition) -> str:
    # DSTU2's condition-category codes (complaint | symptom | finding | diagnosis): a problem-list entry
    # of an older system was usually a "complaint"; an encounter's diagnosis a "diagnosis".
    return "diagnosis" if cond.category == "encounter-diagnosis" else "complaint"


def _observation(uid: str, updated: int, category: str, p: PatientRecord, enc: Encounter) -> Resource:
    display = "Vital Signs" if category == "vital-signs" else "Laboratory"
    return {
        "resourceType": "Observation",
        "id": uid,
        "meta": _meta(updated, uid),
        "status": "final",
        "category": _concept(DSTU2_SYS["observation_category"], category, display),
        "subject": {"reference": f"Patient/{p.uid}"},
        "encounter": {"reference": f"Encounter/{enc.uid}"},
    }


def vital_resource(p: PatientRecord, enc: Encounter, v: VitalSign) -> Resource:
    res = _observation(v.uid, v.last_updated, "vital-signs", p, enc)
    code = _VITALS["panel"] if v.kind == "blood_pressure" else _VITALS[v.kind]
    res["code"] = _concept(SYS["loinc"], code["code"], code["display"])
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
    res = _observation(r.uid, r.last_updated, "laboratory", p, enc)
    loinc = {"system": SYS["loinc"], "code": spec["loinc"], "display": spec["display"]}
    local = {"system": SYS["legacy_lab"], "code": r.test, "display": spec["local_display"]}
    codings = {"loinc": [loinc], "local": [local], "both": [local, loinc]}[r.coding]
    res["code"] = {"coding": codings, "text": codings[0]["display"]}
    res["effectiveDateTime"] = local_datetime(panel.collected, p.utc_offset_minutes)
    res["issued"] = local_datetime(panel.issued, p.utc_offset_minutes)
    res["valueQuantity"] = _quantity(r.value, spec["unit"])
    # DSTU2 interpretation is one CodeableConcept, not a list.
    res["interpretation"] = _concept(
        DSTU2_SYS["interpretation"], r.interpretation, _INTERPRETATION[r.interpretation]
    )
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
        "category": _concept(DSTU2_SYS["diagnostic_service"], "LAB", "Laboratory"),
        "code": _concept(SYS["loinc"], panel.panel["code"], panel.panel["display"]),
        "subject": {"reference": f"Patient/{p.uid}"},
        "encounter": {"reference": f"Encounter/{enc.uid}"},
        "effectiveDateTime": local_datetime(panel.collected, p.utc_offset_minutes),
        "issued": local_datetime(panel.issued, p.utc_offset_minutes),
        "result": [{"reference": f"Observation/{r.uid}"} for r in panel.results],
    }


def medication_order_resource(p: PatientRecord, med: MedicationOrder) -> Resource:
    drug = med.drug
    unit = CODES["dose_units"][drug["dose_unit"]]
    route = CODES["routes"][drug["route"]]
    dosage: Resource = {
        "text": drug["text"],
        "timing": {"repeat": {"frequency": drug["frequency"], "period": 1, "periodUnits": "d"}},
    }
    if drug.get("as_needed"):
        dosage["asNeededBoolean"] = True
    dosage["route"] = _concept(SYS["snomed"], route["code"], route["display"])
    dosage["doseQuantity"] = {
        "value": drug.get("dose", 1),
        "unit": unit["display"],
        "system": SYS["ucum"],
        "code": unit["code"],
    }
    res: Resource = {
        "resourceType": "MedicationOrder",
        "id": med.uid,
        "meta": _meta(med.last_updated, med.uid),
        "identifier": [{"system": IDS["order"], "value": med.order_number}],
        "dateWritten": local_datetime(med.authored, p.utc_offset_minutes),
        "status": med.status,
        "patient": {"reference": f"Patient/{p.uid}"},
        "encounter": {"reference": f"Encounter/{med.encounter_uid}"},
    }
    if med.reason_uid is not None:
        res["reasonReference"] = {"reference": f"Condition/{med.reason_uid}"}
    codings = []
    if med.coding in ("rxnorm", "both"):
        codings.append({"system": SYS["rxnorm"], "code": drug["rxnorm"], "display": drug["display"]})
    if med.coding in ("ndc", "both"):
        codings.append({"system": SYS["ndc"], "code": drug["ndc"], "display": drug["ndc_display"]})
    res["medicationCodeableConcept"] = {"coding": codings, "text": codings[0]["display"]}
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
    # DSTU2 has one status: a doubtful entry says so, otherwise the clinical state stands.
    status = a.verification_status if a.verification_status != "confirmed" else a.clinical_status
    res: Resource = {
        "resourceType": "AllergyIntolerance",
        "id": a.uid,
        "meta": _meta(a.last_updated, a.uid),
        "recordedDate": local_datetime(a.recorded, p.utc_offset_minutes),
        "patient": {"reference": f"Patient/{p.uid}"},
        "substance": _concept(SYS[sub["system"]], sub["code"], sub["display"]),
        "status": status,
        "criticality": _CRITICALITY[a.criticality],
        "type": a.type,
        "category": sub["category"] if sub["category"] != "biologic" else "other",
    }
    if a.onset is not None:
        res["onset"] = a.onset.isoformat()
    res["reaction"] = [
        {
            "manifestation": [_concept(SYS["snomed"], a.reaction["code"], a.reaction["display"])],
            "severity": a.severity,
        }
    ]
    return res


def immunization_resource(p: PatientRecord, imm: Immunization) -> Resource:
    not_given = imm.status == "not-done"
    res: Resource = {
        "resourceType": "Immunization",
        "id": imm.uid,
        "meta": _meta(imm.last_updated, imm.uid),
        "status": "completed",
        "date": local_datetime(imm.when, p.utc_offset_minutes),
        "vaccineCode": _concept(SYS["cvx"], imm.vaccine["cvx"], imm.vaccine["display"]),
        "patient": {"reference": f"Patient/{p.uid}"},
        "wasNotGiven": not_given,
        "reported": False,
        "encounter": {"reference": f"Encounter/{imm.encounter_uid}"},
    }
    if imm.lot_number is not None:
        res["lotNumber"] = imm.lot_number
    if imm.status_reason is not None:
        reason = imm.status_reason
        res["explanation"] = {
            "reasonNotGiven": [_concept(SYS["act_reason"], reason["code"], reason["display"])]
        }
    return res


def procedure_resource(p: PatientRecord, proc: Procedure) -> Resource:
    res: Resource = {
        "resourceType": "Procedure",
        "id": proc.uid,
        "meta": _meta(proc.last_updated, proc.uid),
        "subject": {"reference": f"Patient/{p.uid}"},
        "status": "completed",
        "code": _concept(SYS["snomed"], proc.code["code"], proc.code["display"]),
        "encounter": {"reference": f"Encounter/{proc.encounter_uid}"},
    }
    start = local_datetime(proc.start, p.utc_offset_minutes)
    if proc.end is None:
        res["performedDateTime"] = start
    else:
        res["performedPeriod"] = {"start": start, "end": local_datetime(proc.end, p.utc_offset_minutes)}
    return res

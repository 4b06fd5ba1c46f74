"""Encounter: DSTU2 -> STU3 (class code to v3 ActCode) and STU3 -> R4."""

from __future__ import annotations

from pipelines.convert.fhir.upgrade.base import Mover, as_list, system

_DIAGNOSIS_ROLE = "http://terminology.hl7.org/CodeSystem/diagnosis-role"


def r2_encounter(m: Mover) -> None:
    m.same("identifier", "type", "priority", "episodeOfCare", "incomingReferral", "appointment", "period")
    m.same("length", "reason", "serviceProvider", "partOf")
    m.code("status", "r2.encounter-status")
    if m.has("class"):
        code = m.map_code(m.take("class"), "r2.encounter-class", "class")
        m.out["class"] = {"system": system("v3-ActCode"), "code": code}
    m.each("statusHistory", lambda c: c.code("status", "r2.encounter-status").same("period"))
    m.rename("patient", "subject")
    m.each("participant", lambda c: c.same("type", "period", "individual"))
    diagnoses = [{"condition": ref} for ref in as_list(m.take("indication"))]
    if m.has("hospitalization"):
        hosp = Mover(m.take("hospitalization"), m.release, m.rtype, "Encounter.hospitalization")
        hosp.same("id", "extension", "modifierExtension", "preAdmissionIdentifier", "origin", "admitSource")
        hosp.same("reAdmission", "dietPreference", "specialCourtesy", "specialArrangement", "destination")
        hosp.same("dischargeDisposition")
        # HL7's map turns admitting and discharge diagnoses into Encounter.diagnosis with a role.
        for name, role in (("admittingDiagnosis", "AD"), ("dischargeDiagnosis", "DD")):
            for ref in as_list(hosp.take(name)):
                diagnoses.append(
                    {"condition": ref, "role": {"coding": [{"system": _DIAGNOSIS_ROLE, "code": role}]}}
                )
        m.out["hospitalization"] = hosp.finish()
    if diagnoses:
        m.out["diagnosis"] = diagnoses
    m.each("location", lambda c: c.same("location", "status", "period"))


def r3_encounter(m: Mover) -> None:
    m.same("identifier", "status", "statusHistory", "class", "classHistory", "type", "priority", "subject")
    m.same("episodeOfCare", "participant", "appointment", "period", "length", "account", "serviceProvider")
    m.same("partOf")
    m.rename("incomingReferral", "basedOn")
    m.rename("reason", "reasonCode")
    m.each("diagnosis", lambda c: c.same("condition", "rank").rename("role", "use"))
    m.each("hospitalization", _r3_hospitalization)
    m.each("location", lambda c: c.same("location", "status", "period"))


def _r3_hospitalization(m: Mover) -> None:
    m.same("preAdmissionIdentifier", "origin", "admitSource", "reAdmission", "dietPreference")
    m.same("specialCourtesy", "specialArrangement", "destination", "dischargeDisposition")

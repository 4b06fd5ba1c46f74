"""Observation, DiagnosticReport, Procedure and DocumentReference: DSTU2 -> STU3 and STU3 -> R4."""

from __future__ import annotations

from pipelines.convert.fhir.upgrade.base import Mover, as_list

# value[x] types R4 Observation still has; an Attachment value has no R4 home.
_R4_VALUES = (
    "Quantity",
    "CodeableConcept",
    "String",
    "Boolean",
    "Integer",
    "Range",
    "Ratio",
    "SampledData",
    "Time",
    "DateTime",
    "Period",
)
_R3_RELATED = {"has-member": "hasMember", "derived-from": "derivedFrom"}
_COMPOSITION_STATUS = "http://hl7.org/fhir/composition-status"


def r2_observation(m: Mover) -> None:
    m.same("identifier", "code", "subject", "issued", "performer", "dataAbsentReason", "interpretation")
    m.same("bodySite", "method", "specimen", "device")
    m.code("status", "r2.observation-status")
    m.rename("category", "category", lambda v: [v])
    m.rename("encounter", "context")
    m.rename("comments", "comment")
    m.choice("effective")
    m.choice("value")
    m.each("referenceRange", _r2_range)
    m.each("related", lambda c: c.same("type", "target"))
    m.each("component", _r2_component)


def _r2_range(m: Mover) -> None:
    m.same("low", "high", "age", "text")
    m.rename("meaning", "type")


def _r2_component(m: Mover) -> None:
    m.same("code", "dataAbsentReason")
    m.choice("value")
    m.each("referenceRange", _r2_range)


def r3_observation(m: Mover) -> None:
    m.same("identifier", "basedOn", "status", "category", "code", "subject", "issued", "performer")
    m.same("dataAbsentReason", "bodySite", "method", "specimen", "device")
    m.rename("context", "encounter")
    m.rename("interpretation", "interpretation", as_list)
    if m.has("comment"):
        m.out["note"] = [{"text": m.take("comment")}]
    m.choice("effective")
    m.choice("value", allowed=_R4_VALUES)
    m.each("referenceRange", lambda c: c.same("low", "high", "type", "appliesTo", "age", "text"))
    for related in as_list(m.take("related")):
        kind = _R3_RELATED.get(related.get("type", "has-member")) if isinstance(related, dict) else None
        if kind is None or set(related) - {"id", "type", "target"}:
            m.fail("upgrade_no_r4_home", "Observation.related type has no counterpart in R4")
        m.out.setdefault(kind, []).append(related["target"])
    m.each("component", _r3_component)


def _r3_component(m: Mover) -> None:
    m.same("code", "dataAbsentReason")
    m.rename("interpretation", "interpretation", as_list)
    m.choice("value", allowed=_R4_VALUES)
    m.each("referenceRange", lambda c: c.same("low", "high", "type", "appliesTo", "age", "text"))


def r2_diagnostic_report(m: Mover) -> None:
    m.same("identifier", "category", "code", "subject", "issued", "specimen", "result", "imagingStudy")
    m.same("conclusion", "codedDiagnosis", "presentedForm")
    m.code("status", "r2.diagnostic-report-status")
    m.rename("encounter", "context")
    m.rename("request", "basedOn")
    m.choice("effective")
    if m.has("performer"):
        m.out["performer"] = [{"actor": m.take("performer")}]
    m.each("image", lambda c: c.same("comment", "link"))


def r3_diagnostic_report(m: Mover) -> None:
    m.same("identifier", "basedOn", "status", "code", "subject", "issued", "specimen", "result")
    m.same("imagingStudy", "conclusion", "presentedForm")
    m.rename("category", "category", as_list)
    m.rename("context", "encounter")
    m.rename("codedDiagnosis", "conclusionCode")
    m.choice("effective")
    for performer in as_list(m.take("performer")):
        if not isinstance(performer, dict) or "actor" not in performer or set(performer) - {"id", "actor"}:
            # R4 performer is a bare reference: a performer role would be dropped, so it is not guessed.
            m.fail("upgrade_no_r4_home", "DiagnosticReport.performer.role has no counterpart in R4")
        m.out.setdefault("performer", []).append(performer["actor"])
    m.each("image", lambda c: c.same("comment", "link"), new="media")


def r2_procedure(m: Mover) -> None:
    m.same("identifier", "subject", "category", "code", "bodySite", "location", "outcome", "report")
    m.same("complication", "followUp")
    m.code("status", "r2.procedure-status")
    m.rename("notPerformed", "notDone")
    if m.has("reasonNotPerformed"):
        reasons = as_list(m.take("reasonNotPerformed"))
        if len(reasons) > 1:
            m.fail("upgrade_no_r4_home", "Procedure.reasonNotPerformed repeats; STU3 and R4 keep one reason")
        m.out["notDoneReason"] = reasons[0]
    m.rename("reasonCodeableConcept", "reasonCode", lambda v: [v])
    m.rename("reasonReference", "reasonReference", as_list)
    m.each("performer", lambda c: c.same("actor", "role"))
    m.choice("performed")
    m.rename("encounter", "context")
    m.rename("request", "basedOn", as_list)
    if m.has("notes"):
        m.out["note"] = m.take("notes")
    m.each("focalDevice", lambda c: c.same("action", "manipulated"))
    m.rename("used", "usedReference")


def r3_procedure(m: Mover) -> None:
    m.same("identifier", "basedOn", "partOf", "category", "code", "subject", "location", "reasonCode")
    m.same("reasonReference", "bodySite", "outcome", "report", "complication", "complicationDetail")
    m.same("followUp", "note", "usedReference", "usedCode")
    not_done = m.take("notDone") is True
    status = m.take("status")
    if not_done:
        m.out["status"] = "not-done"
    elif status is not None:
        m.out["status"] = m.map_code(status, "r3.procedure-status", "status")
    m.rename("notDoneReason", "statusReason")
    m.rename("context", "encounter")
    m.to_extension("definition", "Reference")
    m.choice("performed")
    m.each("performer", lambda c: c.same("actor", "onBehalfOf").rename("role", "function"))
    m.each("focalDevice", lambda c: c.same("action", "manipulated"))


def r2_document_reference(m: Mover) -> None:
    m.same("masterIdentifier", "identifier", "subject", "type", "class", "author", "custodian")
    m.same("authenticator", "created", "indexed", "description", "securityLabel")
    m.code("status", "r2.document-reference-status")
    if m.has("docStatus"):
        codes = [
            c.get("code")
            for c in as_list(m.take("docStatus").get("coding"))
            if isinstance(c, dict) and c.get("system") == _COMPOSITION_STATUS
        ]
        if not codes:
            m.fail("upgrade_unmappable_code", "DocumentReference.docStatus has no composition-status code")
        m.out["docStatus"] = m.map_code(codes[0], "r3.composition-status", "docStatus")
    m.each("relatesTo", lambda c: c.same("code", "target"))
    m.each("content", _r2_content)
    m.each("context", _r2_context)


def _r2_content(m: Mover) -> None:
    m.same("attachment")
    formats = as_list(m.take("format"))
    if len(formats) > 1:
        m.fail("upgrade_no_r4_home", "DocumentReference.content.format repeats; STU3 and R4 keep one")
    if formats:
        m.out["format"] = formats[0]


def _r2_context(m: Mover) -> None:
    m.same("encounter", "event", "period", "facilityType", "practiceSetting", "sourcePatientInfo")
    m.each("related", lambda c: c.same("identifier", "ref"))


def r3_document_reference(m: Mover) -> None:
    m.same("masterIdentifier", "identifier", "status", "docStatus", "type", "subject", "author")
    m.same("authenticator", "custodian", "description", "securityLabel")
    m.rename("class", "category", lambda v: [v])
    m.rename("indexed", "date")
    m.to_extension("created", "DateTime")
    m.each("relatesTo", lambda c: c.same("code", "target"))
    m.each("content", lambda c: c.same("attachment", "format"))
    m.each("context", _r3_context)


def _r3_context(m: Mover) -> None:
    m.same("event", "period", "facilityType", "practiceSetting", "sourcePatientInfo")
    m.rename("encounter", "encounter", as_list)
    related = []
    for item in as_list(m.take("related")):
        if not isinstance(item, dict):
            m.fail("upgrade_invalid_element", "DocumentReference.context.related is not an object")
        if "ref" in item:
            related.append(item["ref"])
        elif "identifier" in item:
            related.append({"identifier": item["identifier"]})
    if related:
        m.out["related"] = related

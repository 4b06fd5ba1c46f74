"""Medication resources and Immunization: MedicationOrder becomes MedicationRequest on the way."""

from __future__ import annotations

from typing import Any

from pipelines.convert.fhir.upgrade.base import Mover, as_list, system
from pipelines.convert.fhir.upgrade.datatypes import r2_dosage, r2_statement_dosage, r3_dosages


def _note(value: Any) -> list[dict[str, Any]]:
    return [{"text": value}]


def r2_medication_order(m: Mover) -> None:
    m.out["intent"] = "order"  # a DSTU2 MedicationOrder is an order (HL7's map)
    m.same("identifier", "priorPrescription")
    m.code("status", "r2.medication-order-status")
    m.rename("dateWritten", "authoredOn")
    m.rename("patient", "subject")
    m.rename("encounter", "context")
    if m.has("prescriber"):
        m.out["requester"] = {"agent": m.take("prescriber")}
    m.rename("reasonCodeableConcept", "reasonCode", lambda v: [v])
    m.rename("reasonReference", "reasonReference", lambda v: [v])
    m.rename("note", "note", _note)
    m.choice("medication")
    m.to_extension("dateEnded", "DateTime")
    m.to_extension("reasonEnded", "CodeableConcept")
    m.each("dosageInstruction", r2_dosage)
    m.each("dispenseRequest", _r2_dispense_request)
    # DSTU2 substitution.type is bound to ActSubstanceAdminSubstitutionCode, the value set of R4
    # substitution.allowedCodeableConcept: the type says which substitution is allowed.
    m.each("substitution", lambda c: c.same("reason").rename("type", "allowedCodeableConcept"))


def _r2_dispense_request(m: Mover) -> None:
    m.same("validityPeriod", "numberOfRepeatsAllowed", "quantity", "expectedSupplyDuration")
    if any(k.startswith("medication") for k in m.src):
        # HL7's map refuses a dispense request naming its own medication: STU3 has no place for it.
        m.fail("upgrade_no_r4_home", "MedicationOrder.dispenseRequest.medication[x] has no counterpart")


def r3_medication_request(m: Mover) -> None:
    m.same("identifier", "basedOn", "groupIdentifier", "intent", "priority", "subject", "authoredOn")
    m.same("supportingInformation", "recorder", "reasonCode", "reasonReference", "note", "priorPrescription")
    m.same("detectedIssue", "eventHistory")
    m.code("status", "r3.medication-request-status")
    m.rename("category", "category", as_list)
    m.rename("context", "encounter")
    m.to_extension("definition", "Reference")
    m.choice("medication")
    if m.has("requester"):
        requester = m.take("requester")
        if not isinstance(requester, dict) or "agent" not in requester or set(requester) - {"id", "agent"}:
            m.fail("upgrade_no_r4_home", "MedicationRequest.requester.onBehalfOf has no counterpart in R4")
        m.out["requester"] = requester["agent"]
    if m.has("dosageInstruction"):
        m.out["dosageInstruction"] = r3_dosages(
            m.take("dosageInstruction"), m.release, m.rtype, "MedicationRequest.dosageInstruction"
        )
    m.each(
        "dispenseRequest",
        lambda c: c.same(
            "validityPeriod", "numberOfRepeatsAllowed", "quantity", "expectedSupplyDuration"
        ).same("performer"),
    )
    m.each(
        "substitution",
        lambda c: c.same("reason", "allowedCodeableConcept").rename("allowed", "allowedBoolean"),
    )


def r2_medication_statement(m: Mover) -> None:
    m.same("identifier", "informationSource", "dateAsserted", "reasonNotTaken")
    m.code("status", "r2.medication-statement-status")
    m.rename("patient", "subject")
    if m.has("wasNotTaken"):
        m.out["taken"] = "n" if m.take("wasNotTaken") is True else "y"
    m.rename("reasonForUseCodeableConcept", "reasonCode", lambda v: [v])
    m.rename("reasonForUseReference", "reasonReference", lambda v: [v])
    m.choice("effective")
    m.rename("note", "note", _note)
    m.rename("supportingInformation", "derivedFrom")
    m.choice("medication")
    m.each("dosage", r2_statement_dosage)


def r3_medication_statement(m: Mover) -> None:
    m.same("identifier", "basedOn", "partOf", "context", "category", "dateAsserted", "informationSource")
    m.same("subject", "derivedFrom", "reasonCode", "reasonReference", "note")
    m.choice("medication")
    m.choice("effective")
    status = m.take("status")
    taken = m.take("taken")
    if status is not None:
        status = m.map_code(status, "r3.medication-statement-status", "status")
    if taken in ("n", "unk"):
        # HL7's map: R4 folds "not taken" and "unknown" into status; the STU3 status stays as extension.
        if status is not None:
            m.add_extension("status", "Code", status)
        status = "not-taken" if taken == "n" else "unknown"
    elif taken == "na":
        m.add_extension("taken", "Code", taken)
    elif taken not in (None, "y"):
        m.fail("upgrade_unmappable_code", "MedicationStatement.taken code has no counterpart in R4")
    if status is not None:
        m.out["status"] = status
    if m.has("reasonNotTaken"):
        m.out.setdefault("statusReason", []).extend(as_list(m.take("reasonNotTaken")))
    if m.has("dosage"):
        m.out["dosage"] = r3_dosages(m.take("dosage"), m.release, m.rtype, "MedicationStatement.dosage")


def r2_medication_dispense(m: Mover) -> None:
    m.same("authorizingPrescription", "type", "quantity", "daysSupply", "whenPrepared", "whenHandedOver")
    m.same("destination", "receiver")
    m.rename("identifier", "identifier", lambda v: [v])
    m.code("status", "r2.medication-dispense-status")
    m.rename("patient", "subject")
    if m.has("dispenser"):
        m.out["performer"] = [{"actor": m.take("dispenser")}]
    m.rename("note", "note", _note)
    m.choice("medication")
    m.each("dosageInstruction", r2_dosage)
    m.each("substitution", _r2_substitution)


def _r2_substitution(m: Mover) -> None:
    # A DSTU2 substitution element exists only when a substitution was made.
    m.out["wasSubstituted"] = True
    m.same("type", "reason", "responsibleParty")


def r3_medication_dispense(m: Mover) -> None:
    m.same("identifier", "partOf", "category", "subject", "context", "supportingInformation")
    m.same("authorizingPrescription", "type", "quantity", "daysSupply", "whenPrepared", "whenHandedOver")
    m.same("destination", "receiver", "note", "detectedIssue", "eventHistory")
    m.code("status", "r3.medication-dispense-status")
    m.choice("medication")
    if m.take("notDone") is True:
        m.fail("upgrade_no_r4_home", "MedicationDispense.notDone has no faithful R4 status")
    m.choice("notDoneReason", "statusReason")
    # R4 dropped performer.onBehalfOf: HL7's cross-version extension keeps it.
    m.each("performer", lambda c: c.same("actor").to_extension("onBehalfOf", "Reference"))
    if m.has("dosageInstruction"):
        m.out["dosageInstruction"] = r3_dosages(
            m.take("dosageInstruction"), m.release, m.rtype, "MedicationDispense.dosageInstruction"
        )
    m.each("substitution", lambda c: c.same("wasSubstituted", "type", "reason", "responsibleParty"))


def r2_medication(m: Mover) -> None:
    m.same("code", "isBrand", "manufacturer")
    product = m.take("product")
    if isinstance(product, dict):
        p = Mover(product, m.release, m.rtype, "Medication.product")
        p.same("id")
        if p.has("form"):
            m.out["form"] = p.take("form")
        ingredients = []
        for item in as_list(p.take("ingredient")):
            ingredients.append(_r2_item(m, item, "Medication.product.ingredient"))
        if ingredients:
            m.out["ingredient"] = ingredients
        batches = as_list(p.take("batch"))
        if batches:
            m.out.setdefault("package", {})["batch"] = batches
        p.finish()
    package = m.take("package")
    if isinstance(package, dict):
        pkg = Mover(package, m.release, m.rtype, "Medication.package")
        pkg.same("id", "container")
        contents = [_r2_item(m, c, "Medication.package.content") for c in as_list(pkg.take("content"))]
        if contents:
            pkg.out["content"] = contents
        m.out.setdefault("package", {}).update(pkg.finish())


def _r2_item(m: Mover, item: Any, path: str) -> dict[str, Any]:
    if not isinstance(item, dict) or set(item) - {"id", "item", "amount"}:
        m.fail("upgrade_unmapped_element", f"{path} element(s) without an upgrade rule")
    out: dict[str, Any] = {}
    if "item" in item:
        out["itemReference"] = item["item"]
    if "amount" in item:
        out["amount"] = item["amount"]
    return out


def r3_medication(m: Mover) -> None:
    m.same("code", "status", "manufacturer", "form")
    m.to_extension("isBrand", "Boolean")
    m.to_extension("isOverTheCounter", "Boolean")
    m.to_extension("image", "Attachment")
    m.each("ingredient", lambda c: c.choice("item").same("isActive").rename("amount", "strength"))
    package = m.take("package")
    if isinstance(package, dict):
        if set(package) - {"id", "batch"}:
            m.fail("upgrade_no_r4_home", "Medication.package container and content have no R4 element")
        batches = as_list(package.get("batch"))
        if len(batches) > 1:
            m.fail("upgrade_no_r4_home", "Medication.package.batch repeats; R4 keeps one batch")
        if batches:
            m.out["batch"] = batches[0]


def r2_immunization(m: Mover) -> None:
    m.same("identifier", "date", "vaccineCode", "patient", "encounter", "manufacturer", "location")
    m.same("lotNumber", "expirationDate", "site", "route", "doseQuantity", "note")
    m.code("status", "r2.immunization-status")
    m.rename("wasNotGiven", "notGiven")
    if m.has("reported"):
        # DSTU2 "reported" (not administered by the recorder) is the negation of STU3 primarySource.
        reported = m.take("reported")
        if not isinstance(reported, bool):
            m.fail("upgrade_invalid_element", "Immunization.reported is not a boolean")
        m.out["primarySource"] = not reported
    for name, role in (("performer", "AP"), ("requester", "OP")):
        if m.has(name):
            m.out.setdefault("practitioner", []).append(
                {"role": {"coding": [{"system": system("v2-0443"), "code": role}]}, "actor": m.take(name)}
            )
    m.each("explanation", lambda c: c.same("reason", "reasonNotGiven"))
    m.each("reaction", lambda c: c.same("date", "detail", "reported"))
    m.each("vaccinationProtocol", _r2_protocol)


def _r2_protocol(m: Mover) -> None:
    m.same("doseSequence", "description", "authority", "series", "seriesDoses", "targetDisease")
    m.same("doseStatus", "doseStatusReason")


def r3_immunization(m: Mover) -> None:
    m.same("identifier", "vaccineCode", "patient", "encounter", "primarySource", "reportOrigin", "location")
    m.same("manufacturer", "lotNumber", "expirationDate", "site", "route", "doseQuantity", "note")
    m.code("status", "r3.immunization-status")
    not_given = m.take("notGiven")
    if not_given is True:
        m.out["status"] = "not-done"
    if not_given is not None and m.release == "3.0":
        # HL7's R3->R4 map keeps STU3 notGiven as an extension; from DSTU2 the status says it all.
        m.add_extension("notGiven", "Boolean", not_given)
    m.rename("date", "occurrenceDateTime")
    m.each("practitioner", lambda c: c.same("actor").rename("role", "function"), new="performer")
    explanation = m.take("explanation")
    if isinstance(explanation, dict):
        reasons = as_list(explanation.get("reason")) + as_list(explanation.get("reasonNotGiven"))
        if set(explanation) - {"id", "reason", "reasonNotGiven"}:
            m.fail("upgrade_unmapped_element", "Immunization.explanation element(s) without an upgrade rule")
        if reasons:
            m.out["reasonCode"] = reasons
    m.each("reaction", lambda c: c.same("date", "detail", "reported"))
    m.each("vaccinationProtocol", _r3_protocol, new="protocolApplied")


def _r3_protocol(m: Mover) -> None:
    m.same("authority", "targetDisease")
    m.rename("series", "series")
    m.rename("doseSequence", "doseNumberPositiveInt")
    m.rename("seriesDoses", "seriesDosesPositiveInt")
    m.to_extension("description", "String")
    m.to_extension("doseStatus", "CodeableConcept")
    m.to_extension("doseStatusReason", "CodeableConcept")

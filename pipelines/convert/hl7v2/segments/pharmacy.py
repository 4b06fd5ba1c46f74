"""RXA/RXR -> Immunization or MedicationAdministration, RXE/RXO/RXR -> MedicationRequest (the IG's maps)."""

from __future__ import annotations

from typing import Any

from pipelines.common.unit import Quarantine
from pipelines.convert.hl7v2 import vocab
from pipelines.convert.hl7v2.datatypes import (
    Ctx,
    coded,
    cwe_all,
    date,
    dtm,
    ei,
    first,
    organization,
    val,
    where,
    xcn,
)
from pipelines.convert.hl7v2.segments.results import order_identifiers
from pipelines.convert.hl7v2.segments.values import UCUM, quantity

V2_0443 = "http://terminology.hl7.org/CodeSystem/v2-0443"
CVX = "http://hl7.org/fhir/sid/cvx"


def _code_of(cc: dict[str, Any] | None) -> str:
    coding = (cc or {}).get("coding") or [{}]
    return f"{coding[0].get('system', '')}|{coding[0].get('code', '')}"


def _unit(ctx: Ctx, seg: Any, n: int) -> dict[str, Any]:
    u = first(seg, n)
    if u is None:
        return {}
    code, label = u.code(1), u.get(2) or u.code(1)
    system = vocab.system_uri(u.code(3), ctx.source_system)
    out: dict[str, Any] = {"unit": label}
    if code and (system == UCUM or (system is None and vocab.is_ucum_like(code))):
        out.update(system=UCUM, code=code)
    elif code and system:
        out.update(system=system, code=code)
    return out


def _dose(ctx: Ctx, seg: Any, amount: int, units: int) -> dict[str, Any] | None:
    # 999 is v2's "amount unknown" for a dose (CDC IIS guide), not a quantity.
    amt = val(seg, amount)
    if not amt or amt == "999":
        return None
    return quantity(amt, _unit(ctx, seg, units))


def _status(rxa: Any) -> str:
    if val(rxa, 21) == "D":
        return "entered-in-error"
    return vocab.code_of("completion_status", val(rxa, 20)) or "completed"


NO_VACCINE = "998"  # CVX: no vaccine administered
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"


def _not_given(rxa: Any, vaccine: dict[str, Any] | None) -> bool:
    """RXA-20 NA/RE, or CVX 998 whatever RXA-20 says (registries send 998 with CP): nothing was given."""
    if _status(rxa) == "not-done":
        return True
    coding = (vaccine or {}).get("coding") or [{}]
    return coding[0].get("system") == CVX and coding[0].get("code") == NO_VACCINE


def _status_reason(ctx: Ctx, rxa: Any, obxs: list[Any]) -> dict[str, Any] | None:
    """RXA-18's refusal reason as sent, with its FHIR reason beside it (NIP002 codes); without RXA-18,
    the CDC IIS evidence that follows the RXA: immunity (59784-9, 75505-8) or a contraindication that
    defers the dose (30945-0)."""
    reason = coded(ctx, rxa, 18)
    refusal = first(rxa, 18)
    if reason is not None and refusal is not None:
        fhir = vocab.coding_of("immunization_refusal", refusal.code(1))
        if fhir is not None and (refusal.code(3) or "NIP002").upper() == "NIP002":
            reason["coding"] = [*reason["coding"], fhir]
        return reason
    for obx in obxs:
        fhir = vocab.coding_of(
            "immunization_not_given_evidence", first(obx, 3).code(1) if first(obx, 3) else None
        )
        if fhir is not None:
            return {"coding": [fhir]}
    return None


def immunization(
    ctx: Ctx, rxa: Any, rxr: Any, orc: Any, subject: dict, patient_key: str, obxs: list[Any] = ()
) -> dict[str, Any]:
    """RXA (+RXR, ORC, the OBX after it) -> Immunization; not-done from RXA-20 or CVX 998, its reason
    from RXA-18 or the evidence OBX (the v2-to-FHIR IG's RXA map and the CDC IIS guide's patterns)."""
    when = dtm(ctx, val(rxa, 3), where(rxa, 3))
    vaccine = coded(ctx, rxa, 5, "0292")
    not_given = _not_given(rxa, vaccine)
    if vaccine is None and not_given and not val(rxa, 5):
        # "Nothing given" with RXA-5 left empty: CVX 998 says exactly that; R4 requires a vaccineCode.
        vaccine = {"coding": [{"system": CVX, "code": NO_VACCINE, "display": "no vaccine administered"}]}
    if vaccine is None or (when is None and not not_given):
        raise Quarantine("hl7_missing_required", "RXA-3 or RXA-5 is empty or invalid", "Immunization")
    key = f"{patient_key}|{when or 'undated'}|{_code_of(vaccine)}"
    evidence = [f"{first(o, 3).code(1)}={first(o, 5).code(1)}" for o in obxs if first(o, 3) and first(o, 5)]
    if evidence and _code_of(vaccine) == f"{CVX}|{NO_VACCINE}":
        # Several "no vaccine" records of one day (immunity to varicella, a contraindication to MMR)
        # differ only by the evidence that follows them.
        key += "|" + ",".join(evidence)
    im: dict[str, Any] = {"resourceType": "Immunization", "id": ctx.rid("Immunization", key)}
    meta = ctx.meta()
    if meta:
        im["meta"] = meta
    filler = ei(ctx, first(orc, 3)) if orc is not None else None
    if filler:
        im["identifier"] = [filler]
    im["status"] = "not-done" if not_given and _status(rxa) != "entered-in-error" else _status(rxa)
    reason = _status_reason(ctx, rxa, list(obxs)) if im["status"] == "not-done" else coded(ctx, rxa, 18)
    if reason:
        im["statusReason"] = reason
    im["vaccineCode"] = vaccine
    im["patient"] = subject
    if when:
        im["occurrenceDateTime"] = when
    else:
        # A dose not given whose date the sender left out: R4 requires an occurrence, and says so as text.
        im["occurrenceString"] = "unknown"
    recorded = dtm(ctx, val(rxa, 22), where(rxa, 22))
    if recorded and val(rxa, 21) == "A":
        im["recorded"] = recorded
    lot = val(rxa, 15)
    if lot:
        im["lotNumber"] = lot
    exp = date(ctx, val(rxa, 16), where(rxa, 16))
    if exp:
        im["expirationDate"] = exp
    mvx = first(rxa, 17)
    if mvx is not None:
        man = organization(ctx, mvx.get(2), mvx.code(1))
        if man:
            im["manufacturer"] = man
    if rxr is not None:
        site, route = coded(ctx, rxr, 2, "0163"), coded(ctx, rxr, 1, "0162")
        if site:
            im["site"] = site
        if route:
            im["route"] = route
    dose = _dose(ctx, rxa, 6, 7)
    if dose:
        im["doseQuantity"] = dose
    performer = xcn(ctx, first(rxa, 10))
    if performer:
        im["performer"] = [{"function": {"coding": [{"system": V2_0443, "code": "AP"}]}, "actor": performer}]
    reasons = cwe_all(ctx, rxa, 19)
    if reasons:
        im["reasonCode"] = reasons
    return im


def medication_administration(
    ctx: Ctx, rxa: Any, rxr: Any, subject: dict, enc: dict | None, order: str, request: dict | None
) -> dict[str, Any] | None:
    """RXA (+RXR) in a RAS -> MedicationAdministration."""
    med = coded(ctx, rxa, 5)
    start = dtm(ctx, val(rxa, 3), where(rxa, 3))
    if med is None or start is None:
        return None
    key = f"{order}|rxa:{val(rxa, 1) or ''}|{val(rxa, 2) or ''}|{start}"
    ma: dict[str, Any] = {
        "resourceType": "MedicationAdministration",
        "id": ctx.rid("MedicationAdministration", key),
    }
    meta = ctx.meta()
    if meta:
        ma["meta"] = meta
    status = _status(rxa)
    ma["status"] = {"completed": "completed", "not-done": "not-done"}.get(status, status)
    reason = coded(ctx, rxa, 18)
    if reason:
        ma["statusReason"] = [reason]
    ma["medicationCodeableConcept"] = med
    ma["subject"] = subject
    if enc:
        ma["context"] = enc
    end = dtm(ctx, val(rxa, 4), where(rxa, 4))
    ma["effectivePeriod" if end and end != start else "effectiveDateTime"] = (
        {"start": start, "end": end} if end and end != start else start
    )
    performer = xcn(ctx, first(rxa, 10))
    if performer:
        ma["performer"] = [{"actor": performer}]
    if request:
        ma["request"] = request
    dosage: dict[str, Any] = {}
    if rxr is not None:
        site, route = coded(ctx, rxr, 2, "0163"), coded(ctx, rxr, 1, "0162")
        if site:
            dosage["site"] = site
        if route:
            dosage["route"] = route
    dose = _dose(ctx, rxa, 6, 7)
    if dose:
        dosage["dose"] = dose
    if dosage:
        ma["dosage"] = dosage
    return ma


def medication_request(
    ctx: Ctx, orc: Any, rx: Any, rxrs: list[Any], key: str, subject: dict, enc: dict | None
) -> dict[str, Any] | None:
    """RXE or RXO (+RXR, ORC) -> MedicationRequest; RXE-2/RXO-1 the medication, ORC the order's status."""
    is_rxe = rx.name == "RXE"
    med = coded(ctx, rx, 2 if is_rxe else 1)
    if med is None:
        return None
    mr: dict[str, Any] = {"resourceType": "MedicationRequest", "id": ctx.rid("MedicationRequest", key)}
    meta = ctx.meta()
    if meta:
        mr["meta"] = meta
    idents = order_identifiers(ctx, orc, None) if orc is not None else []
    if idents:
        mr["identifier"] = idents
    status = vocab.code_of("order_status", val(orc, 5)) or vocab.code_of("order_control_status", val(orc, 1))
    mr["status"] = {"revoked": "cancelled"}.get(status or "", status or "unknown")
    mr["intent"] = "order"
    mr["medicationCodeableConcept"] = med
    mr["subject"] = subject
    if enc:
        mr["encounter"] = enc
    authored = dtm(ctx, val(orc, 9), where(orc, 9)) if orc is not None else None
    if authored:
        mr["authoredOn"] = authored
    requester = xcn(ctx, first(orc, 12)) if orc is not None else None
    requester = requester or xcn(ctx, first(rx, 13 if is_rxe else 14))
    if requester:
        mr["requester"] = requester
    dosage: dict[str, Any] = {}
    sig = val(rx, 7 if is_rxe else 6, 2) or val(rx, 7 if is_rxe else 6)
    if sig:
        dosage["text"] = sig
    if rxrs:
        route = coded(ctx, rxrs[0], 1, "0162")
        site = coded(ctx, rxrs[0], 2, "0163")
        if site:
            dosage["site"] = site
        if route:
            dosage["route"] = route
    dose = _dose(ctx, rx, 3 if is_rxe else 2, 5 if is_rxe else 4)
    if dose:
        dosage["doseAndRate"] = [{"doseQuantity": dose}]
    if dosage:
        mr["dosageInstruction"] = [dosage]
    dispense: dict[str, Any] = {}
    refills = val(rx, 12 if is_rxe else 13)
    if refills and refills.isdigit():
        dispense["numberOfRepeatsAllowed"] = int(refills)
    amount = quantity(val(rx, 10 if is_rxe else 11), _unit(ctx, rx, 11 if is_rxe else 12))
    if amount:
        dispense["quantity"] = amount
    if dispense:
        mr["dispenseRequest"] = dispense
    return mr

"""Medication activities -> MedicationStatement (moodCode EVN) or MedicationRequest (INT, planned)."""

from __future__ import annotations

from typing import Any

from pipelines.convert.ccda.datatypes import (
    NS,
    child,
    children,
    clean,
    codeable,
    identifiers,
    quantity,
    timing,
    xsi_type,
)
from pipelines.convert.ccda.document import Doc, EntrySkipped, Section
from pipelines.convert.ccda.header import author_refs, author_time
from pipelines.convert.ccda.maps import concept
from pipelines.convert.ccda.practitioners import organization
from pipelines.convert.ccda.sections.common import (
    AUTHOR,
    RELATIONSHIP,
    base,
    by_tag,
    first,
    negated,
    reason_codes,
    related,
    set_effective,
)

MEDICATION_ACTIVITY = "2.16.840.1.113883.10.20.22.4.16"
INSTRUCTION = "2.16.840.1.113883.10.20.22.4.20"
EFFECTIVE_TIME = NS + "effectiveTime"


def wrapper(doc: Doc, act: Any, section: Section) -> None:
    """Discharge / admission medication acts wrap medication activities."""
    inner = [s for s in related(act) if s.tag.endswith("}substanceAdministration")]
    if not inner:
        raise EntrySkipped("no medication activity")
    for sa in inner:
        activity(doc, sa, section)


def planned(doc: Doc, sa: Any, section: Section) -> None:
    activity(doc, sa, section, force_request=True)


def drug(doc: Doc, sa: Any, kids: dict[str, list[Any]] | None = None) -> dict[str, Any] | None:
    consumable = child(sa, "consumable") if kids is None else first(kids, "consumable")
    material = child(child(consumable, "manufacturedProduct"), "manufacturedMaterial")
    if material is None:
        return None
    cc = codeable(child(material, "code"), doc, text_from_display=True)
    if cc is None:
        name = child(material, "name")
        if name is not None and (name.text or "").strip():
            cc = {"text": " ".join(name.text.split())}
    return cc


def medication(doc: Doc, sa: Any, code: dict[str, Any]) -> dict[str, str] | None:
    """A Medication resource when the entry says more than the drug's code (C-CDA on FHIR): its maker,
    lot, dose form (administrationUnitCode) or drug vehicle; None when the code alone says it all."""
    product = child(child(sa, "consumable"), "manufacturedProduct")
    material = child(product, "manufacturedMaterial")
    maker_el = child(product, "manufacturerOrganization")
    lot_el = child(material, "lotNumberText")
    lot = clean(lot_el.text) if lot_el is not None else None
    form = codeable(child(sa, "administrationUnitCode"), doc)
    vehicles = [
        cc
        for p in children(sa, "participant")
        if p.get("typeCode") == "CSM"
        and (cc := codeable(child(child(child(p, "participantRole"), "playingEntity"), "code"), doc))
    ]
    if (maker_el is None or maker_el.get("nullFlavor")) and not lot and form is None and not vehicles:
        return None
    res: dict[str, Any] = {"resourceType": "Medication", "id": doc.rid("Medication", product)}
    ids = identifiers(product)
    if ids:
        res["identifier"] = ids
    res["code"] = code
    maker = organization(doc, maker_el)
    if maker:
        res["manufacturer"] = maker
    if form:
        res["form"] = form
    if vehicles:  # a drug vehicle is an inactive ingredient
        res["ingredient"] = [{"itemCodeableConcept": cc, "isActive": False} for cc in vehicles]
    if lot:
        res["batch"] = {"lotNumber": lot}
    return doc.emit(res, product)


def dosage(doc: Doc, sa: Any, kids: dict[str, list[Any]] | None = None) -> dict[str, Any] | None:
    """The activity's dosage; kids is by_tag(sa) when the caller has it."""
    kids = by_tag(sa) if kids is None else kids
    d: dict[str, Any] = {}
    text = doc.text_of(first(kids, "text"))
    if text:
        d["text"] = text
    rels = kids.get(RELATIONSHIP, ())
    instructions = [doc.text_of(child(i, "text")) for i in related(sa, INSTRUCTION, rels=rels)]
    instructions = [i for i in instructions if i]
    if instructions:
        d["patientInstruction"] = "; ".join(instructions)
    times = [e for e in kids.get(EFFECTIVE_TIME, ()) if xsi_type(e) in ("PIVL_TS", "EIVL_TS")]
    t = timing(times)
    if t:
        d["timing"] = t
    if first(kids, "precondition") is not None:
        d["asNeededBoolean"] = True
    site = codeable(first(kids, "approachSiteCode"), doc)
    if site:
        d["site"] = site
    route = codeable(first(kids, "routeCode"), doc)
    if route:
        d["route"] = route
    dose_el = first(kids, "doseQuantity")
    dose = quantity(dose_el)
    if dose is None and dose_el is not None:
        low, high = quantity(child(dose_el, "low")), quantity(child(dose_el, "high"))
        if low or high:
            d["doseAndRate"] = [{"doseRange": {k: v for k, v in (("low", low), ("high", high)) if v}}]
    if dose:
        d["doseAndRate"] = [{"doseQuantity": dose}]
    rate = quantity(first(kids, "rateQuantity"))
    if rate:
        d.setdefault("doseAndRate", [{}])[0]["rateQuantity"] = rate
    max_dose = first(kids, "maxDoseQuantity")
    if max_dose is not None:
        n, den = quantity(child(max_dose, "numerator")), quantity(child(max_dose, "denominator"))
        if n and den:
            d["maxDosePerPeriod"] = {"numerator": n, "denominator": den}
    return d or None


def activity(doc: Doc, sa: Any, section: Section, force_request: bool = False) -> None:
    kids = by_tag(sa)  # one pass over the activity's children
    med = drug(doc, sa, kids)
    if med is None:
        raise EntrySkipped("no medication code")
    request = force_request or sa.get("moodCode") in ("INT", "RQO", "PRMS", "PRP")
    rtype = "MedicationRequest" if request else "MedicationStatement"
    res = base(doc, rtype, sa, kids=kids)
    status_el = first(kids, "statusCode")
    status = status_el.get("code") if status_el is not None else None
    if request:
        res["status"] = concept("medication_request_status", status) or "unknown"
        res["intent"] = "plan" if force_request or sa.get("moodCode") == "INT" else "order"
        if negated(sa):
            res["doNotPerform"] = True
    else:
        res["status"] = "not-taken" if negated(sa) else concept("medication_status", status) or "unknown"
    med_ref = medication(doc, sa, med)
    if med_ref:
        res["medicationReference"] = med_ref
    else:
        res["medicationCodeableConcept"] = med
    res["subject"] = res.pop("subject")
    period_el = next(
        (e for e in kids.get(EFFECTIVE_TIME, ()) if xsi_type(e) not in ("PIVL_TS", "EIVL_TS")), None
    )
    authored = author_time(sa, kids.get(AUTHOR, ()))
    authors = author_refs(doc, sa, kids.get(AUTHOR, ()))
    if request:
        if authored:
            res["authoredOn"] = authored
        if authors:
            res["requester"] = authors[0]
    else:
        set_effective(res, "effective", period_el)
        if authored:
            res["dateAsserted"] = authored
        if authors:
            res["informationSource"] = authors[0]
    rels = kids.get(RELATIONSHIP, ())
    reasons = reason_codes(doc, sa, rels=rels)
    if reasons:
        res["reasonCode"] = reasons
    d = dosage(doc, sa, kids)
    if request and period_el is not None:
        bounds: dict[str, Any] = {}
        if set_effective(bounds, "bounds", period_el, ("Period",)):
            d = d or {}
            d.setdefault("timing", {})["repeat"] = {**d.get("timing", {}).get("repeat", {}), **bounds}
    elif d and d.get("timing") and period_el is not None:
        bounds = {}
        if set_effective(bounds, "bounds", period_el, ("Period",)):
            d["timing"]["repeat"].update(bounds)
    if d:
        res["dosageInstruction" if request else "dosage"] = [d]
    if request:
        supply = next((s for s in related(sa, rels=rels) if s.tag.endswith("}supply")), None)
        if supply is not None:
            disp: dict[str, Any] = {}
            repeat = child(supply, "repeatNumber")
            if repeat is not None and (repeat.get("value") or "").isdigit():
                disp["numberOfRepeatsAllowed"] = max(int(repeat.get("value")) - 1, 0)
            qty = quantity(child(supply, "quantity"))
            if qty:
                disp["quantity"] = qty
            if disp:
                res["dispenseRequest"] = disp
    doc.emit(res, sa)

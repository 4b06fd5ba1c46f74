"""Immunization activities -> Immunization (CVX, lot, route, site, dose; refusals as not-done)."""

from __future__ import annotations

from typing import Any

from pipelines.convert.ccda.datatypes import NS, absent, child, clean, codeable, quantity
from pipelines.convert.ccda.document import Doc, EntrySkipped, Section
from pipelines.convert.ccda.maps import concept
from pipelines.convert.ccda.practitioners import organization
from pipelines.convert.ccda.sections.common import (
    RELATIONSHIP,
    base,
    by_tag,
    first,
    negated,
    performer_actors,
    reason_codes,
    related,
    set_effective,
)

REFUSAL = "2.16.840.1.113883.10.20.22.4.53"


def immunization(doc: Doc, sa: Any, section: Section) -> None:
    kids = by_tag(sa)  # one pass over the activity's children
    product = child(first(kids, "consumable"), "manufacturedProduct")
    material = child(product, "manufacturedMaterial")
    vaccine = codeable(child(material, "code"), doc, text_from_display=True) if material is not None else None
    if vaccine is None:
        raise EntrySkipped("no vaccine code")
    if sa.get("moodCode") not in (None, "EVN"):
        raise EntrySkipped("planned immunization")
    res = base(doc, "Immunization", sa, "patient", kids)
    refused = negated(sa)
    status_el = first(kids, "statusCode")
    status = status_el.get("code") if status_el is not None else None
    res["status"] = "not-done" if refused else concept("immunization_status", status) or "completed"
    reasons = []
    rels = kids.get(RELATIONSHIP, ())
    for refusal in related(sa, REFUSAL, rels=rels):
        cc = codeable(child(refusal, "code"), doc)
        if cc:
            reasons.append(cc)
    if reasons:
        res["statusReason"] = reasons[0]
    res["vaccineCode"] = vaccine
    res["patient"] = res.pop("patient")
    if not set_effective(res, "occurrence", first(kids, "effectiveTime"), ("dateTime",)):
        res["_occurrenceDateTime"] = absent(None)
    lot = child(material, "lotNumberText") if material is not None else None
    manufacturer = organization(doc, child(product, "manufacturerOrganization"))
    if manufacturer:
        res["manufacturer"] = manufacturer
    if lot is not None and clean(lot.text):
        res["lotNumber"] = clean(lot.text)
    site = codeable(first(kids, "approachSiteCode"), doc)
    if site:
        res["site"] = site
    route = codeable(first(kids, "routeCode"), doc)
    if route:
        res["route"] = route
    dose = quantity(first(kids, "doseQuantity"))
    if dose:
        res["doseQuantity"] = dose
    performers = performer_actors(doc, kids.get(NS + "performer", ()))
    if performers:
        res["performer"] = performers
    indications = reason_codes(doc, sa, exclude=REFUSAL, rels=rels)
    if indications:
        res["reasonCode"] = indications
    doc.emit(res, sa)

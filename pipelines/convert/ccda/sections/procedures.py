"""Procedure activities -> Procedure; planned procedures, acts, encounters, observations -> ServiceRequest."""

from __future__ import annotations

from typing import Any

from pipelines.convert.ccda import places
from pipelines.convert.ccda.datatypes import child, children, codeable
from pipelines.convert.ccda.document import Doc, EntrySkipped, Section
from pipelines.convert.ccda.header import author_refs, author_time, practitioner
from pipelines.convert.ccda.maps import concept
from pipelines.convert.ccda.sections.common import base, negated, reason_codes, set_effective, status_code


def procedure(doc: Doc, stmt: Any, section: Section) -> None:
    """Procedure Activity Procedure / Observation / Act -> Procedure."""
    if stmt.get("moodCode") not in (None, "EVN"):
        return planned(doc, stmt, section)
    code = codeable(child(stmt, "code"), doc, text_from_display=True)
    if code is None:
        text = doc.text_of(child(stmt, "text"))
        if not text:
            raise EntrySkipped("no procedure code")
        code = {"text": text}
    res = base(doc, "Procedure", stmt)
    res["status"] = (
        "not-done" if negated(stmt) else concept("procedure_status", status_code(stmt)) or "unknown"
    )
    res["code"] = code
    res["subject"] = res.pop("subject")
    set_effective(res, "performed", child(stmt, "effectiveTime"))
    performers = []
    for p in children(stmt, "performer"):
        ref = practitioner(doc, child(p, "assignedEntity"))
        if ref:
            performers.append({"actor": ref})
    if performers:
        res["performer"] = performers
    authors = author_refs(doc, stmt)
    if authors:
        res["recorder"] = authors[0]
    reasons = reason_codes(doc, stmt)
    if reasons:
        res["reasonCode"] = reasons
    sites = [cc for el in children(stmt, "targetSiteCode") if (cc := codeable(el, doc))]
    if sites:
        res["bodySite"] = sites
    locations = places.entry_locations(doc, stmt)
    if locations:
        res["location"] = locations[0]  # Procedure.location is one place
    devices = places.product_instances(doc, stmt)
    if devices:
        res["focalDevice"] = [{"manipulated": d} for d in devices]
    text = doc.text_of(child(stmt, "text"))
    if text and "text" not in code:
        res["note"] = [{"text": text}]
    doc.emit(res, stmt)


def planned(doc: Doc, stmt: Any, section: Section) -> None:
    """Planned Procedure / Act / Observation / Encounter -> ServiceRequest (intent from moodCode)."""
    code = codeable(child(stmt, "code"), doc, text_from_display=True)
    if code is None:
        text = doc.text_of(child(stmt, "text"))
        if not text:
            raise EntrySkipped("no planned-activity code")
        code = {"text": text}
    res = base(doc, "ServiceRequest", stmt)
    res["status"] = concept("service_request_status", status_code(stmt)) or "unknown"
    res["intent"] = concept("service_request_intent", stmt.get("moodCode")) or "plan"
    if negated(stmt):
        res["doNotPerform"] = True
    res["code"] = code
    res["subject"] = res.pop("subject")
    set_effective(res, "occurrence", child(stmt, "effectiveTime"))
    authored = author_time(stmt)
    if authored:
        res["authoredOn"] = authored
    authors = author_refs(doc, stmt)
    if authors:
        res["requester"] = authors[0]
    reasons = reason_codes(doc, stmt)
    if reasons:
        res["reasonCode"] = reasons
    doc.emit(res, stmt)

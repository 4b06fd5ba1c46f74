"""Procedure activities -> Procedure; planned procedures, acts, encounters, observations -> ServiceRequest."""

from __future__ import annotations

from typing import Any

from pipelines.convert.ccda import places
from pipelines.convert.ccda.datatypes import NS, codeable, effective, local
from pipelines.convert.ccda.document import Doc, EntrySkipped, Section
from pipelines.convert.ccda.header import author_refs, author_time
from pipelines.convert.ccda.maps import concept
from pipelines.convert.ccda.sections.common import (
    AUTHOR,
    RELATIONSHIP,
    base,
    by_tag,
    first,
    negated,
    performer_actors,
    reason_codes,
    set_effective,
)


def procedure(doc: Doc, stmt: Any, section: Section) -> None:
    """Procedure Activity Procedure / Observation / Act -> Procedure."""
    if stmt.get("moodCode") not in (None, "EVN"):
        return planned(doc, stmt, section)
    kids = by_tag(stmt)  # one pass over the statement's children
    code = codeable(first(kids, "code"), doc, text_from_display=True)
    text = doc.text_of(first(kids, "text"))
    if code is None:
        if not text:
            raise EntrySkipped("no procedure code")
        code = {"text": text}
    res = base(doc, "Procedure", stmt, kids=kids)
    status = first(kids, "statusCode")
    res["status"] = (
        "not-done"
        if negated(stmt)
        else concept("procedure_status", status.get("code") if status is not None else None) or "unknown"
    )
    res["code"] = code
    res["subject"] = res.pop("subject")
    set_effective(res, "performed", first(kids, "effectiveTime"))
    performers = performer_actors(doc, kids.get(NS + "performer", ()))
    if performers:
        res["performer"] = performers
    authors = author_refs(doc, stmt, kids.get(AUTHOR, ()))
    if authors:
        res["recorder"] = authors[0]
    reasons = reason_codes(doc, stmt, rels=kids.get(RELATIONSHIP, ()))
    if reasons:
        res["reasonCode"] = reasons
    sites = [cc for el in kids.get(NS + "targetSiteCode", ()) if (cc := codeable(el, doc))]
    if sites:
        res["bodySite"] = sites
    locations = places.entry_locations(doc, stmt)
    if locations:
        res["location"] = locations[0]  # Procedure.location is one place
    devices = places.product_instances(doc, stmt)
    if devices:
        res["focalDevice"] = [{"manipulated": d} for d in devices]
    if text and "text" not in code:
        res["note"] = [{"text": text}]
    doc.emit(res, stmt)


# A Planned Encounter booked (APT) or asked to be booked (ARQ) is an appointment, not an order.
APPOINTMENT_MOODS = {"APT": "booked", "ARQ": "proposed"}


def appointment(doc: Doc, stmt: Any, kids: dict[str, list[Any]], code: dict[str, Any]) -> None:
    """Planned Encounter (moodCode APT/ARQ) -> Appointment: the patient and the performers as
    participants, the planned time as start/end (or, with only one end known, the requested period)."""
    res = base(doc, "Appointment", stmt, kids=kids)
    res.pop("subject")
    when = effective(first(kids, "effectiveTime"))
    period = {"start": when[1], "end": when[1]} if when and when[0] == "dateTime" else (when or (None, {}))[1]
    both = "start" in period and "end" in period
    # R4: an appointment without both times can only be proposed (app-2, app-3).
    res["status"] = APPOINTMENT_MOODS[stmt.get("moodCode")] if both else "proposed"
    res["serviceType"] = [code]
    reasons = reason_codes(doc, stmt, rels=kids.get(RELATIONSHIP, ()))
    if reasons:
        res["reasonCode"] = reasons
    if both:
        res["start"], res["end"] = period["start"], period["end"]
    created = author_time(stmt, kids.get(AUTHOR, ()))
    if created:
        res["created"] = created
    participants = [{"actor": doc.patient_ref, "status": "accepted"}]
    for p in performer_actors(doc, kids.get(NS + "performer", ())):
        participants.append({"actor": p["actor"], "status": "accepted"})
    for loc in places.entry_locations(doc, stmt):
        participants.append({"actor": loc, "status": "accepted"})
    res["participant"] = participants
    if period and not both:
        res["requestedPeriod"] = [period]
    doc.emit(res, stmt)


def planned(doc: Doc, stmt: Any, section: Section) -> None:
    """Planned Procedure / Act / Observation / Encounter -> ServiceRequest (intent from moodCode)."""
    kids = by_tag(stmt)  # one pass over the statement's children
    code = codeable(first(kids, "code"), doc, text_from_display=True)
    if code is None:
        text = doc.text_of(first(kids, "text"))
        if not text:
            raise EntrySkipped("no planned-activity code")
        code = {"text": text}
    if local(stmt) == "encounter" and stmt.get("moodCode") in APPOINTMENT_MOODS:
        appointment(doc, stmt, kids, code)
        return
    res = base(doc, "ServiceRequest", stmt, kids=kids)
    status = first(kids, "statusCode")
    res["status"] = (
        concept("service_request_status", status.get("code") if status is not None else None) or "unknown"
    )
    res["intent"] = concept("service_request_intent", stmt.get("moodCode")) or "plan"
    if negated(stmt):
        res["doNotPerform"] = True
    res["code"] = code
    res["subject"] = res.pop("subject")
    set_effective(res, "occurrence", first(kids, "effectiveTime"))
    authored = author_time(stmt, kids.get(AUTHOR, ()))
    if authored:
        res["authoredOn"] = authored
    authors = author_refs(doc, stmt, kids.get(AUTHOR, ()))
    if authors:
        res["requester"] = authors[0]
    reasons = reason_codes(doc, stmt, rels=kids.get(RELATIONSHIP, ()))
    if reasons:
        res["reasonCode"] = reasons
    doc.emit(res, stmt)

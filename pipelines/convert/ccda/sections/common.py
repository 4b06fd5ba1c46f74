"""Helpers shared by the section mappers: statuses, effective times, nested statements, observations."""

from __future__ import annotations

from typing import Any

from pipelines.convert.ccda.datatypes import (
    NS,
    absent,
    child,
    children,
    codeable,
    effective,
    id_pairs,
    identifier,
    pairs_key,
    template_ids,
    value,
)
from pipelines.convert.ccda.document import Doc
from pipelines.convert.ccda.header import author_refs, author_time
from pipelines.convert.ccda.maps import concept
from pipelines.convert.ccda.practitioners import practitioner

CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
US_CORE_CATEGORY = "http://hl7.org/fhir/us/core/CodeSystem/us-core-category"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
ID, AUTHOR, RELATIONSHIP = NS + "id", NS + "author", NS + "entryRelationship"


def status_code(stmt: Any) -> str | None:
    s = child(stmt, "statusCode")
    return s.get("code") if s is not None else None


def negated(stmt: Any) -> bool:
    return stmt.get("negationInd") == "true"


def related(stmt: Any, *templates: str, type_code: str | None = None, rels: Any = None) -> list[Any]:
    """Statements under stmt's entryRelationships, optionally only those with one of the templateIds;
    rels are stmt's entryRelationship children when the caller already has them."""
    out = []
    for rel in children(stmt, "entryRelationship") if rels is None else rels:
        if type_code and rel.get("typeCode") != type_code:
            continue
        for el in rel:
            if not isinstance(el.tag, str) or el.tag.endswith("}sequenceNumber"):
                continue
            if not templates or any(t in templates for t in template_ids(el)):
                out.append(el)
            break
    return out


def components(organizer: Any) -> list[Any]:
    out = []
    for comp in children(organizer, "component"):
        for el in comp:
            if isinstance(el.tag, str) and not el.tag.endswith("}sequenceNumber"):
                out.append(el)
                break
    return out


def set_effective(
    res: dict[str, Any], prefix: str, el: Any, allow: tuple[str, ...] = ("dateTime", "Period")
) -> bool:
    """Set <prefix>DateTime or <prefix>Period from an IVL_TS/TS, within the shapes the element allows."""
    eff = effective(el)
    if eff is None:
        return False
    kind, val = eff
    if kind not in allow:
        if kind == "Period" and "start" in val:
            kind, val = "dateTime", val["start"]
        elif kind == "dateTime":
            kind, val = "Period", {"start": val, "end": val}
        else:
            return False
    res[prefix + ("DateTime" if kind == "dateTime" else "Period")] = val
    return True


def reason_codes(doc: Doc, stmt: Any, exclude: str | None = None, rels: Any = None) -> list[dict[str, Any]]:
    """Indications (entryRelationship RSON observations) -> reasonCode from their values."""
    out = []
    for obs in related(stmt, type_code="RSON", rels=rels):
        if exclude and exclude in template_ids(obs):
            continue  # a refusal reason is the statusReason, not an indication
        v = value(child(obs, "value"), doc)
        cc = v[1] if v and v[0] == "valueCodeableConcept" else codeable(child(obs, "code"), doc)
        if cc:
            out.append(cc)
    return out


def base(
    doc: Doc, rtype: str, stmt: Any, subject_field: str = "subject", kids: dict[str, list[Any]] | None = None
) -> dict[str, Any]:
    """The resource's type, id, identifiers and subject; kids is by_tag(stmt) when the caller has it."""
    # The ids are read once for both the resource id and its identifiers.
    pairs = id_pairs(stmt) if kids is None else id_pairs(stmt, kids.get(ID, ()))
    res: dict[str, Any] = {"resourceType": rtype, "id": doc.rid(rtype, stmt, pairs_key(pairs))}
    ids = [identifier(r, e) for r, e in pairs]
    if ids:
        res["identifier"] = ids
    res[subject_field] = doc.patient_ref
    return res


def category(system: str, code: str, display: str | None = None) -> list[dict[str, Any]]:
    c = {"system": system, "code": code}
    if display:
        c["display"] = display
    return [{"coding": [c]}]


def observation(
    doc: Doc,
    stmt: Any,
    categories: list[dict[str, Any]],
    *,
    profile: str | None = None,
    members: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """A CDA observation -> Observation: code, value (by xsi:type), interpretation, reference ranges."""
    kids = by_tag(stmt)  # one pass over the children instead of a scan per element looked up
    res = base(doc, "Observation", stmt, kids=kids)
    if profile:
        res["meta"] = {"profile": [profile]}
    # A missing or unknown statusCode is "unknown", not a guessed "final".
    status = first(kids, "statusCode")
    res["status"] = concept("result_status", status.get("code") if status is not None else None) or "unknown"
    res["category"] = categories
    code_el = first(kids, "code")
    code = codeable(code_el, doc, text_from_display=True)
    res["code"] = code or absent(code_el.get("nullFlavor") if code_el is not None else None)
    set_effective(res, "effective", first(kids, "effectiveTime"))
    authors = kids.get(AUTHOR, ())
    issued = author_time(stmt, authors)
    if issued and "T" in issued:
        res["issued"] = issued
    performers = author_refs(doc, stmt, authors)
    if performers:
        res["performer"] = performers
    values = kids.get(NS + "value")
    if values:
        v = value(values[0], doc)
        if v:
            res[v[0]] = v[1]
        elif not members:
            res["dataAbsentReason"] = _dar(values[0].get("nullFlavor"))
    interp = [cc for el in kids.get(NS + "interpretationCode", ()) if (cc := codeable(el, doc))]
    if interp:
        res["interpretation"] = interp
    method = codeable(first(kids, "methodCode"), doc)
    if method:
        res["method"] = method
    site = codeable(first(kids, "targetSiteCode"), doc)
    if site:
        res["bodySite"] = site
    ranges = []
    for rr in kids.get(NS + "referenceRange", ()):
        orange = child(rr, "observationRange")
        if orange is None:
            continue
        r: dict[str, Any] = {}
        v = value(child(orange, "value"), doc)
        if v and v[0] == "valueRange":
            r.update(v[1])
        elif v and v[0] == "valueQuantity":
            r["low"] = v[1]
        text = doc.text_of(child(orange, "text"))
        if text:
            r["text"] = text
        elif v and v[0] in ("valueString", "valueCodeableConcept") and not r:
            r["text"] = v[1] if v[0] == "valueString" else (v[1].get("text") or _display(v[1]))
        if r:
            ranges.append(r)
    if ranges:
        res["referenceRange"] = ranges
    if members:
        res["hasMember"] = members
    text = doc.text_of(first(kids, "text"))
    if text:
        res["note"] = [{"text": text}]
    return res


def by_tag(el: Any) -> dict[str, list[Any]]:
    """An element's children grouped by tag, in document order."""
    out: dict[str, list[Any]] = {}
    for c in el:
        t = c.tag
        group = out.get(t)
        if group is None:
            out[t] = [c]
        else:
            group.append(c)
    return out


def first(kids: dict[str, list[Any]], name: str) -> Any:
    """The first child named name (None when there is none) from by_tag's grouping."""
    found = kids.get(NS + name)
    return found[0] if found else None


def _display(cc: dict[str, Any]) -> str:
    for c in cc.get("coding", []):
        if c.get("display"):
            return c["display"]
    return ""


def _dar(null_flavor: str | None) -> dict[str, Any]:
    code = concept("null_flavor", null_flavor) or "unknown"
    return {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": code}]}


def data_absent(null_flavor: str | None) -> dict[str, Any]:
    return _dar(null_flavor)


def concern_observations(act: Any) -> list[tuple[bool, Any]]:
    """(is it the act's SUBJ?, observation) for each observation under a concern act."""
    return [
        (rel.get("typeCode") == "SUBJ", o)
        for rel in children(act, "entryRelationship")
        for o in rel
        if isinstance(o.tag, str) and o.tag.endswith("}observation")
    ]


def performer_actors(doc: Doc, performers: Any) -> list[dict[str, Any]]:
    """<performer> elements -> performer entries ({"actor": Practitioner reference})."""
    out = []
    for p in performers:
        ref = practitioner(doc, child(p, "assignedEntity"))
        if ref:
            out.append({"actor": ref})
    return out

"""DSTU2 ProcedureRequest -> (STU3) -> R4 ServiceRequest; DSTU2 Conformance -> CapabilityStatement."""

from __future__ import annotations

from typing import Any

from pipelines.convert.fhir.upgrade.base import Mover, as_list, resource_types

# R4 elements of a CapabilityStatement that the DSTU2 rule below already gives their R4 shape.
_CAPABILITY = ("url", "version", "name", "status", "experimental", "date", "publisher", "contact")
_CAPABILITY += ("description", "purpose", "copyright", "kind", "software", "implementation", "fhirVersion")
_CAPABILITY += ("format", "rest", "document")


def r2_procedure_request(m: Mover) -> None:
    m.same("identifier", "subject", "code", "bodySite", "priority")
    status = m.take("status")
    # HL7's R2->R3 map: a proposed procedure is a proposal; anything else was ordered.
    m.out["intent"] = "proposal" if status == "proposed" else "order"
    if status is not None:
        m.out["status"] = m.map_code(status, "r2.procedure-request-status", "status")
    m.rename("reasonCodeableConcept", "reasonCode", lambda v: [v])
    m.rename("reasonReference", "reasonReference", as_list)
    m.choice("scheduled", "occurrence")
    m.choice("asNeeded")
    m.rename("encounter", "context")
    m.rename("performer", "performer")
    m.rename("notes", "note")
    m.rename("orderedOn", "authoredOn")
    m.rename("orderer", "requester", lambda ref: {"agent": ref})


def r3_procedure_request(m: Mover) -> None:
    """STU3 ProcedureRequest (as the rule above makes it) -> R4 ServiceRequest."""
    m.same("identifier", "intent", "priority", "code", "subject", "authoredOn", "reasonCode")
    m.same("reasonReference", "bodySite", "note")
    m.code("status", "r3.procedure-request-status")
    m.rename("context", "encounter")
    m.choice("occurrence")
    m.choice("asNeeded")
    m.rename("requester", "requester", lambda r: r.get("agent") if isinstance(r, dict) else r)
    m.rename("performer", "performer", as_list)


def r2_conformance(m: Mover) -> None:
    """DSTU2 Conformance -> a CapabilityStatement in its R4 shape: what a DSTU2 server (Millennium's
    among them) says it supports, with the elements R4 dropped kept as HL7's cross-version extensions."""
    m.same("url", "version", "name", "status", "experimental", "date", "publisher", "description")
    m.same("copyright", "kind", "fhirVersion", "format")
    m.each("contact", lambda c: c.same("name", "telecom"))
    m.rename("requirements", "purpose")
    m.each("software", lambda c: c.same("name", "version", "releaseDate"))
    m.each("implementation", lambda c: c.same("description", "url"))
    m.to_extension("acceptUnknown", "Code")
    m.to_extension("profile", "Reference")
    m.each("rest", _rest)
    m.each("document", lambda c: c.same("mode", "documentation").rename("profile", "profile", _canonical))


def r3_capability_statement(m: Mover) -> None:
    m.same(*_CAPABILITY)


def _canonical(ref: Any) -> Any:
    # DSTU2 names a profile or operation by Reference; R4 by its canonical URL.
    return ref.get("reference") if isinstance(ref, dict) and "reference" in ref else ref


def _rest(c: Mover) -> None:
    c.same("mode", "documentation", "compartment")
    c.each("security", lambda s: s.same("cors", "service", "description"))
    c.each("resource", _resource)
    c.each("interaction", lambda i: i.same("code", "documentation"))
    c.to_extension("transactionMode", "Code")
    c.each("searchParam", _search_param)
    c.each("operation", lambda o: o.same("name").rename("definition", "definition", _canonical))


def _resource(c: Mover) -> None:
    rtype = c.take("type")
    types = resource_types()
    if rtype in types["no_r4_counterpart"]:
        c.fail("upgrade_no_target_type", f"{c.path}.type names a type with no R4 counterpart")
    c.out["type"] = types["reference_renames"].get(rtype, rtype)
    c.rename("profile", "profile", _canonical)
    c.each("interaction", lambda i: i.same("code", "documentation"))
    c.same("versioning", "readHistory", "updateCreate", "conditionalCreate", "conditionalUpdate")
    c.same("conditionalDelete", "searchInclude", "searchRevInclude")
    c.each("searchParam", _search_param)


def _search_param(c: Mover) -> None:
    c.same("name", "definition", "type", "documentation")
    c.to_extension("target", "Code")
    c.to_extension("modifier", "Code")
    c.to_extension("chain", "String")

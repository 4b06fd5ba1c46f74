"""Upgrading DSTU2 (1.0.2) and STU3 (3.0.x) resources to R4, following HL7's cross-version maps.

DSTU2 goes through STU3 as HL7's maps do (R2 -> R3 -> R4). One module per resource family holds the
element rules; value-set maps and the type lists are data files under maps/.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from pipelines.common.unit import Quarantine
from pipelines.common.warehouse import RESOURCE_TYPE
from pipelines.convert.fhir.upgrade import administrative, encounter, medications, problems, requests, results
from pipelines.convert.fhir.upgrade.base import RELEASE_NAMES, Mover, required_elements, resource_types

Rule = Callable[[Mover], Any]

# The one explicit list of upgrade rules: source type -> (rule, type in the next release).
R2_TO_R3: dict[str, tuple[Rule, str]] = {
    "Patient": (administrative.r2_patient, "Patient"),
    "Practitioner": (administrative.r2_practitioner, "Practitioner"),
    "Organization": (administrative.r2_organization, "Organization"),
    "Location": (administrative.r2_location, "Location"),
    "Encounter": (encounter.r2_encounter, "Encounter"),
    "Condition": (problems.r2_condition, "Condition"),
    "AllergyIntolerance": (problems.r2_allergy, "AllergyIntolerance"),
    "Goal": (problems.r2_goal, "Goal"),
    "CarePlan": (problems.r2_careplan, "CarePlan"),
    "Observation": (results.r2_observation, "Observation"),
    "DiagnosticReport": (results.r2_diagnostic_report, "DiagnosticReport"),
    "Procedure": (results.r2_procedure, "Procedure"),
    "DocumentReference": (results.r2_document_reference, "DocumentReference"),
    "MedicationOrder": (medications.r2_medication_order, "MedicationRequest"),
    "MedicationStatement": (medications.r2_medication_statement, "MedicationStatement"),
    "MedicationDispense": (medications.r2_medication_dispense, "MedicationDispense"),
    "Medication": (medications.r2_medication, "Medication"),
    "Immunization": (medications.r2_immunization, "Immunization"),
    "ProcedureRequest": (requests.r2_procedure_request, "ProcedureRequest"),
    "Conformance": (requests.r2_conformance, "CapabilityStatement"),
}
R3_TO_R4: dict[str, Rule] = {
    "Patient": administrative.r3_patient,
    "Practitioner": administrative.r3_practitioner,
    "Organization": administrative.r3_organization,
    "Location": administrative.r3_location,
    "Encounter": encounter.r3_encounter,
    "Condition": problems.r3_condition,
    "AllergyIntolerance": problems.r3_allergy,
    "Goal": problems.r3_goal,
    "CarePlan": problems.r3_careplan,
    "Observation": results.r3_observation,
    "DiagnosticReport": results.r3_diagnostic_report,
    "Procedure": results.r3_procedure,
    "DocumentReference": results.r3_document_reference,
    "MedicationRequest": medications.r3_medication_request,
    "MedicationStatement": medications.r3_medication_statement,
    "MedicationDispense": medications.r3_medication_dispense,
    "Medication": medications.r3_medication,
    "Immunization": medications.r3_immunization,
    "ProcedureRequest": requests.r3_procedure_request,
    "CapabilityStatement": requests.r3_capability_statement,
}
# STU3 types whose R4 counterpart has another name.
R3_RENAMED = {"ProcedureRequest": "ServiceRequest"}

_TYPED_REF = re.compile(r"(^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(/_history/[A-Za-z0-9\-.]{1,64})?$")


def renamed_type(release: str, rtype: str) -> str:
    """The R4 type a source type becomes (MedicationOrder -> MedicationRequest), else the same."""
    return resource_types()["renamed"].get(release, {}).get(rtype, rtype)


def upgrade(resource: dict[str, Any], release: str, *, _contained: bool = False) -> list[dict[str, Any]]:
    """R4 resources for one source resource of the given release; raises Quarantine if not faithful.

    The first resource is the upgraded one; any others were split off as HL7's maps do (a DSTU2
    Practitioner's roles become PractitionerRole resources).
    """
    if release == "4.0":
        return [resource]
    rtype = resource.get("resourceType")
    if release not in ("1.0", "3.0"):
        raise Quarantine("unsupported_fhir_version", "FHIR release ehrlift does not upgrade")
    if rtype not in resource_types()["upgraded"][release]:
        valid = isinstance(rtype, str) and RESOURCE_TYPE.fullmatch(rtype)
        shown = rtype if valid else "resource of an invalid type"
        raise Quarantine(
            "unsupported_resource_version",
            f"{RELEASE_NAMES[release]} {shown} has no upgrade to R4 in ehrlift",
            rtype if valid else None,
        )
    source = dict(resource)
    contained = []
    for inner in source.pop("contained", None) or []:
        if not isinstance(inner, dict):
            raise Quarantine(
                "upgrade_invalid_element",
                f"{RELEASE_NAMES[release]} {rtype}.contained is not a resource",
                rtype,
            )
        upgraded = upgrade(inner, release, _contained=True)
        # Resources split off a contained one (a Practitioner's roles) are contained beside it.
        for extra in upgraded[1:]:
            _point_inside(extra, upgraded[0])
        contained.extend(upgraded)
    extra: list[dict[str, Any]] = []
    current, current_type = source, rtype
    if release == "1.0":
        rule, next_type = R2_TO_R3[rtype]
        m = Mover(current, release, rtype)
        m.base()
        extra = rule(m) or []
        current, current_type = m.finish(), next_type
    m = Mover(current, release, current_type)
    m.base()
    m.same("contained")  # resources the first step made (a CarePlan's CareTeam), already R4
    R3_TO_R4[current_type](m)
    body = m.finish()
    if contained:
        body["contained"] = contained + body.get("contained", [])
    out = [{"resourceType": R3_RENAMED.get(current_type, current_type), **body}, *extra]
    for item in out:
        _check_required(item, release)
    if _contained:
        return out  # its references are checked against its container's contained resources
    for item in out:
        _rewrite_references(item, release, rtype, {c.get("id") for c in item.get("contained", [])})
    return out


def _check_required(resource: dict[str, Any], release: str) -> None:
    rtype = resource["resourceType"]
    for name in required_elements().get(rtype, []):
        if name.endswith("[x]"):
            stem = name[:-3]
            present = any(k.startswith(stem) and k[len(stem) : len(stem) + 1].isupper() for k in resource)
        else:
            present = resource.get(name) not in (None, [], {})
        if not present:
            raise Quarantine(
                "upgrade_missing_required",
                f"{RELEASE_NAMES[release]} source lacks what R4 requires: {rtype}.{name}",
                rtype,
            )


def _point_inside(node: Any, target: dict[str, Any]) -> None:
    """References to a contained resource by Type/id become local (#id) references."""
    absolute = f"{target.get('resourceType')}/{target.get('id')}"
    if isinstance(node, list):
        for item in node:
            _point_inside(item, target)
    elif isinstance(node, dict):
        if node.get("reference") == absolute:
            node["reference"] = f"#{target.get('id')}"
        for value in node.values():
            if isinstance(value, (dict, list)):
                _point_inside(value, target)


def _rewrite_references(node: Any, release: str, rtype: str, contained_ids: set[Any]) -> None:
    """Point references at R4 types; a reference R4 cannot express is a broken reference."""
    if isinstance(node, list):
        for item in node:
            _rewrite_references(item, release, rtype, contained_ids)
        return
    if not isinstance(node, dict):
        return
    ref = node.get("reference")
    if isinstance(ref, str):
        node["reference"] = _upgrade_reference(ref, release, rtype, contained_ids)
    for key, value in node.items():
        if key != "reference" and isinstance(value, (dict, list)):
            _rewrite_references(value, release, rtype, contained_ids)


def _upgrade_reference(ref: str, release: str, rtype: str, contained_ids: set[Any]) -> str:
    name = RELEASE_NAMES[release]
    if ref.startswith("#"):
        if ref[1:] and ref[1:] not in contained_ids:
            raise Quarantine(
                "upgrade_broken_reference", f"{name} {rtype} points to a contained resource it lacks", rtype
            )
        return ref
    m = _TYPED_REF.search(ref)
    if m is None:
        return ref  # urn:uuid, urn:oid, conditional references: resolved later, as for R4 input
    target = m.group(2)
    types = resource_types()
    new = types["reference_renames"].get(target)
    if new is None and target in types["no_r4_counterpart"]:
        raise Quarantine(
            "upgrade_broken_reference",
            f"{name} {rtype} points to a {target}, which has no R4 counterpart",
            rtype,
        )
    if new is None:
        return ref
    return ref[: m.start(2)] + new + ref[m.end(2) :]

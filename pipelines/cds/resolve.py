"""Finding the warehouse person behind the EHR's context.patientId (back-load ids, then identifiers)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import httpx

from pipelines.cds.snapshot import Snapshot

log = logging.getLogger(__name__)

MR = "MR"  # HL7 v2 table 0203 identifier type: medical record number


@dataclass(frozen=True)
class Resolution:
    person_id: str | None
    how: str  # backload_ids, identifier, identifier_fhir, or why not: no_patient, unmatched, ambiguous, ...


def resolve(snap: Snapshot, request: dict[str, Any], fhir_timeout: float) -> Resolution:
    """The person, or None with the reason; never raises on client input. May call the FHIR server."""
    found = resolve_local(snap, request)
    return found if found is not None else resolve_remote(snap, request, fhir_timeout)


def resolve_local(snap: Snapshot, request: dict[str, Any]) -> Resolution | None:
    """Without any I/O: the person from the back-load id map or the prefetched Patient's identifiers;
    None when only the client's FHIR server can tell (no prefetch)."""
    patient_id = (request.get("context") or {}).get("patientId")
    if not isinstance(patient_id, str) or not patient_id:
        return Resolution(None, "no_patient_id")
    person = snap.backload.get(patient_id)
    if person is not None:
        return Resolution(person, "backload_ids")
    patient = (request.get("prefetch") or {}).get("patient")
    if not isinstance(patient, dict):
        return None
    return _from_patient(snap, patient, "identifier")


def resolve_remote(snap: Snapshot, request: dict[str, Any], fhir_timeout: float) -> Resolution:
    """Read the Patient from the client's FHIR server (blocking, with a timeout), then its identifiers."""
    patient_id = request["context"]["patientId"]
    patient, why = _fetch_patient(request, patient_id, fhir_timeout)
    if patient is None:
        return Resolution(None, why)
    return _from_patient(snap, patient, "identifier_fhir")


def _from_patient(snap: Snapshot, patient: dict[str, Any], how: str) -> Resolution:
    if patient.get("resourceType") != "Patient":
        return Resolution(None, "prefetch_not_a_patient")
    idents = _identifiers(patient)
    if not idents:
        return Resolution(None, "no_identifier_with_system")
    found = [
        (system, value, person)
        for value in {i["value"] for i in idents}
        for system, person in snap.identifiers.get(value, ())
    ]
    person, why = _by_identifier(idents, found)
    return Resolution(person, how) if person is not None else Resolution(None, why)


def _identifiers(patient: dict[str, Any]) -> list[dict[str, Any]]:
    idents = patient.get("identifier")
    return [
        i
        for i in (idents if isinstance(idents, list) else [])
        if isinstance(i, dict) and isinstance(i.get("system"), str) and isinstance(i.get("value"), str)
    ]


def _by_identifier(usable: list[dict[str, Any]], found: list[tuple[str, str, str]]) -> tuple[str | None, str]:
    # An MRN decides when there is one; other identifiers (with their systems) are the fallback.
    mrns = [i for i in usable if _is_mrn(i)]
    for group in (mrns, usable):
        wanted = {(i["system"], i["value"]) for i in group}
        persons = {person for system, value, person in found if (system, value) in wanted}
        if len(persons) == 1:
            return persons.pop(), ""
        if len(persons) > 1:
            return None, "ambiguous_identifier"
    return None, "unmatched_identifier"


def _is_mrn(ident: dict[str, Any]) -> bool:
    kind = ident.get("type")
    codings = kind.get("coding") if isinstance(kind, dict) else None
    return isinstance(codings, list) and any(isinstance(c, dict) and c.get("code") == MR for c in codings)


def _fetch_patient(request: dict[str, Any], patient_id: str, timeout: float) -> tuple[dict | None, str]:
    """Read Patient/{id} from the client's FHIR server with the token it gave, only without prefetch."""
    server = request.get("fhirServer")
    auth = request.get("fhirAuthorization")
    if not isinstance(server, str) or not isinstance(auth, dict) or not auth.get("access_token"):
        return None, "no_prefetch_no_fhir_access"
    if "/" in patient_id or "?" in patient_id:
        return None, "bad_patient_id"
    try:
        resp = httpx.get(
            f"{server.rstrip('/')}/Patient/{patient_id}",
            headers={"Authorization": f"Bearer {auth['access_token']}", "Accept": "application/fhir+json"},
            timeout=timeout,
            follow_redirects=False,
        )
    except httpx.TimeoutException:
        return None, "fhir_server_timeout"
    except httpx.HTTPError:
        return None, "fhir_server_unreachable"
    if resp.status_code != 200:
        return None, f"fhir_server_status_{resp.status_code}"
    try:
        body = resp.json()
    except ValueError:
        return None, "fhir_server_not_json"
    return (body, "") if isinstance(body, dict) else (None, "fhir_server_not_json")

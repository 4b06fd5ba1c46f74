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
    """The person, or None with the reason; never raises on what a client sent."""
    patient_id = (request.get("context") or {}).get("patientId")
    if not isinstance(patient_id, str) or not patient_id:
        return Resolution(None, "no_patient_id")
    if snap.has_backload:
        rows = snap.rows("SELECT DISTINCT person_id FROM backload WHERE server_id = ?", [patient_id])
        if len(rows) == 1:
            return Resolution(rows[0][0], "backload_ids")
    patient = (request.get("prefetch") or {}).get("patient")
    how = "identifier"
    if not isinstance(patient, dict):
        patient, why = _fetch_patient(request, patient_id, fhir_timeout)
        if patient is None:
            return Resolution(None, why)
        how = "identifier_fhir"
    if patient.get("resourceType") != "Patient":
        return Resolution(None, "prefetch_not_a_patient")
    return _by_identifier(snap, patient, how)


def _by_identifier(snap: Snapshot, patient: dict[str, Any], how: str) -> Resolution:
    idents = [i for i in patient.get("identifier") or [] if isinstance(i, dict)]
    usable = [i for i in idents if isinstance(i.get("system"), str) and isinstance(i.get("value"), str)]
    if not usable:
        return Resolution(None, "no_identifier_with_system")
    # An MRN decides when there is one; other identifiers (with their systems) are the fallback.
    mrns = [i for i in usable if _is_mrn(i)]
    values = sorted({i["value"] for i in usable})
    if len(values) == 1:  # the usual case, and an indexed lookup
        found = snap.rows("SELECT DISTINCT system, value, person_id FROM pid WHERE value = ?", values)
    else:
        found = snap.rows(
            "SELECT DISTINCT system, value, person_id FROM pid WHERE list_contains(?::VARCHAR[], value)",
            [values],
        )
    for group in (mrns, usable):
        wanted = {(i["system"], i["value"]) for i in group}
        persons = {person for system, value, person in found if (system, value) in wanted}
        if len(persons) == 1:
            return Resolution(persons.pop(), how)
        if len(persons) > 1:
            return Resolution(None, "ambiguous_identifier")
    return Resolution(None, "unmatched_identifier")


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

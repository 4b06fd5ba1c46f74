"""Small warehouses for back-load tests: a finished run and a handful of resources covering every outcome."""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson

from pipelines.common.warehouse import ensure_resource_table, open_warehouse

LOINC, SNOMED = "http://loinc.org", "http://snomed.info/sct"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
CODESET = "https://fhir.cerner.com/ec2458f2-1e24-41c8-b71b-0e701af7583d/codeSet/72"
MRN = "urn:oid:2.16.840.1.113883.3.999.1"


def cc(system: str, code: str, display: str | None = None) -> dict:
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding]}


def ident(value: str) -> dict:
    return {"system": MRN, "value": value}


def patient(pid: str, mrn: str | None = None, **extra) -> dict:
    r = {
        "resourceType": "Patient",
        "id": pid,
        "name": [{"family": "Test", "given": [pid]}],
        "gender": "female",
    }
    if mrn:
        r["identifier"] = [{"system": MRN, "value": mrn}]
    return {**r, **extra}


def vital(oid: str, subject: str, code: str = "8867-4", when: str = "2024-01-02T10:00:00Z", **extra) -> dict:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "category": [cc(CATEGORY, "vital-signs")],
        "code": cc(LOINC, code),
        "subject": {"reference": f"Patient/{subject}"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
        **extra,
    }


def condition(cid: str, subject: str, code: str = "38341003", **extra) -> dict:
    return {
        "resourceType": "Condition",
        "id": cid,
        "clinicalStatus": cc("http://terminology.hl7.org/CodeSystem/condition-clinical", "active"),
        "category": [cc("http://terminology.hl7.org/CodeSystem/condition-category", "problem-list-item")],
        "code": cc(SNOMED, code),
        "subject": {"reference": f"Patient/{subject}"},
        **extra,
    }


def small_resources() -> list[dict]:
    """One resource per plan outcome on millennium-r4 (generic-r4 sends most of them)."""
    mixed = vital("obs-mixed", "p1")
    mixed["code"] = {"coding": [{"system": LOINC, "code": "8867-4"}, {"system": CODESET, "code": "703511"}]}
    return [
        {"resourceType": "Organization", "id": "org1", "name": "General", "identifier": [ident("O1")]},
        {"resourceType": "Practitioner", "id": "pr1", "name": [{"family": "D"}], "identifier": [ident("D1")]},
        patient("p1", "M1", generalPractitioner=[{"reference": "Practitioner/pr1"}], meta={"versionId": "3"}),
        patient("p2", "M2", deceasedBoolean=False),  # element not accepted by Millennium
        patient("p3"),  # no identifier: required on Millennium
        {"resourceType": "Location", "id": "loc1", "name": "Ward"},  # not writable on Millennium
        {
            "resourceType": "Encounter", "id": "enc1", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "type": [cc(SNOMED, "185349003")], "subject": {"reference": "Patient/p1"},
            "location": [{"location": {"reference": "Location/loc1"}}],
            "serviceProvider": {"reference": "Organization/org1"},
        },
        vital("obs1", "p1"),
        vital("obs-social", "p1", category=[cc(CATEGORY, "social-history")]),
        mixed,
        vital("obs-p2", "p2"),  # its patient is not sendable to Millennium
        condition("cond1", "p1"),
        {"resourceType": "Condition", "id": "cond-missing", "subject": {"reference": "Patient/p1"},
         "code": cc(SNOMED, "38341003")},  # no clinicalStatus or category
    ]  # fmt: skip


def build_warehouse(
    path: Path, resources: list[dict], status: str = "succeeded", stand_ins: tuple = ()
) -> Path:
    """A warehouse as `ehrlift run` leaves it: one finished run and the resources in fhir.<Type>."""
    with open_warehouse(path) as con:
        con.execute(
            "INSERT INTO ops.runs VALUES ('run-1', now(), now(), ?, ?, 'test', '{}', NULL)",
            [status, 7 if status == "blocked" else 0],
        )
        for i, r in enumerate(resources):
            table = ensure_resource_table(con, r["resourceType"])
            body = orjson.dumps(r)
            con.execute(
                f"INSERT INTO {table} VALUES (?, ?, 'test', ?, 'sha', ?, 'run-1', ?, NULL, ?)",
                [r["id"], body.decode(), r["id"], i, hashlib.sha256(body).hexdigest(), r["id"] in stand_ins],
            )
    return path

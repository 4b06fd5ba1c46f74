"""Write a DSTU2 export of a few demo patients (as an older Millennium gives), with its deliberate defects."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import orjson

from pipelines.demo.fhir_dstu2 import render_patient_dstu2
from pipelines.demo.model import iter_patients
from pipelines.demo.records import make_uid
from pipelines.demo.summary import Defect, FileSummary

DSTU2_DIR = "sources/fhir-dstu2"
OWNED = r"[A-Za-z]+\.dstu2\.ndjson"
DSTU2_FORMAT = "fhir-ndjson-dstu2"
# The R4 type each DSTU2 type is stored as: the summary counts what the warehouse will hold.
R4_TYPE = {"MedicationOrder": "MedicationRequest"}


def dstu2_patients(patients: int) -> int:
    """A tenth of the patients (at least 2, at most 1,000) also come as a DSTU2 export of their own."""
    return max(2, min(patients // 10, 1_000))


def write_dstu2_export(out: Path, seed: int, patients: int) -> tuple[list[FileSummary], list[Defect]]:
    """One NDJSON file per DSTU2 type; three lines at the ends of files are defects the upgrade must catch."""
    lines: dict[str, list[bytes]] = defaultdict(list)
    last: dict[str, dict[str, Any]] = {}  # the last resource of each type (its Patient anchors the defects)
    for patient in iter_patients(seed, dstu2_patients(patients), "dstu2"):
        for rtype, resource in render_patient_dstu2(patient):
            lines[rtype].append(orjson.dumps(resource))
            last[rtype] = resource
    valid = {rtype: len(rows) for rtype, rows in lines.items()}
    defects: list[Defect] = []

    def add(rtype: str, resource: dict[str, Any], reason: str, description: str) -> None:
        lines[rtype].append(orjson.dumps(resource))
        path = f"{DSTU2_DIR}/{rtype}.dstu2.ndjson"
        defects.append(Defect(path, "ndjson_line", len(lines[rtype]), "quarantined", reason, description))

    patient_ref = {"reference": f"Patient/{last['Patient']['id']}"}
    condition = {
        "resourceType": "Condition",
        "id": make_uid(seed, "dstu2-defect", "unknown"),
        "patient": patient_ref,
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]},
        "clinicalStatus": "active",
        # DSTU2's condition-ver-status has "unknown"; R4's has no such code, so nothing faithful to map to.
        "verificationStatus": "unknown",
    }
    add(
        "Condition",
        condition,
        "upgrade_unmappable_code",
        "Condition.verificationStatus 'unknown' (DSTU2-only)",
    )
    # An R4-shaped Condition slipped into the DSTU2 export: a file is converted in one release only.
    r4_shaped = {
        k: v for k, v in condition.items() if k not in ("patient", "clinicalStatus", "verificationStatus")
    }
    r4_shaped |= {
        "id": make_uid(seed, "dstu2-defect", "r4"),
        "subject": patient_ref,
        "clinicalStatus": {"coding": [{"code": "active"}]},
    }
    add("Condition", r4_shaped, "fhir_version_mismatch", "R4-shaped Condition in a DSTU2 file")
    # A medication order pointing at a DSTU2 Order, a type R4 does not have.
    order = {
        "resourceType": "MedicationOrder",
        "id": make_uid(seed, "dstu2-defect", "order"),
        "status": "active",
        "patient": patient_ref,
        "medicationCodeableConcept": {
            "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "197361"}]
        },
        "priorPrescription": {"reference": f"Order/{make_uid(seed, 'dstu2-defect', 'order-target')}"},
    }
    add("MedicationOrder", order, "upgrade_broken_reference", "reference to a DSTU2 Order (no R4 type)")

    files = []
    for rtype in sorted(lines):
        data = b"".join(line + b"\n" for line in lines[rtype])
        rel = f"{DSTU2_DIR}/{rtype}.dstu2.ndjson"
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        files.append(
            FileSummary(
                path=rel,
                format=DSTU2_FORMAT,
                size_bytes=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                resource_type=rtype,
                lines=len(lines[rtype]),
                resources={R4_TYPE.get(rtype, rtype): valid[rtype]} if valid.get(rtype) else {},
            )
        )
    return files, defects


def dstu2_resources(files: list[FileSummary]) -> Counter[str]:
    out: Counter[str] = Counter()
    for f in files:
        out.update(f.resources)
    return out

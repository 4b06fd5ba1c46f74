"""A large linking population: demo people recorded many times by several sources, with the truth beside."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pipelines.demo.fhir_r4 import patient_resource
from pipelines.demo.identity import lookalike_role, noisy_variant, person_id
from pipelines.demo.model import build_patient, patient_key
from pipelines.demo.records import make_uid

SSN_SYSTEM = "http://hl7.org/fhir/sid/us-ssn"
# (source system, its patient-number authority, is it an ADT feed): each keeps its own numbers.
SOURCES = (
    ("adt-feed", "urn:oid:2.16.840.1.113883.3.9999.1", True),
    ("lab-system", "urn:oid:2.16.840.1.113883.3.9999.21", False),
    ("clinic-emr", "urn:oid:2.16.840.1.113883.3.9999.22", False),
    ("hie-documents", "urn:oid:2.16.840.1.113883.3.9999.23", False),
    ("legacy-millennium", "urn:oid:2.16.840.1.113883.3.9999.24", False),
)


@dataclass(slots=True, frozen=True)
class SourcePatient:
    source_system: str
    resource: dict[str, Any]
    person: str
    role: str  # twin, namesake or empty
    lookalike_of: str


def iter_population(seed: int, people: int, records: int) -> Iterator[SourcePatient]:
    """About `records` source Patients for `people` people (1 to 2*records/people each), built lazily."""
    mean = records / people
    for index in range(people):
        p = build_patient(seed, index, "main", identity=True)
        rng = random.Random(f"{p.key}:population")  # noqa: S311 - reproducible synthetic data
        role = lookalike_role(index) or ""
        of = make_uid(seed, "person", patient_key(seed, index - 1)) if role else ""
        ssn = f"9{rng.randint(0, 99):02d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"
        for k in range(max(1, round(rng.uniform(1, 2 * mean - 1)))):
            source, authority, _adt = SOURCES[rng.randrange(len(SOURCES))]
            v = noisy_variant(p, f"{source}:{k}", seed)
            res = patient_resource(v)
            res["id"] = make_uid(seed, "source-patient", p.key, k)
            number = str(
                10_000_000 + (int(p.mrn) * (SOURCES.index((source, authority, _adt)) + 3)) % 89_999_999
            )
            ids = [] if rng.random() < 0.2 else [{"system": authority, "value": number}]
            if rng.random() < 0.3:
                ids.append({"system": SSN_SYSTEM, "value": ssn})
            res["identifier"] = ids
            res["meta"] = {
                "lastUpdated": f"20{rng.randint(10, 24)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}T00:00:00Z"
            }
            yield SourcePatient(source, res, person_id(p), role, of)

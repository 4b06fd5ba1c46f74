"""Plain records of one synthetic patient's chart, shared by every output format."""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

_HERE = Path(__file__).parent
CODES: dict[str, Any] = json.loads((_HERE / "codes.json").read_text(encoding="utf-8"))
PEOPLE: dict[str, Any] = json.loads((_HERE / "people.json").read_text(encoding="utf-8"))

MINUTE = 60
HOUR = 3_600
DAY = 86_400
YEAR = 31_557_600  # 365.25 days
_SQRT2 = math.sqrt(2.0)  # the same bits everywhere: IEEE square roots are correctly rounded
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_EXPORT_YEAR_START = int(datetime(2025, 1, 1, tzinfo=UTC).timestamp())

# MRNs are a bijection of a slot number, so patients never share one; other cohorts use slots
# counted down from the top, far away from any realistic patient count.
MRN_SLOTS = 90_000_000
_MRN_STRIDE = 7_919  # prime, coprime with MRN_SLOTS
COHORT_SLOT_BASE = {"bundle": MRN_SLOTS - 1, "defect": MRN_SLOTS - 1_001, "dstu2": MRN_SLOTS - 2_001}


def digest_int(text: str) -> int:
    """A stable 64-bit integer from text (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def make_uid(*parts: object) -> str:
    """A UUID-shaped (version 4 layout) identifier derived from its parts."""
    h = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=16).hexdigest()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:32]}"


def export_time(seed: int) -> int:
    """The instant the synthetic export was taken (UTC epoch seconds): fixed by the seed, within 2025."""
    return _EXPORT_YEAR_START + digest_int(f"{seed}:export-time") % (364 * DAY)


def mrn_for(seed: int, slot: int) -> str:
    offset = digest_int(f"{seed}:mrn") % MRN_SLOTS
    return str(10_000_000 + (slot * _MRN_STRIDE + offset) % MRN_SLOTS)


@dataclass(slots=True)
class Address:
    line: tuple[str, ...]
    city: str
    state: str
    postal_code: str
    country: str = "US"


@dataclass(slots=True)
class VitalSign:
    uid: str
    kind: str  # a key of CODES["vitals"]; "blood_pressure" carries (systolic, diastolic)
    when: int
    values: tuple[float, ...]
    unit: str  # UCUM code
    last_updated: int


@dataclass(slots=True)
class LabResult:
    uid: str
    test: str  # local (legacy) code, a key of CODES["lab_tests"]
    value: float
    interpretation: str  # H, L or N
    coding: str  # loinc, local or both: legacy feeds often carry only the local code
    last_updated: int


@dataclass(slots=True)
class LabPanel:
    uid: str
    panel: dict[str, Any]
    accession: str
    collected: int
    issued: int
    results: list[LabResult]
    last_updated: int


@dataclass(slots=True)
class Encounter:
    uid: str
    visit_number: str
    cls: dict[str, Any]
    type: dict[str, str]
    start: int
    end: int
    last_updated: int
    reason_uid: str | None = None
    vitals: list[VitalSign] = field(default_factory=list)
    panels: list[LabPanel] = field(default_factory=list)


@dataclass(slots=True)
class Condition:
    uid: str
    code: dict[str, Any]
    coding: str  # snomed, icd10 or both
    clinical_status: str
    verification_status: str
    category: str  # problem-list-item or encounter-diagnosis
    onset: int
    abatement: int | None
    recorded: int
    encounter_uid: str | None
    last_updated: int


@dataclass(slots=True)
class MedicationOrder:
    uid: str
    order_number: str
    drug: dict[str, Any]
    coding: str  # rxnorm, ndc or both
    status: str
    authored: int
    encounter_uid: str
    reason_uid: str | None
    last_updated: int


@dataclass(slots=True)
class Allergy:
    uid: str
    substance: dict[str, Any]
    type: str
    criticality: str
    clinical_status: str
    verification_status: str
    onset: date | None
    recorded: int
    reaction: dict[str, Any]
    severity: str
    last_updated: int


@dataclass(slots=True)
class Immunization:
    uid: str
    vaccine: dict[str, Any]
    when: int
    status: str  # completed or not-done
    status_reason: dict[str, str] | None
    encounter_uid: str
    lot_number: str | None
    last_updated: int


@dataclass(slots=True)
class Procedure:
    uid: str
    code: dict[str, Any]
    start: int
    end: int | None  # None: a point in time (performedDateTime)
    encounter_uid: str
    last_updated: int


@dataclass(slots=True)
class PatientRecord:
    key: str
    seed: int
    cohort: str
    index: int
    uid: str
    mrn: str
    family: str
    given: tuple[str, ...]
    gender: str
    birth_date: date
    deceased_at: int | None
    address: Address
    phone: str
    utc_offset_minutes: int
    marital: dict[str, str] | None
    language: dict[str, str]
    last_updated: int
    encounters: list[Encounter] = field(default_factory=list)
    conditions: list[Condition] = field(default_factory=list)
    medications: list[MedicationOrder] = field(default_factory=list)
    allergies: list[Allergy] = field(default_factory=list)
    immunizations: list[Immunization] = field(default_factory=list)
    procedures: list[Procedure] = field(default_factory=list)
    mrn_root: str | None = None  # another assigning authority's number in place of the MRN (identity noise)


def normal(rng: random.Random, mu: float, sigma: float) -> float:
    """A near-normal draw from uniforms only: Random.gauss goes through libm's log and cos, whose last bits
    may differ between platforms, and the output must be byte-identical everywhere."""
    total = 0.0
    for _ in range(6):  # a plain loop: sum() of floats is compensated from Python 3.12 on, changing the bits
        total += rng.random()
    return mu + sigma * (total - 3.0) * _SQRT2


def weighted(rng: random.Random, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Pick one entry by its "weight"."""
    return rng.choices(entries, [e["weight"] for e in entries])[0]


def birth_ts(patient: PatientRecord) -> int:
    return (patient.birth_date.toordinal() - _EPOCH_ORDINAL) * DAY


def age_at(patient: PatientRecord, ts: int) -> float:
    return (ts - birth_ts(patient)) / YEAR


def patient_key(seed: int, index: int, cohort: str = "main") -> str:
    """The random-stream key of one patient: patient k of a seed is the same whatever the count."""
    return f"{seed}:{index}" if cohort == "main" else f"{seed}:{cohort}:{index}"

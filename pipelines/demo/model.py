"""Synthetic patients generated one at a time, each derived only from (seed, cohort, patient index)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import date

from pipelines.demo.clinical import add_clinical_history
from pipelines.demo.identity import lookalike_role, make_lookalike
from pipelines.demo.records import (
    CODES,
    COHORT_SLOT_BASE,
    DAY,
    PEOPLE,
    YEAR,
    Address,
    PatientRecord,
    export_time,
    make_uid,
    mrn_for,
    patient_key,
    weighted,
)

_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_BIRTH_FIRST = date(1920, 1, 1).toordinal()
_BIRTH_LAST = date(2024, 6, 30).toordinal()
COHORTS = ("main", "bundle", "defect", "dstu2")


def iter_patients(
    seed: int, count: int, cohort: str = "main", identity: bool = False
) -> Iterator[PatientRecord]:
    """Patients 0..count-1 of a cohort, built lazily so memory stays flat however many there are."""
    for index in range(count):
        yield build_patient(seed, index, cohort, identity)


def build_patient(seed: int, index: int, cohort: str = "main", identity: bool = False) -> PatientRecord:
    """Build one synthetic patient; only (seed, cohort, index, identity) decide its content.

    With identity, some main-cohort patients are look-alikes of the patient before them (twins, a
    same-named parent or child): their demographics are set before their history, which depends on age.
    """
    if cohort not in COHORTS:
        raise ValueError(f"unknown cohort {cohort!r}")
    key = patient_key(seed, index, cohort)
    rng = random.Random(key)  # noqa: S311 - reproducible synthetic data, not secrets
    slot = index if cohort == "main" else COHORT_SLOT_BASE[cohort] - index
    gender = rng.choices(("female", "male", "other", "unknown"), (495, 495, 6, 4))[0]
    if gender == "female" or (gender != "male" and rng.random() < 0.5):
        pool = PEOPLE["given_female"]
    else:
        pool = PEOPLE["given_male"]
    given = (rng.choice(pool),) if rng.random() < 0.6 else (rng.choice(pool), rng.choice(pool))
    birth = date.fromordinal(rng.randint(_BIRTH_FIRST, _BIRTH_LAST))
    place = rng.choice(PEOPLE["places"])
    street = f"{rng.randint(1, 9899)} {rng.choice(PEOPLE['streets'])} {rng.choice(PEOPLE['street_suffixes'])}"
    lines = (street,) if rng.random() < 0.8 else (street, f"Apt {rng.randint(1, 40)}{rng.choice('ABCD')}")
    as_of = export_time(seed)
    age = (as_of - (birth.toordinal() - _EPOCH_ORDINAL) * DAY) / YEAR
    marital = None
    if age >= 18:
        entry = weighted(rng, CODES["marital_status"])
        marital = {"code": entry["code"], "display": entry["display"]}
    language = weighted(rng, CODES["languages"])
    patient = PatientRecord(
        key=key,
        seed=seed,
        cohort=cohort,
        index=index,
        uid=make_uid(key, "Patient"),
        mrn=mrn_for(seed, slot),
        family=rng.choice(PEOPLE["family"]),
        given=given,
        gender=gender,
        birth_date=birth,
        deceased_at=None,
        address=Address(lines, place["city"], place["state"], place["zip"]),
        # 555-0100..0199 is the range reserved for fictional numbers.
        phone=f"{place['area']}-555-01{rng.randint(0, 99):02d}",
        utc_offset_minutes=place["utc_offset_minutes"],
        marital=marital,
        language={"code": language["code"], "display": language["display"]},
        last_updated=0,
    )
    if identity and cohort == "main" and index > 0 and lookalike_role(index):
        make_lookalike(patient, build_patient(seed, index - 1, cohort, identity), rng)
    add_clinical_history(patient, rng, as_of)
    return patient

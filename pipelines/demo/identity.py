"""Identity noise for the demo: each source records a person differently; look-alikes; the truth."""

from __future__ import annotations

import csv
import io
import random
from dataclasses import replace
from datetime import date

from pipelines.common.paths import shipped
from pipelines.demo.records import CODES, PEOPLE, Address, PatientRecord, make_uid, patient_key

TRUTH_NAME = "identity-truth.csv"
TRUTH_COLUMNS = ("source", "identifier_system", "identifier_value", "person", "role", "lookalike_of")
# A C-CDA from an outside facility carries that facility's own patient number, not the MRN.
OUTSIDE_ROOT = "2.16.840.1.113883.3.7208"
_TWIN, _NAMESAKE = 4, 7  # index % 10: the look-alike of patient index - 1


def _nicknames() -> dict[str, list[str]]:
    table: dict[str, list[str]] = {}
    text = (shipped("schemas") / "identity" / "nicknames.csv").read_text(encoding="utf-8")
    for row in csv.DictReader(io.StringIO(text)):
        table.setdefault(row["given"], []).append(row["nickname"].title())
    return table


NICKNAMES = _nicknames()


def lookalike_role(index: int) -> str | None:
    """Which main-cohort patients are look-alikes of the one before them (different people)."""
    if index % 10 == _TWIN:
        return "twin"
    if index % 10 == _NAMESAKE:
        return "namesake"
    return None


def make_lookalike(patient: PatientRecord, model: PatientRecord, rng: random.Random) -> None:
    """Turn patient into model's twin (birth date, family, home) or same-named parent or child."""
    patient.family = model.family
    patient.address = model.address
    patient.phone = model.phone
    if lookalike_role(patient.index) == "twin":
        patient.birth_date = model.birth_date
        pool = PEOPLE["given_female" if patient.gender == "female" else "given_male"]
        patient.given = (rng.choice([g for g in pool if g not in model.given]),)
        return
    patient.given = model.given
    patient.gender = model.gender
    years = rng.randint(22, 38)
    born = model.birth_date
    later = _shift_years(born, years)
    # The namesake is the model's child when there is room before 2024, else the model's parent.
    patient.birth_date = later if later.year <= 2023 else _shift_years(born, -years)


def _shift_years(day: date, years: int) -> date:
    return date(day.year + years, day.month, min(day.day, 28))


def _typo(text: str, rng: random.Random) -> str:
    if len(text) < 4:
        return text
    i = rng.randint(1, len(text) - 2)
    kind = rng.randrange(3)
    if kind == 0:  # adjacent keys swapped
        return text[:i] + text[i + 1] + text[i] + text[i + 2 :]
    if kind == 1:  # a letter dropped
        return text[:i] + text[i + 1 :]
    return text[:i] + rng.choice("aeiounrst") + text[i + 1 :]


def noisy_variant(p: PatientRecord, source: str, seed: int, outside_ids: bool = False) -> PatientRecord:
    """How one source recorded this person: the clinical content is the same, the demographics drift."""
    rng = random.Random(f"{p.key}:identity:{source}")  # noqa: S311 - reproducible synthetic data
    family, given, born = p.family, list(p.given), p.birth_date
    address, phone, mrn, root = p.address, p.phone, p.mrn, None
    if rng.random() < 0.12:
        family = _typo(family, rng)
    if rng.random() < 0.12:
        given[0] = _typo(given[0], rng)
    nick = NICKNAMES.get(given[0].upper())
    if nick and rng.random() < 0.35:
        given[0] = rng.choice(nick)
    if p.gender == "female" and rng.random() < 0.15:  # maiden name in one source, married in another
        family = rng.choice([f for f in PEOPLE["family"] if f != p.family])
    if rng.random() < 0.04:  # given and family entered in each other's fields
        family, given = given[0], [family]
    if born.day <= 12 and born.day != born.month and rng.random() < 0.06:
        born = date(born.year, born.day, born.month)
    if rng.random() < 0.25:  # moved house; the new address is in the same region
        place = rng.choice(PEOPLE["places"])
        street = (
            f"{rng.randint(1, 9899)} {rng.choice(PEOPLE['streets'])} {rng.choice(PEOPLE['street_suffixes'])}"
        )
        address = Address((street,), place["city"], place["state"], place["zip"])
    if rng.random() < 0.12:
        phone = f"{phone[:3]}-555-01{rng.randint(0, 99):02d}"
    if outside_ids and rng.random() < 0.3:
        mrn, root = str(rng.randint(100_000, 999_999)), OUTSIDE_ROOT
    return replace(
        p,
        family=family,
        given=tuple(given),
        birth_date=born,
        address=address,
        phone=phone,
        mrn=mrn,
        mrn_root=root,
    )


def person_id(p: PatientRecord) -> str:
    """The true person behind a patient record, as the truth file names it."""
    return make_uid(p.seed, "person", p.key)


def truth_rows(p: PatientRecord, variants: dict[str, PatientRecord]) -> list[tuple[str, ...]]:
    """One row per source identifier of the person: (source, system, value, person, role, look-alike of)."""
    from pipelines.demo.ccda import ROOT

    person = person_id(p)
    role = lookalike_role(p.index) or ""
    of = make_uid(p.seed, "person", patient_key(p.seed, p.index - 1)) if role else ""
    rows = [("fhir-r4", CODES["identifiers"]["mrn"], p.mrn, person, role, of)]
    for source, v in variants.items():
        system = CODES["identifiers"]["mrn"] if source == "hl7v2" else f"urn:oid:{v.mrn_root or ROOT}"
        rows.append((source, system, v.mrn, person, role, of))
    return rows


def truth_csv(rows: list[tuple[str, ...]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(TRUTH_COLUMNS)
    writer.writerows(rows)
    return buf.getvalue().encode()

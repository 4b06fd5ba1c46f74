"""One synthetic patient's history: visits, vitals, labs, problems, drugs, allergies, shots, procedures."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime
from typing import Any

from pipelines.demo.records import (
    CODES,
    DAY,
    HOUR,
    MINUTE,
    YEAR,
    Allergy,
    Condition,
    Encounter,
    Immunization,
    LabPanel,
    LabResult,
    MedicationOrder,
    PatientRecord,
    Procedure,
    VitalSign,
    age_at,
    birth_ts,
    make_uid,
    normal,
    weighted,
)

_CLASSES = CODES["encounter_classes"]
_CLASS_WEIGHTS = [c["weight"] for c in _CLASSES]
_CHRONIC = [c for c in CODES["conditions"] if c["chronic"]]
_ACUTE = [c for c in CODES["conditions"] if not c["chronic"]]
_TESTS = CODES["lab_tests"]
_DRUGS_FOR: dict[str, list[dict[str, Any]]] = {}
for _drug in CODES["medications"]:
    for _code in _drug["for"]:
        _DRUGS_FOR.setdefault(_code, []).append(_drug)
_VACCINE_SINCE = {
    v["cvx"]: int(datetime.fromisoformat(v["since"]).replace(tzinfo=UTC).timestamp())
    for v in CODES["vaccines"]
}
_SYMPTOM_VISIT = "185345009"
_DIABETES, _HYPERTENSION, _CKD, _OBESITY = "44054006", "59621000", "433144002", "414916001"
# (age below which the row applies, how many chronic problems, their weights)
_CHRONIC_COUNTS = (
    (18, (0, 1), (85, 15)),
    (45, (0, 1, 2), (55, 35, 10)),
    (65, (0, 1, 2, 3), (30, 35, 25, 10)),
    (999, (0, 1, 2, 3, 4), (15, 30, 30, 18, 7)),
)
_ACUTE_CHANCE = {"AMB": 0.08, "EMER": 0.5, "IMP": 0.35}


def add_clinical_history(patient: PatientRecord, rng: random.Random, as_of: int) -> None:
    """Fill a patient's clinical lists, drawing from the patient's own random stream in a fixed order."""
    _Chart(patient, rng, as_of).build()


class _Chart:
    def __init__(self, patient: PatientRecord, rng: random.Random, as_of: int) -> None:
        self.p = patient
        self.rng = rng
        self.as_of = as_of
        self.birth = birth_ts(patient)
        self.offset = patient.utc_offset_minutes * MINUTE
        self.counters: dict[str, int] = {}

    def uid(self, kind: str) -> str:
        n = self.counters.get(kind, 0)
        self.counters[kind] = n + 1
        return make_uid(self.p.key, kind, n)

    def stamp(self, ts: int) -> int:
        """When the legacy system last touched a record: a little after the event, never after the export."""
        return min(self.as_of - HOUR, ts + self.rng.randint(5 * MINUTE, 3 * DAY))

    def build(self) -> None:
        rng, p = self.rng, self.p
        male = p.gender == "male" or (p.gender not in ("male", "female") and rng.random() < 0.5)
        self.adult_height = normal(rng, 176.0, 7.0) if male else normal(rng, 163.0, 6.5)
        self.adult_weight = normal(rng, 86.0, 14.0) if male else normal(rng, 74.0, 14.0)
        chronic = self.pick_chronic()
        self.chronic_codes = {c["snomed"] for c, _ in chronic}
        if _OBESITY in self.chronic_codes:
            self.adult_weight += 18.0
        acute: list[Condition] = []
        for seq, day in enumerate(self.visit_days()):
            p.encounters.append(self.encounter(seq, day, acute))
        last_end = p.encounters[-1].end
        if age_at(p, self.as_of) >= 60 and rng.random() < 0.03:
            p.deceased_at = min(self.as_of - DAY, last_end + rng.randint(DAY, 120 * DAY))
        for entry, onset in chronic:
            p.conditions.append(self.chronic_condition(entry, onset))
        p.conditions.extend(acute)
        for cond in p.conditions:
            self.maybe_prescribe(cond)
        for _ in range(rng.choices((0, 1, 2), (76, 18, 6))[0]):
            self.allergy()
        stamps = [e.last_updated for e in p.encounters] + [c.last_updated for c in p.conditions]
        p.last_updated = min(self.as_of - HOUR, max(stamps) + rng.randint(HOUR, 30 * DAY))

    def pick_chronic(self) -> list[tuple[dict[str, Any], int]]:
        age = age_at(self.p, self.as_of)
        _, counts, weights = next(row for row in _CHRONIC_COUNTS if age < row[0])
        wanted = self.rng.choices(counts, weights)[0]
        pool = [c for c in _CHRONIC if c["min_age"] <= age]
        picked: list[tuple[dict[str, Any], int]] = []
        while pool and len(picked) < wanted:
            entry = weighted(self.rng, pool)
            pool.remove(entry)
            earliest = self.birth + entry["min_age"] * YEAR
            latest = self.as_of - 60 * DAY
            if earliest < latest:
                picked.append((entry, self.rng.randint(earliest, latest)))
        return picked

    def visit_days(self) -> list[int]:
        first = max(self.birth + 7 * DAY, self.as_of - 10 * YEAR) // DAY
        last = (self.as_of - 10 * DAY) // DAY
        count = self.rng.choices((1, 2, 3, 4), (50, 28, 15, 7))[0]
        return sorted(self.rng.randint(first, max(first, last)) for _ in range(count))

    def encounter(self, seq: int, day: int, acute: list[Condition]) -> Encounter:
        rng, p = self.rng, self.p
        cls = rng.choices(_CLASSES, _CLASS_WEIGHTS)[0]
        etype = rng.choice(cls["types"])
        if cls["code"] == "AMB":
            local = day * DAY + rng.randint(8, 16) * HOUR + rng.choice((0, 15, 30, 45)) * MINUTE
        else:
            local = day * DAY + rng.randint(0, 23) * HOUR + rng.randint(0, 59) * MINUTE
        start = local - self.offset
        end = start + rng.randint(*cls["minutes"]) * MINUTE
        enc = Encounter(
            self.uid("Encounter"), f"V{p.mrn}{seq + 1:03d}", cls, etype, start, end, self.stamp(end)
        )
        age = age_at(p, start)
        chance = 0.7 if etype["code"] == _SYMPTOM_VISIT else _ACUTE_CHANCE[cls["code"]]
        if rng.random() < chance:
            cond = self.acute_condition(enc, age)
            if cond is not None:
                acute.append(cond)
                enc.reason_uid = cond.uid
        if seq == 0 or rng.random() < cls["vitals"]:
            self.vitals(enc, age)
        if rng.random() < cls["labs"]:
            enc.panels.append(self.lab_panel(enc, age))
            if cls["code"] == "IMP" and rng.random() < 0.5:
                enc.panels.append(self.lab_panel(enc, age))
        if rng.random() < cls["procedure"]:
            self.procedure(enc, age)
        if cls["code"] == "AMB" and rng.random() < 0.3:
            self.immunization(enc, age)
        return enc

    def acute_condition(self, enc: Encounter, age: float) -> Condition | None:
        rng = self.rng
        pool = [c for c in _ACUTE if c["min_age"] <= age]
        if not pool:
            return None
        entry = weighted(rng, pool)
        onset = enc.start - rng.randint(1, 7) * DAY
        abatement = enc.start + rng.randint(7, 21) * DAY
        resolved = abatement < self.as_of - DAY
        return Condition(
            uid=self.uid("Condition"),
            code=entry,
            coding=rng.choices(("snomed", "icd10", "both"), (55, 15, 30))[0],
            clinical_status="resolved" if resolved else "active",
            verification_status="confirmed",
            category="encounter-diagnosis",
            onset=onset,
            abatement=abatement if resolved else None,
            recorded=enc.start + rng.randint(10, 50) * MINUTE,
            encounter_uid=enc.uid,
            last_updated=self.stamp(abatement if resolved else enc.end),
        )

    def chronic_condition(self, entry: dict[str, Any], onset: int) -> Condition:
        rng = self.rng
        seen = next((e for e in self.p.encounters if e.start >= onset), None)
        recorded = (
            seen.start + rng.randint(10, 50) * MINUTE if seen else min(self.as_of - DAY, onset + 14 * DAY)
        )
        status = rng.choices(("active", "remission", "inactive"), (88, 6, 6))[0]
        return Condition(
            uid=self.uid("Condition"),
            code=entry,
            coding=rng.choices(("snomed", "icd10", "both"), (55, 15, 30))[0],
            clinical_status=status,
            verification_status=rng.choices(("confirmed", "provisional", "unconfirmed"), (90, 6, 4))[0],
            category="problem-list-item",
            onset=onset,
            abatement=None,
            recorded=recorded,
            encounter_uid=seen.uid if seen else None,
            last_updated=self.stamp(recorded),
        )

    def vitals(self, enc: Encounter, age: float) -> None:
        rng = self.rng
        when = min(enc.end, enc.start + rng.randint(5, 20) * MINUTE)
        bump = 12.0 if _HYPERTENSION in self.chronic_codes else 0.0
        if age < 13:
            bp = (round(normal(rng, 102, 8)), round(normal(rng, 64, 7)))
            pulse = round(normal(rng, 95, 14))
        else:
            bp = (
                round(normal(rng, 118 + max(0.0, age - 40) * 0.3 + bump, 13)),
                round(normal(rng, 77 + bump / 2, 9)),
            )
            pulse = round(normal(rng, 74, 11))
        self.vital(enc, "blood_pressure", when, bp, "mm[Hg]")
        self.vital(enc, "heart_rate", when, (pulse,), "/min")
        if rng.random() < 0.4:
            celsius = normal(rng, 36.8, 0.35) + (
                1.4 if enc.cls["code"] == "EMER" and rng.random() < 0.3 else 0.0
            )
            if rng.random() < 0.3:
                self.vital(enc, "temperature", when, (round(celsius * 9 / 5 + 32, 1),), "[degF]")
            else:
                self.vital(enc, "temperature", when, (round(celsius, 1),), "Cel")
        if age < 1:
            kg, cm = 3.5 + age * 6.0, 50.0 + age * 25.0
        elif age < 18:
            kg, cm = 9.0 + (age - 1) * 3.3, 75.0 + (age - 1) * 5.9
        else:
            kg, cm = self.adult_weight + normal(rng, 0, 1.5), self.adult_height
        weighed, measured = rng.random() < 0.6, rng.random() < (0.7 if age < 18 else 0.3)
        if weighed:
            if rng.random() < 0.25:
                self.vital(enc, "weight", when, (round(kg * 2.20462, 1),), "[lb_av]")
            else:
                self.vital(enc, "weight", when, (round(kg, 1),), "kg")
        if measured:
            if rng.random() < 0.2:
                self.vital(enc, "height", when, (round(cm / 2.54, 1),), "[in_i]")
            else:
                self.vital(enc, "height", when, (round(cm, 1),), "cm")
        if weighed and measured:
            self.vital(enc, "bmi", when, (round(kg / ((cm / 100) * (cm / 100)), 1),), "kg/m2")

    def vital(self, enc: Encounter, kind: str, when: int, values: tuple[float, ...], unit: str) -> None:
        enc.vitals.append(VitalSign(self.uid("Observation"), kind, when, values, unit, self.stamp(when)))

    def lab_panel(self, enc: Encounter, age: float) -> LabPanel:
        rng = self.rng
        pool = [panel for panel in CODES["lab_panels"] if panel["min_age"] <= age]
        diabetic = _DIABETES in self.chronic_codes
        weights = [panel["weight"] * (4 if diabetic and panel["local"] == "A1C" else 1) for panel in pool]
        panel = rng.choices(pool, weights)[0]
        collected = min(enc.end, enc.start + rng.randint(10, 60) * MINUTE)
        issued = collected + rng.randint(1 * 60, 6 * 60) * MINUTE
        coding = rng.choices(("loinc", "local", "both"), (55, 20, 25))[0]
        results = []
        for test in panel["tests"]:
            spec = _TESTS[test]
            mean = spec["mean"]
            if diabetic and test in ("GLU", "A1C"):
                mean += 45 if test == "GLU" else 1.8
            if test == "CREAT" and _CKD in self.chronic_codes:
                mean += 0.8
            value = max(
                round(normal(rng, mean, spec["sd"]), spec["decimals"]), round(mean * 0.1, spec["decimals"])
            )
            if spec["decimals"] == 0:
                value = int(value)
            flag = "N"
            if spec["high"] is not None and value > spec["high"]:
                flag = "H"
            elif spec["low"] is not None and value < spec["low"]:
                flag = "L"
            results.append(LabResult(self.uid("Observation"), test, value, flag, coding, self.stamp(issued)))
        accession = f"L{self.p.mrn}{self.counters.get('DiagnosticReport', 0) + 1:03d}"
        return LabPanel(
            self.uid("DiagnosticReport"), panel, accession, collected, issued, results, self.stamp(issued)
        )

    def procedure(self, enc: Encounter, age: float) -> None:
        rng, sex = self.rng, self.p.gender
        pool = [
            c
            for c in CODES["procedures"]
            if enc.cls["code"] in c["classes"] and c["min_age"] <= age and c["sex"] in (None, sex)
        ]
        if not pool:
            return
        entry = weighted(rng, pool)
        start = enc.start + rng.randint(0, max(0, (enc.end - enc.start) // 2 // MINUTE)) * MINUTE
        end = start + entry["minutes"] * MINUTE if entry["minutes"] else None
        self.p.procedures.append(
            Procedure(self.uid("Procedure"), entry, start, end, enc.uid, self.stamp(end or start))
        )

    def immunization(self, enc: Encounter, age: float) -> None:
        rng = self.rng
        when = enc.start + rng.randint(10, 40) * MINUTE
        pool = [
            v
            for v in CODES["vaccines"]
            if v["min_age"] <= age < v["max_age"] and when >= _VACCINE_SINCE[v["cvx"]]
        ]
        if not pool:
            return
        vaccine = weighted(rng, pool)
        if rng.random() < 0.08:
            status, reason, lot = "not-done", rng.choice(CODES["immunization_not_done_reasons"]), None
        else:
            letters = "ABCDEFGHJKLMNPRSTUVWXYZ"
            status, reason = "completed", None
            lot = f"{rng.choice(letters)}{rng.choice(letters)}{rng.randint(1000, 99999)}"
        self.p.immunizations.append(
            Immunization(
                self.uid("Immunization"), vaccine, when, status, reason, enc.uid, lot, self.stamp(when)
            )
        )

    def maybe_prescribe(self, cond: Condition) -> None:
        rng, p = self.rng, self.p
        drugs = _DRUGS_FOR.get(cond.code["snomed"])
        if not drugs or rng.random() >= (0.65 if cond.category == "problem-list-item" else 0.7):
            return
        drug = rng.choice(drugs)
        if cond.encounter_uid is None:
            return
        enc = next(e for e in p.encounters if e.uid == cond.encounter_uid)
        authored = enc.start + rng.randint(20, 90) * MINUTE
        if cond.category == "encounter-diagnosis":
            status = "completed"
        elif cond.clinical_status != "active" or p.deceased_at is not None:
            status = "stopped"
        else:
            status = "active"
        if "rxnorm" in drug and "ndc" in drug:
            coding = rng.choices(("rxnorm", "ndc", "both"), (40, 30, 30))[0]
        else:
            coding = "rxnorm" if "rxnorm" in drug else "ndc"
        order = f"O{p.mrn}{len(p.medications) + 1:03d}"
        p.medications.append(
            MedicationOrder(
                self.uid("MedicationRequest"),
                order,
                drug,
                coding,
                status,
                authored,
                enc.uid,
                cond.uid,
                self.stamp(authored),
            )
        )

    def allergy(self) -> None:
        rng, p = self.rng, self.p
        taken = {a.substance["code"] for a in p.allergies}
        pool = [s for s in CODES["allergy_substances"] if s["code"] not in taken]
        substance = weighted(rng, pool)
        reaction = weighted(rng, CODES["allergy_reactions"])
        severe = reaction["code"] == "39579001"  # anaphylaxis
        severity = "severe" if severe else rng.choices(("mild", "moderate", "severe"), (60, 35, 5))[0]
        criticality = "high" if severe else rng.choices(("low", "high", "unable-to-assess"), (70, 15, 15))[0]
        onset = None
        if rng.random() < 0.6:
            onset = date.fromordinal(
                date(1970, 1, 1).toordinal() + rng.randint(self.birth // DAY, (self.as_of - 30 * DAY) // DAY)
            )
        recorded = p.encounters[0].start + rng.randint(5, 30) * MINUTE
        p.allergies.append(
            Allergy(
                uid=self.uid("AllergyIntolerance"),
                substance=substance,
                type=rng.choices(("allergy", "intolerance"), (85, 15))[0],
                criticality=criticality,
                clinical_status=rng.choices(("active", "inactive", "resolved"), (92, 5, 3))[0],
                verification_status=rng.choices(("confirmed", "unconfirmed"), (80, 20))[0],
                onset=onset,
                recorded=recorded,
                reaction=reaction,
                severity=severity,
                last_updated=self.stamp(recorded),
            )
        )

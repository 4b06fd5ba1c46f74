"""Small data builders for the data-quality tests: one consistent, plausible row set for every view."""

from __future__ import annotations

from pathlib import Path

import duckdb

from pipelines.common.paths import shipped
from pipelines.common.warehouse import open_warehouse
from pipelines.views.materialize import materialize_views

LOINC = "http://loinc.org"
SCT = "http://snomed.info/sct"
RXN = "http://www.nlm.nih.gov/research/umls/rxnorm"
CVX = "http://hl7.org/fhir/sid/cvx"
UCUM = "http://unitsofmeasure.org"
RUN = "run-test"

GOOD: dict[str, list[dict]] = {
    "patient": [
        {
            "id": "p1",
            "gender": "female",
            "birth_date": "1980-05-01",
            "mrn_system": "urn:mrn",
            "mrn_value": "M1",
        },
        {
            "id": "p2",
            "gender": "male",
            "birth_date": "1990",
            "mrn_system": "urn:mrn",
            "mrn_value": "M2",
            "deceased_date_time": "2021-06-01T08:00:00Z",
        },
    ],
    "patient_identifier": [
        {"patient_id": "p1", "identifier_index": 0, "use": "usual", "system": "urn:mrn", "value": "M1"},
        {"patient_id": "p2", "identifier_index": 0, "use": "official", "system": "urn:mrn", "value": "M2"},
    ],
    "encounter": [
        {
            "id": "e1",
            "patient_id": "p1",
            "status": "finished",
            "class_code": "AMB",
            "period_start": "2020-01-01T10:00:00Z",
            "period_end": "2020-01-01T11:00:00Z",
        },
    ],
    "observation": [
        {
            "id": "o1",
            "patient_id": "p1",
            "encounter_id": "e1",
            "status": "final",
            "code_system": LOINC,
            "code": "8867-4",
            "effective_date_time": "2020-01-01T10:30:00Z",
            "issued": "2020-01-01T10:31:00Z",
            "value_quantity_value": 72.0,
            "value_quantity_unit": "/min",
            "value_quantity_system": UCUM,
            "value_quantity_code": "/min",
        },
        {
            "id": "o2",
            "patient_id": "p1",
            "encounter_id": "e1",
            "status": "final",
            "code_system": LOINC,
            "code": "85354-9",
            "effective_date_time": "2020-01-01",
            "component_count": 1,
        },
        {
            "id": "o3",
            "patient_id": "p2",
            "status": "amended",
            "code_system": SCT,
            "code": "271649006",
            "effective_period_start": "2020-02",
        },
    ],
    "observation_component": [
        {
            "observation_id": "o2",
            "patient_id": "p1",
            "component_index": 0,
            "code_system": LOINC,
            "code": "8480-6",
            "value_quantity_value": 120.0,
            "value_quantity_system": UCUM,
            "value_quantity_code": "mm[Hg]",
        },
    ],
    "condition": [
        {
            "id": "c1",
            "patient_id": "p1",
            "encounter_id": "e1",
            "clinical_status": "active",
            "verification_status": "confirmed",
            "code_system": SCT,
            "code": "44054006",
            "onset_date_time": "2019-01-01",
            "abatement_date_time": "2021-01-01",
            "recorded_date": "2019-02-01",
        },
        {
            "id": "c2",
            "patient_id": "p2",
            "clinical_status": "resolved",
            "code_system": "http://hl7.org/fhir/sid/icd-10-cm",
            "code": "E11.9",
            "onset_date_time": "2015",
        },
    ],
    "medication_request": [
        {
            "id": "m1",
            "patient_id": "p1",
            "encounter_id": "e1",
            "status": "active",
            "intent": "order",
            "medication_system": RXN,
            "medication_code": "197361",
            "authored_on": "2020-01-01",
            "dose_quantity_value": 1.0,
        },
    ],
    "allergy_intolerance": [
        {
            "id": "a1",
            "patient_id": "p1",
            "encounter_id": "e1",
            "clinical_status": "active",
            "verification_status": "confirmed",
            "type": "allergy",
            "category": "medication",
            "criticality": "high",
            "code_system": RXN,
            "code": "7980",
            "onset_date_time": "2010",
            "recorded_date": "2010-05-01",
        },
    ],
    "immunization": [
        {
            "id": "i1",
            "patient_id": "p1",
            "encounter_id": "e1",
            "status": "completed",
            "vaccine_system": CVX,
            "vaccine_code": "140",
            "occurrence_date_time": "2020-10-01",
        },
    ],
    "procedure": [
        {
            "id": "pr1",
            "patient_id": "p1",
            "encounter_id": "e1",
            "status": "completed",
            "code_system": SCT,
            "code": "80146002",
            "performed_date_time": "2020-01-01T10:40:00Z",
        },
    ],
    "diagnostic_report": [
        {
            "id": "d1",
            "patient_id": "p1",
            "encounter_id": "e1",
            "status": "final",
            "code_system": LOINC,
            "code": "58410-2",
            "effective_date_time": "2020-01-01T10:30:00Z",
            "issued": "2020-01-01T12:00:00Z",
        },
    ],
    "diagnostic_report_result": [
        {"diagnostic_report_id": "d1", "patient_id": "p1", "result_index": 0, "observation_id": "o1"},
    ],
}
GOOD_MAPPINGS = [
    # (source_system, method, occurrences): 1 unmapped of 20 local codes is 5%, under the 10% default
    (LOINC, "exact", 40),
    ("http://legacy-lab.example.org/codes", "crosswalk", 19),
    ("http://legacy-lab.example.org/codes", "unmapped", 1),
]


def insert_rows(con: duckdb.DuckDBPyConnection, view: str, rows: list[dict]) -> None:
    """Rows written as FHIR text; a date or dateTime goes in typed, with its precision beside it."""
    columns = {r[0] for r in con.execute(f'DESCRIBE views."{view}"').fetchall()}
    for row in rows:
        row = dict(row)
        for col, value in list(row.items()):
            if isinstance(value, str) and f"{col}_precision" in columns:
                row[col], row[f"{col}_precision"] = _typed(value)
        cols = ", ".join(f'"{c}"' for c in row)
        marks = ", ".join("?" for _ in row)
        con.execute(f'INSERT INTO views."{view}" ({cols}) VALUES ({marks})', list(row.values()))


def _typed(text: str) -> tuple[str, str]:
    """FHIR partial-date text as the views store it: its first day (or first moment) and the precision."""
    precision = {4: "year", 7: "month", 10: "day"}.get(len(text), "time")
    return {4: text + "-01-01", 7: text + "-01"}.get(len(text), text), precision


def insert_mappings(
    con: duckdb.DuckDBPyConnection, rows: list[tuple[str, str, int]], run_id: str = RUN
) -> None:
    """Rows as the normalize stage writes them: one per distinct decision, with its occurrence count."""
    for i, (system, method, n) in enumerate(rows):
        con.execute(
            "INSERT INTO ops.mapping_log (run_id, source_system, source_code, method, occurrences) "
            "VALUES (?, ?, ?, ?, ?)",
            [run_id, system, f"code-{i}", method, n],
        )


def good_warehouse(path: Path) -> Path:
    """A warehouse whose views hold GOOD (fhir.* stays empty) and whose mapping log holds GOOD_MAPPINGS."""
    with open_warehouse(path) as con:
        materialize_views(con, shipped("schemas") / "views")
        for view, rows in GOOD.items():
            insert_rows(con, view, rows)
        insert_mappings(con, GOOD_MAPPINGS)
    return path

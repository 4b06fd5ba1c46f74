"""Materializes the production ViewDefinitions in schemas/views against a tiny synthetic warehouse."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import duckdb
import orjson
import pytest

from pipelines.views import ViewDefinitionError, compile_view, materialize_views
from pipelines.views.standard import with_codings
from pipelines.views.table import columns_of

VIEWS = Path(__file__).resolve().parents[1] / "schemas" / "views"
REQUIRED = {
    "patient",
    "encounter",
    "observation",
    "condition",
    "medication_request",
    "allergy_intolerance",
    "immunization",
    "procedure",
    "diagnostic_report",
}

# Views with one row per resource and coded columns: each gets a views.<name>_coding.
CODING_VIEWS = {
    "allergy_intolerance",
    "condition",
    "diagnostic_report",
    "encounter",
    "immunization",
    "medication_request",
    "observation",
    "patient",
    "procedure",
}
US_CORE = "http://hl7.org/fhir/us/core/StructureDefinition/"
OMB = "urn:oid:2.16.840.1.113883.6.238"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"

PATIENTS = [
    {
        "resourceType": "Patient",
        "id": "pt-1",
        "meta": {"lastUpdated": "2024-05-01T12:00:00Z"},
        "active": True,
        "gender": "female",
        "birthDate": "1961-04-12",
        "deceasedDateTime": "2023-11-02T08:15:00-05:00",
        "name": [
            {"use": "usual", "family": "Nakamura", "given": ["Keiko"]},
            {"use": "official", "family": "Nakamura-Lee", "given": ["Keiko", "Ann"]},
        ],
        "identifier": [
            {
                "type": {"coding": [{"system": V2_0203, "code": "SS"}]},
                "system": "http://hl7.org/fhir/sid/us-ssn",
                "value": "999-11-2222",
            },
            {
                "use": "usual",
                "type": {"coding": [{"system": V2_0203, "code": "MR"}], "text": "MRN"},
                "system": "urn:oid:1.2.840.114350.1",
                "value": "E100234",
            },
        ],
        "address": [
            {"use": "work", "city": "Springfield", "state": "IL"},
            {"use": "home", "city": "Riverton", "state": "WY", "postalCode": "82501", "country": "US"},
        ],
        "maritalStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
                    "code": "W",
                    "display": "Widowed",
                }
            ],
            "text": "Widowed",
        },
        "extension": [
            {
                "url": US_CORE + "us-core-race",
                "extension": [
                    {
                        "url": "ombCategory",
                        "valueCoding": {"system": OMB, "code": "2028-9", "display": "Asian"},
                    }
                ],
            },
            {
                "url": US_CORE + "us-core-ethnicity",
                "extension": [{"url": "ombCategory", "valueCoding": {"system": OMB, "code": "2186-5"}}],
            },
            {"url": US_CORE + "us-core-birthsex", "valueCode": "F"},
        ],
        "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "ja"}]}}],
        "managingOrganization": {"reference": "Organization/org-7"},
    },
    {
        "resourceType": "Patient",
        "id": "pt-2",
        "gender": "male",
        "birthDate": "1990",
        "deceasedBoolean": False,
        "name": [{"family": "Silva", "given": ["João", "Pedro"]}],
        "identifier": [{"system": "urn:legacy-ehr:patient", "value": "L-77"}],
        "address": [{"city": "Fall River", "state": "MA"}],
    },
]
ENCOUNTERS = [
    {
        "resourceType": "Encounter",
        "id": "enc-1",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "type": [
            {
                "coding": [{"system": SNOMED, "code": "32485007", "display": "Hospital admission"}],
                "text": "Admission",
            }
        ],
        "subject": {"reference": "Patient/pt-1"},
        "participant": [{"individual": {"reference": "Practitioner/pr-3"}}],
        "period": {"start": "2023-10-28T22:10:00-05:00", "end": "2023-11-02T08:15:00-05:00"},
        "reasonCode": [{"coding": [{"system": SNOMED, "code": "233604007", "display": "Pneumonia"}]}],
        "hospitalization": {"dischargeDisposition": {"coding": [{"code": "exp"}]}},
        "location": [{"location": {"reference": "Location/loc-2"}}],
        "serviceProvider": {"reference": "Organization/org-7"},
    },
]
OBSERVATIONS = [
    {
        "resourceType": "Observation",
        "id": "obs-1",
        "status": "final",
        "category": [{"coding": [{"code": "laboratory"}]}],
        "code": {"coding": [{"system": LOINC, "code": "2345-7", "display": "Glucose"}], "text": "Glucose"},
        "subject": {"reference": "Patient/pt-1"},
        "encounter": {"reference": "Encounter/enc-1"},
        "effectiveDateTime": "2023-10-29T06:00:00-05:00",
        "issued": "2023-10-29T07:12:00.000-05:00",
        "valueQuantity": {"value": 7.2, "unit": "mmol/L", "system": UCUM, "code": "mmol/L"},
        "interpretation": [{"coding": [{"code": "H"}]}],
    },
    {
        "resourceType": "Observation",
        "id": "obs-2",
        "status": "final",
        "category": [{"coding": [{"code": "vital-signs"}]}],
        "code": {"coding": [{"system": LOINC, "code": "85354-9", "display": "Blood pressure panel"}]},
        "subject": {"reference": "Patient/pt-1"},
        "effectivePeriod": {"start": "2023-10-29T08:00:00-05:00", "end": "2023-10-29T08:05:00-05:00"},
        "component": [
            {
                "code": {"coding": [{"system": LOINC, "code": "8480-6", "display": "Systolic"}]},
                "valueQuantity": {"value": 142, "unit": "mm[Hg]"},
            },
            {
                "code": {"coding": [{"system": LOINC, "code": "8462-4", "display": "Diastolic"}]},
                "valueQuantity": {"value": 91, "unit": "mm[Hg]"},
            },
        ],
    },
    {
        "resourceType": "Observation",
        "id": "obs-3",
        "status": "amended",
        "code": {"coding": [{"system": LOINC, "code": "72166-2"}], "text": "Tobacco smoking status"},
        "subject": {"reference": "Patient/pt-2"},
        "effectiveDateTime": "2024-01-15",
        "valueCodeableConcept": {
            "coding": [{"system": SNOMED, "code": "266919005", "display": "Never smoked"}]
        },
    },
]
CONDITIONS = [
    {
        "resourceType": "Condition",
        "id": "cond-1",
        "clinicalStatus": {"coding": [{"code": "resolved"}]},
        "verificationStatus": {"coding": [{"code": "confirmed"}]},
        "category": [{"coding": [{"code": "encounter-diagnosis"}]}],
        "code": {
            "coding": [{"system": SNOMED, "code": "233604007", "display": "Pneumonia"}],
            "text": "Pneumonia",
        },
        "subject": {"reference": "Patient/pt-1"},
        "encounter": {"reference": "Encounter/enc-1"},
        "onsetDateTime": "2023-10-27",
        "abatementDateTime": "2023-11-01",
        "recordedDate": "2023-10-28T23:00:00-05:00",
    },
]
MEDICATION_REQUESTS = [
    {
        "resourceType": "MedicationRequest",
        "id": "mr-1",
        "status": "completed",
        "intent": "order",
        "category": [{"coding": [{"code": "inpatient"}]}],
        "medicationCodeableConcept": {
            "coding": [
                {
                    "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                    "code": "1659149",
                    "display": "piperacillin / tazobactam",
                }
            ],
            "text": "Pip/Tazo",
        },
        "subject": {"reference": "Patient/pt-1"},
        "encounter": {"reference": "Encounter/enc-1"},
        "authoredOn": "2023-10-28T23:30:00-05:00",
        "requester": {"reference": "Practitioner/pr-3"},
        "reasonReference": [{"reference": "Condition/cond-1"}],
        "dosageInstruction": [
            {"text": "4.5 g IV every 6 hours", "doseAndRate": [{"doseQuantity": {"value": 4.5, "unit": "g"}}]}
        ],
    },
    {
        "resourceType": "MedicationRequest",
        "id": "mr-2",
        "status": "active",
        "intent": "plan",
        "medicationReference": {"reference": "Medication/med-5"},
        "subject": {"reference": "Patient/pt-2"},
        "reasonCode": [{"coding": [{"system": SNOMED, "code": "38341003"}]}],
    },
]
ALLERGIES = [
    {
        "resourceType": "AllergyIntolerance",
        "id": "ai-1",
        "clinicalStatus": {"coding": [{"code": "active"}]},
        "verificationStatus": {"coding": [{"code": "confirmed"}]},
        "type": "allergy",
        "category": ["medication"],
        "criticality": "high",
        "code": {
            "coding": [
                {
                    "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                    "code": "7980",
                    "display": "Penicillin G",
                }
            ]
        },
        "patient": {"reference": "Patient/pt-1"},
        "onsetDateTime": "1985",
        "recordedDate": "2010-06-01",
        "reaction": [
            {
                "manifestation": [
                    {"coding": [{"system": SNOMED, "code": "39579001", "display": "Anaphylaxis"}]}
                ],
                "severity": "severe",
            }
        ],
    },
]
IMMUNIZATIONS = [
    {
        "resourceType": "Immunization",
        "id": "imm-1",
        "status": "completed",
        "vaccineCode": {
            "coding": [
                {"system": "http://hl7.org/fhir/sid/cvx", "code": "140", "display": "Influenza, seasonal"}
            ],
            "text": "Flu shot",
        },
        "patient": {"reference": "Patient/pt-2"},
        "occurrenceDateTime": "2023-09-30",
        "primarySource": True,
        "lotNumber": "FLU-2023-A17",
        "location": {"reference": "Location/loc-2"},
    },
]
PROCEDURES = [
    {
        "resourceType": "Procedure",
        "id": "proc-1",
        "status": "completed",
        "code": {
            "coding": [{"system": SNOMED, "code": "40701008", "display": "Echocardiography"}],
            "text": "Echo",
        },
        "subject": {"reference": "Patient/pt-1"},
        "encounter": {"reference": "Encounter/enc-1"},
        "performedPeriod": {"start": "2023-10-30T10:00:00-05:00", "end": "2023-10-30T10:40:00-05:00"},
        "reasonReference": [{"reference": "Condition/cond-1"}],
        "location": {"reference": "Location/loc-2"},
    },
]
REPORTS = [
    {
        "resourceType": "DiagnosticReport",
        "id": "dr-1",
        "status": "final",
        "category": [{"coding": [{"code": "LAB"}]}],
        "code": {"coding": [{"system": LOINC, "code": "24323-8", "display": "Metabolic panel"}]},
        "subject": {"reference": "Patient/pt-1"},
        "encounter": {"reference": "Encounter/enc-1"},
        "effectiveDateTime": "2023-10-29T06:00:00-05:00",
        "issued": "2023-10-29T07:15:00.000-05:00",
        "performer": [{"reference": "Organization/org-7"}],
        "result": [{"reference": "Observation/obs-1"}, {"reference": "Observation/obs-2"}],
        "conclusion": "Hyperglycaemia.",
    },
]
ALL = (
    PATIENTS
    + ENCOUNTERS
    + OBSERVATIONS
    + CONDITIONS
    + MEDICATION_REQUESTS
    + ALLERGIES
    + IMMUNIZATIONS
    + PROCEDURES
    + REPORTS
)


EXPECTED = {
    "allergy_intolerance": [
        {
            "id": "ai-1",
            "patient_id": "pt-1",
            "clinical_status": "active",
            "verification_status": "confirmed",
            "type": "allergy",
            "category": "medication",
            "criticality": "high",
            "code_system": "http://www.nlm.nih.gov/research/umls/rxnorm",
            "code": "7980",
            "code_display": "Penicillin G",
            "onset_date_time": "1985-01-01T00:00:00Z",
            "onset_date_time_precision": "year",
            "recorded_date": "2010-06-01T00:00:00Z",
            "recorded_date_precision": "day",
            "reaction_manifestation_code": "39579001",
            "reaction_manifestation_display": "Anaphylaxis",
            "reaction_severity": "severe",
        }
    ],
    "condition": [
        {
            "id": "cond-1",
            "patient_id": "pt-1",
            "encounter_id": "enc-1",
            "clinical_status": "resolved",
            "verification_status": "confirmed",
            "category_code": "encounter-diagnosis",
            "code_system": "http://snomed.info/sct",
            "code": "233604007",
            "code_display": "Pneumonia",
            "code_text": "Pneumonia",
            "onset_date_time": "2023-10-27T00:00:00Z",
            "onset_date_time_precision": "day",
            "abatement_date_time": "2023-11-01T00:00:00Z",
            "abatement_date_time_precision": "day",
            "recorded_date": "2023-10-29T04:00:00Z",
            "recorded_date_precision": "time",
        }
    ],
    "diagnostic_report": [
        {
            "id": "dr-1",
            "patient_id": "pt-1",
            "encounter_id": "enc-1",
            "status": "final",
            "category_code": "LAB",
            "code_system": "http://loinc.org",
            "code": "24323-8",
            "code_display": "Metabolic panel",
            "effective_date_time": "2023-10-29T11:00:00Z",
            "effective_date_time_precision": "time",
            "issued": "2023-10-29T12:15:00Z",
            "performer_reference": "Organization/org-7",
            "result_count": 2,
            "conclusion": "Hyperglycaemia.",
        }
    ],
    "diagnostic_report_result": [
        {
            "diagnostic_report_id": "dr-1",
            "patient_id": "pt-1",
            "result_index": 0,
            "observation_id": "obs-1",
            "reference": "Observation/obs-1",
        },
        {
            "diagnostic_report_id": "dr-1",
            "patient_id": "pt-1",
            "result_index": 1,
            "observation_id": "obs-2",
            "reference": "Observation/obs-2",
        },
    ],
    "encounter": [
        {
            "id": "enc-1",
            "patient_id": "pt-1",
            "status": "finished",
            "class_system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "class_code": "IMP",
            "type_system": "http://snomed.info/sct",
            "type_code": "32485007",
            "type_display": "Hospital admission",
            "type_text": "Admission",
            "period_start": "2023-10-29T03:10:00Z",
            "period_start_precision": "time",
            "period_end": "2023-11-02T13:15:00Z",
            "period_end_precision": "time",
            "reason_code": "233604007",
            "reason_display": "Pneumonia",
            "practitioner_reference": "Practitioner/pr-3",
            "location_reference": "Location/loc-2",
            "service_provider_id": "org-7",
            "discharge_disposition_code": "exp",
        }
    ],
    "immunization": [
        {
            "id": "imm-1",
            "patient_id": "pt-2",
            "status": "completed",
            "vaccine_system": "http://hl7.org/fhir/sid/cvx",
            "vaccine_code": "140",
            "vaccine_display": "Influenza, seasonal",
            "vaccine_text": "Flu shot",
            "occurrence_date_time": "2023-09-30T00:00:00Z",
            "occurrence_date_time_precision": "day",
            "primary_source": True,
            "lot_number": "FLU-2023-A17",
            "location_reference": "Location/loc-2",
        }
    ],
    "medication_request": [
        {
            "id": "mr-1",
            "patient_id": "pt-1",
            "encounter_id": "enc-1",
            "status": "completed",
            "intent": "order",
            "category_code": "inpatient",
            "medication_system": "http://www.nlm.nih.gov/research/umls/rxnorm",
            "medication_code": "1659149",
            "medication_display": "piperacillin / tazobactam",
            "medication_text": "Pip/Tazo",
            "authored_on": "2023-10-29T04:30:00Z",
            "authored_on_precision": "time",
            "requester_reference": "Practitioner/pr-3",
            "reason_condition_id": "cond-1",
            "dosage_text": "4.5 g IV every 6 hours",
            "dose_quantity_value": Decimal("4.5"),
            "dose_quantity_unit": "g",
        },
        {
            "id": "mr-2",
            "patient_id": "pt-2",
            "status": "active",
            "intent": "plan",
            "medication_id": "med-5",
            "reason_code": "38341003",
        },
    ],
    "observation": [
        {
            "id": "obs-1",
            "patient_id": "pt-1",
            "encounter_id": "enc-1",
            "status": "final",
            "category_code": "laboratory",
            "code_system": "http://loinc.org",
            "code": "2345-7",
            "code_display": "Glucose",
            "code_text": "Glucose",
            "effective_date_time": "2023-10-29T11:00:00Z",
            "effective_date_time_precision": "time",
            "issued": "2023-10-29T12:12:00Z",
            "value_quantity_value": Decimal("7.2"),
            "value_quantity_unit": "mmol/L",
            "value_quantity_system": "http://unitsofmeasure.org",
            "value_quantity_code": "mmol/L",
            "interpretation_code": "H",
            "component_count": 0,
        },
        {
            "id": "obs-2",
            "patient_id": "pt-1",
            "status": "final",
            "category_code": "vital-signs",
            "code_system": "http://loinc.org",
            "code": "85354-9",
            "code_display": "Blood pressure panel",
            "effective_period_start": "2023-10-29T13:00:00Z",
            "effective_period_start_precision": "time",
            "effective_period_end": "2023-10-29T13:05:00Z",
            "effective_period_end_precision": "time",
            "component_count": 2,
        },
        {
            "id": "obs-3",
            "patient_id": "pt-2",
            "status": "amended",
            "code_system": "http://loinc.org",
            "code": "72166-2",
            "code_text": "Tobacco smoking status",
            "effective_date_time": "2024-01-15T00:00:00Z",
            "effective_date_time_precision": "day",
            "value_codeable_concept_system": "http://snomed.info/sct",
            "value_codeable_concept_code": "266919005",
            "value_codeable_concept_display": "Never smoked",
            "component_count": 0,
        },
    ],
    "observation_component": [
        {
            "observation_id": "obs-2",
            "patient_id": "pt-1",
            "component_index": 0,
            "code_system": "http://loinc.org",
            "code": "8480-6",
            "code_display": "Systolic",
            "value_quantity_value": Decimal("142.0"),
            "value_quantity_unit": "mm[Hg]",
        },
        {
            "observation_id": "obs-2",
            "patient_id": "pt-1",
            "component_index": 1,
            "code_system": "http://loinc.org",
            "code": "8462-4",
            "code_display": "Diastolic",
            "value_quantity_value": Decimal("91.0"),
            "value_quantity_unit": "mm[Hg]",
        },
    ],
    "patient": [
        {
            "id": "pt-1",
            "active": True,
            "gender": "female",
            "birth_date": "1961-04-12",
            "birth_date_precision": "day",
            "deceased": True,
            "deceased_date_time": "2023-11-02T13:15:00Z",
            "deceased_date_time_precision": "time",
            "family": "Nakamura-Lee",
            "given": "Keiko Ann",
            "mrn_system": "urn:oid:1.2.840.114350.1",
            "mrn_value": "E100234",
            "address_city": "Riverton",
            "address_state": "WY",
            "address_postal_code": "82501",
            "address_country": "US",
            "marital_status_system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
            "marital_status_code": "W",
            "marital_status_display": "Widowed",
            "marital_status_text": "Widowed",
            "race_code": "2028-9",
            "ethnicity_code": "2186-5",
            "birth_sex": "F",
            "language_code": "ja",
            "managing_organization_id": "org-7",
            "last_updated": "2024-05-01T12:00:00Z",
        },
        {
            "id": "pt-2",
            "gender": "male",
            "birth_date": "1990-01-01",
            "birth_date_precision": "year",
            "deceased": False,
            "family": "Silva",
            "given": "João Pedro",
            "mrn_system": "urn:legacy-ehr:patient",
            "mrn_value": "L-77",
            "address_city": "Fall River",
            "address_state": "MA",
        },
    ],
    "patient_identifier": [
        {
            "patient_id": "pt-1",
            "identifier_index": 0,
            "type_code": "SS",
            "system": "http://hl7.org/fhir/sid/us-ssn",
            "value": "999-11-2222",
        },
        {
            "patient_id": "pt-1",
            "identifier_index": 1,
            "use": "usual",
            "type_code": "MR",
            "type_text": "MRN",
            "system": "urn:oid:1.2.840.114350.1",
            "value": "E100234",
        },
        {"patient_id": "pt-2", "identifier_index": 0, "system": "urn:legacy-ehr:patient", "value": "L-77"},
    ],
    "procedure": [
        {
            "id": "proc-1",
            "patient_id": "pt-1",
            "encounter_id": "enc-1",
            "status": "completed",
            "code_system": "http://snomed.info/sct",
            "code": "40701008",
            "code_display": "Echocardiography",
            "code_text": "Echo",
            "performed_period_start": "2023-10-30T15:00:00Z",
            "performed_period_start_precision": "time",
            "performed_period_end": "2023-10-30T15:40:00Z",
            "performed_period_end_precision": "time",
            "reason_condition_id": "cond-1",
            "location_reference": "Location/loc-2",
        }
    ],
}


def warehouse(resources: list[dict]) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    con.execute("CREATE SCHEMA fhir")
    for kind in sorted({r["resourceType"] for r in resources}):
        con.execute(f'CREATE TABLE fhir."{kind}" (id VARCHAR NOT NULL, resource JSON NOT NULL)')
        rows = [(r["id"], orjson.dumps(r).decode()) for r in resources if r["resourceType"] == kind]
        con.executemany(f'INSERT INTO fhir."{kind}" VALUES (?, ?)', rows)
    return con


def table(con: duckdb.DuckDBPyConnection, name: str) -> list[dict]:
    """Rows of views.<name>, ordered, with NULL columns left out for readability; instants shown in UTC
    as ISO text, dates as ISO text."""
    cursor = con.execute(f'SELECT * FROM views."{name}" ORDER BY ALL')
    names = [d[0] for d in cursor.description]
    return [
        {k: _text(v) for k, v in zip(names, row, strict=True) if v is not None} for row in cursor.fetchall()
    ]


def _text(value: object) -> object:
    if isinstance(value, datetime):
        utc = value.astimezone(UTC)
        fraction = f".{utc.microsecond:06d}".rstrip("0") if utc.microsecond else ""
        return utc.strftime("%Y-%m-%dT%H:%M:%S") + fraction + "Z"
    if isinstance(value, date):
        return value.isoformat()
    return value


def columns(con: duckdb.DuckDBPyConnection, name: str) -> list[tuple[str, str]]:
    return [(r[0], r[1]) for r in con.execute(f'DESCRIBE views."{name}"').fetchall()]


def declared(name: str) -> list[str]:
    """The declared columns, each tagged coded column followed by its four standard columns and each
    partial-date column by its precision."""
    view = json.loads((VIEWS / f"{name}.json").read_text())
    coded, groups = with_codings(view)
    return [c.name for c in columns_of(view, compile_view(coded), groups)]


def test_production_views_are_well_formed():
    files = sorted(VIEWS.glob("*.json"))
    names = {p.stem for p in files}
    assert not REQUIRED - names, "missing required views"
    for path in files:
        view = json.loads(path.read_text())
        assert view["resourceType"] == "ViewDefinition"
        assert view["status"] == "active"
        assert view["name"] == path.stem
        compiled = compile_view(view)
        assert all(sql_type for _, sql_type, _ in compiled.columns)
        for node in view["select"]:
            for column in node.get("column", []):
                assert column.get("type"), f"{path.name}: column {column['name']} has no type"


def test_materialized_rows():
    con = warehouse(ALL)
    counts = materialize_views(con, VIEWS)
    assert {k: n for k, n in counts.items() if not k.endswith("_coding")} == {
        name: len(rows) for name, rows in EXPECTED.items()
    }
    assert set(counts) - set(EXPECTED) == {f"{n}_coding" for n in CODING_VIEWS}
    for name, rows in EXPECTED.items():
        assert [c for c, _ in columns(con, name)] == declared(name)
        assert table(con, name) == rows, name


def test_main_views_keep_one_row_per_resource():
    con = warehouse(ALL)
    materialize_views(con, VIEWS)
    for name in REQUIRED:
        kind = json.loads((VIEWS / f"{name}.json").read_text())["resource"]
        total = con.execute(f'SELECT count(*), count(DISTINCT id) FROM views."{name}"').fetchall()[0]
        assert total[0] == total[1] == sum(r["resourceType"] == kind for r in ALL)


def test_missing_resource_tables_give_empty_typed_views():
    full = warehouse(ALL)
    materialize_views(full, VIEWS)
    empty = duckdb.connect(":memory:")
    counts = materialize_views(empty, VIEWS)
    assert counts == dict.fromkeys([*EXPECTED, *(f"{n}_coding" for n in CODING_VIEWS)], 0)
    for name in EXPECTED:
        assert columns(empty, name) == columns(full, name), name
    assert dict(columns(empty, "observation"))["value_quantity_value"] == "DECIMAL(38,10)"
    assert dict(columns(empty, "observation"))["component_count"] == "BIGINT"
    assert dict(columns(empty, "patient"))["deceased"] == "BOOLEAN"
    assert dict(columns(empty, "patient"))["birth_date"] == "DATE"
    assert dict(columns(empty, "patient"))["birth_date_precision"] == "VARCHAR"
    assert dict(columns(empty, "observation"))["issued"] == "TIMESTAMP WITH TIME ZONE"


def test_rematerializing_replaces_tables():
    con = warehouse(ALL)
    first = materialize_views(con, VIEWS)
    con.execute("DELETE FROM fhir.\"Patient\" WHERE id = 'pt-2'")
    second = materialize_views(con, VIEWS)
    assert second == {
        **first,
        "patient": 1,
        "patient_identifier": 2,
        "patient_coding": 2,
    }  # pt-1: marital status, language


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("x; DROP TABLE fhir.Patient", "safe SQL identifier"),
        ("1st", "safe SQL identifier"),
        (None, "identifier"),
    ],
)
def test_unsafe_view_names_are_rejected_before_anything_runs(tmp_path: Path, name: object, message: str):
    view = {
        "resourceType": "ViewDefinition",
        "resource": "Patient",
        "select": [{"column": [{"name": "id", "path": "id"}]}],
    }
    (tmp_path / "ok.json").write_text(json.dumps({**view, "name": "ok"}))
    (tmp_path / "bad.json").write_text(json.dumps({**view, "name": name}))
    con = warehouse(ALL)
    with pytest.raises(ViewDefinitionError, match=message):
        materialize_views(con, tmp_path)
    assert con.execute(
        "SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'views'"
    ).fetchall() == [(0,)]


def test_duplicate_view_names_are_rejected(tmp_path: Path):
    view = {"resource": "Patient", "name": "same", "select": [{"column": [{"name": "id", "path": "id"}]}]}
    for stem in ("a", "b"):
        (tmp_path / f"{stem}.json").write_text(json.dumps(view))
    with pytest.raises(ViewDefinitionError, match="also used by"):
        materialize_views(duckdb.connect(), tmp_path)

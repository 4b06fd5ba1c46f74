"""Small resources for the HL7 back-load tests: one patient with a result, an immunization, a document."""

from __future__ import annotations

import base64

OID = "urn:oid:2.16.840.1.113883.3.9999.1"


def _result(oid: str, loinc: str, display: str, **rest: object) -> dict:
    """A final Observation of the merged patient p0 (sent under its survivor), coded in LOINC."""
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": loinc, "display": display}]},
        "subject": {"reference": "Patient/p0"},
        **rest,
    }


def resources() -> list[dict]:
    pat = {
        "resourceType": "Patient",
        "id": "p1",
        "identifier": [{"system": OID, "value": "MRN|001", "type": {"coding": [{"code": "MR"}]}}],
        "name": [{"use": "official", "family": "O'Brien^Smith", "given": ["Ann", "Marie"]}],
        "gender": "female",
        "birthDate": "1980-02-29",
        "address": [
            {"use": "home", "line": ["1 Main St & 2nd"], "city": "Denver", "state": "CO", "country": "US"}
        ],
        "telecom": [{"system": "phone", "value": "303-555-0100", "use": "home"}],
        "maritalStatus": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "M"}]
        },
    }
    merged = {
        "resourceType": "Patient",
        "id": "p0",
        "identifier": [{"system": OID, "value": "OLD-1"}],
        "name": [{"family": "Old"}],
        "link": [{"other": {"reference": "Patient/p1"}, "type": "replaced-by"}],
    }
    enc = {
        "resourceType": "Encounter",
        "id": "e1",
        "identifier": [{"system": "urn:oid:2.16.840.1.113883.3.9999.2", "value": "V1"}],
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": "Patient/p1"},
        "period": {"start": "2024-01-02T09:00:00-05:00", "end": "2024-01-02T10:00:00-05:00"},
    }
    high = [
        {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "H"}
            ]
        }
    ]
    glucose = {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {
            "coding": [
                {"system": "http://loinc.org", "code": "2345-7", "display": "Glucose"},
                {
                    "system": "https://fhir.cerner.com/t1/codeSet/72",
                    "code": "2700655",
                    "display": "Glucose Lvl",
                },
            ]
        },
        "subject": {"reference": "Patient/p0"},
        "effectiveDateTime": "2024-01-02T09:30:00-05:00",
        "valueQuantity": {
            "value": 105.5,
            "unit": "mg/dL",
            "system": "http://unitsofmeasure.org",
            "code": "mg/dL",
        },
        "referenceRange": [{"low": {"value": 70}, "high": {"value": 99}}],
        "interpretation": high,
        "note": [{"text": "fasting ~8h\nrepeat"}],
    }
    comment = _result("o2", "8251-1", "Service comment", valueString="see A|B")
    mmhg = {"unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}
    # A panel without a value of its own: its components go as OBX-4 3.1, 3.2, 3.3.
    pressure = _result("o3", "85354-9", "Blood pressure", effectiveDateTime="2024-01-02T09:35:00-05:00")
    pressure["component"] = [
        {
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6", "display": "Systolic"}]},
            "valueQuantity": {"value": 142, **mmhg},
            "referenceRange": [{"high": {"value": 120}}],
            "interpretation": high,
        },
        {
            "code": {"coding": [{"system": "http://loinc.org", "code": "8462-4", "display": "Diastolic"}]},
            "valueQuantity": {"value": 91.0, **mmhg},
        },
        {
            "code": {"coding": [{"system": "http://loinc.org", "code": "8478-0", "display": "Mean"}]},
            "dataAbsentReason": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
                        "code": "not-performed",
                    }
                ]
            },
        },
    ]
    report = {
        "resourceType": "DiagnosticReport",
        "id": "r1",
        "identifier": [
            {
                "system": "urn:oid:2.16.840.1.113883.3.9999.5",
                "value": "F-100",
                "type": {"coding": [{"code": "FILL"}]},
            }
        ],
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "CH"}]}],
        "code": {
            "coding": [
                {"system": "http://loinc.org", "code": "24323-8", "display": "Comprehensive metabolic panel"}
            ]
        },
        "subject": {"reference": "Patient/p0"},  # the merged patient: sent under its survivor
        "encounter": {"reference": "Encounter/e1"},
        "effectiveDateTime": "2024-01-02T09:30:00-05:00",
        "issued": "2024-01-02T11:00:00-05:00",
        "result": [
            {"reference": "Observation/o1"},
            {"reference": "Observation/o2"},
            {"reference": "Observation/o3"},
        ],
    }
    given = {
        "resourceType": "Immunization",
        "id": "i1",
        "identifier": [{"system": "urn:oid:2.16.840.1.113883.3.9999.6", "value": "IMM-1"}],
        "status": "completed",
        "vaccineCode": {
            "coding": [
                {"system": "http://hl7.org/fhir/sid/cvx", "code": "140", "display": "Influenza, seasonal"}
            ]
        },
        "patient": {"reference": "Patient/p1"},
        "occurrenceDateTime": "2023-10-01T10:00:00-04:00",
        "primarySource": False,
        "lotNumber": "LOT-9",
        "doseQuantity": {"value": 0.5, "unit": "mL", "system": "http://unitsofmeasure.org", "code": "mL"},
        "route": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0162", "code": "IM"}]},
    }
    refused = {
        "resourceType": "Immunization",
        "id": "i2",
        "status": "not-done",
        "statusReason": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                    "code": "PATOBJ",
                    "display": "patient objection",
                }
            ]
        },
        "vaccineCode": {
            "coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "08", "display": "Hep B"}]
        },
        "patient": {"reference": "Patient/p1"},
        "occurrenceDateTime": "2023-11-01",
    }
    note = "Discharge summary\nStable; follow up in 2 weeks."
    doc = {
        "resourceType": "DocumentReference",
        "id": "d1",
        "masterIdentifier": {"system": "urn:oid:2.16.840.1.113883.3.9999.7", "value": "DOC-1"},
        "status": "current",
        "docStatus": "final",
        "type": {
            "coding": [{"system": "http://loinc.org", "code": "18842-5", "display": "Discharge summary"}]
        },
        "subject": {"reference": "Patient/p1"},
        "date": "2024-01-03T08:00:00-05:00",
        "content": [
            {"attachment": {"contentType": "text/plain", "data": base64.b64encode(note.encode()).decode()}}
        ],
    }
    return [pat, merged, enc, glucose, comment, pressure, report, given, refused, doc]

"""A deliberately corrupted batch ("bad input") for demos and tests of the data-quality gate.

Every record here is well-formed FHIR that converts and loads; what is wrong is what validation must
catch: a date in the future, an impossible vital sign, a reference to a patient that does not exist,
an encounter reference that resolves nowhere, an event before the patient's birth, a status outside
its value set, a unit outside UCUM, codes from a local system no crosswalk maps, and two versions of
one patient id that disagree (the merge quarantines those). Invented data: no real patient.
"""

from __future__ import annotations

from pathlib import Path

import orjson

CORRUPT_DIR = "sources/corrupt"
LOCAL_LAB = "http://corrupt-lab.example.org/codes"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"


def _patient(pid: str, mrn: str, family: str, birth: str) -> dict:
    return {
        "resourceType": "Patient",
        "id": pid,
        "identifier": [{"system": "urn:corrupt-demo:mrn", "value": mrn}],
        "name": [{"family": family, "given": ["Test"]}],
        "gender": "female",
        "birthDate": birth,
    }


def _observation(oid: str, pid: str, code: tuple[str, str], when: str, value=None, **extra) -> dict:
    out = {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": code[0], "code": code[1]}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": when,
    }
    if value is not None:
        out["valueQuantity"] = value
    out.update(extra)
    return out


def corrupt_resources() -> dict[str, list[dict]]:
    """Resources per type, in file order; every defect is commented with the expectation it trips."""
    hr = (LOINC, "8867-4")
    patients = [
        _patient("corrupt-p1", "CX-1", "Alpha", "1990-03-04"),
        _patient("corrupt-p2", "CX-2", "Beta", "1985-07-08"),
        # the same id again with different content and no meta.lastUpdated: quarantined by the merge
        _patient("corrupt-p2", "CX-2", "Gamma", "1985-07-09"),
    ]
    encounters = [
        {
            "resourceType": "Encounter",
            "id": "corrupt-e1",
            # 'done' is not an Encounter.status code: encounter.status_in_value_set
            "status": "done",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": "Patient/corrupt-p1"},
            "period": {"start": "2021-02-03T09:00:00Z", "end": "2021-02-03T10:00:00Z"},
        }
    ]
    bpm = {"value": 72, "unit": "/min", "system": UCUM, "code": "/min"}
    observations = [
        # observation.effective_not_in_future
        _observation("corrupt-o1", "corrupt-p1", hr, "2999-01-01T00:00:00Z", bpm),
        # observation.value_not_above_physiologic_maximum: 900 beats per minute
        _observation("corrupt-o2", "corrupt-p1", hr, "2021-02-03T09:10:00Z", {**bpm, "value": 900}),
        # observation.effective_not_before_birth: measured in 1970, born 1990
        _observation("corrupt-o3", "corrupt-p1", hr, "1970-01-01T00:00:00Z", bpm),
        # observation.encounter_id_resolves: the encounter was never exported
        _observation(
            "corrupt-o4",
            "corrupt-p1",
            hr,
            "2021-02-03T09:20:00Z",
            bpm,
            encounter={"reference": "Encounter/never-exported"},
        ),
        # observation.value_quantity_system_is_ucum (warning): a local unit system
        _observation(
            "corrupt-o5",
            "corrupt-p2",
            (LOCAL_LAB, "GLU-LOCAL"),
            "2021-02-03T09:30:00Z",
            {"value": 5.4, "unit": "mmol per litre", "system": "http://corrupt-lab.example.org/units"},
        ),
        # local lab codes that no crosswalk maps: mapping_coverage.unmapped_share_within_threshold
        *(
            _observation(f"corrupt-o{6 + i}", "corrupt-p2", (LOCAL_LAB, f"LOC-{i}"), "2021-02-03T09:40:00Z")
            for i in range(4)
        ),
    ]
    conditions = [
        {
            "resourceType": "Condition",
            "id": "corrupt-c1",
            "clinicalStatus": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}
                ]
            },
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]},
            # condition.patient_id_resolves: nobody has this id
            "subject": {"reference": "Patient/not-in-this-export"},
            "onsetDateTime": "2019-05-06",
        }
    ]
    return {
        "Patient": patients,
        "Encounter": encounters,
        "Observation": observations,
        "Condition": conditions,
    }


def write_corrupt_sources(out_dir: Path | str) -> list[Path]:
    """Write the corrupted batch as NDJSON under <out_dir>/sources/corrupt/; returns the files."""
    folder = Path(out_dir) / CORRUPT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for rtype, resources in corrupt_resources().items():
        path = folder / f"{rtype}.corrupt.ndjson"
        path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in resources))
        written.append(path)
    return written

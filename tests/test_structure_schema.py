"""Structural validation on the R4 JSON Schema generated from R4's StructureDefinitions (jsonschema-rs)."""

from __future__ import annotations

import orjson
import pytest

from pipelines.quality import r4schema, structure

pytestmark = pytest.mark.skipif(
    r4schema.definitions_dir() is None, reason="FHIR R4 definitions not installed (make setup installs them)"
)

OBS = {
    "resourceType": "Observation",
    "id": "o1",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
    "effectiveDateTime": "2020-05-05T10:11:12Z",
    "valueQuantity": {"value": 70, "unit": "/min"},
}
MED = {
    "resourceType": "MedicationRequest",
    "status": "active",
    "intent": "order",
    "subject": {"reference": "Patient/p1"},
    "medicationCodeableConcept": {"text": "x"},
}


def _check(rtype: str, resource: dict) -> list[str] | None:
    check = structure._schema_check(rtype)
    assert check is not None
    findings = check(orjson.dumps(resource).decode())
    return sorted(findings) if findings else None


def test_the_schema_covers_every_r4_resource_type():
    schema = r4schema.r4_schema()
    assert schema["x-fhir-version"] == "4.0.1"
    types = schema["x-resource-types"]
    # R4 types that R4B dropped are there too, so they are checked rather than reported as unchecked.
    assert {"Observation", "Patient", "MedicinalProduct", "EffectEvidenceSynthesis"} <= set(types)
    assert len(types) == 146


def test_a_valid_resource_has_no_findings():
    assert _check("Observation", OBS) is None
    assert _check("MedicationRequest", MED) is None


def test_a_required_primitive_is_missing_unless_its_extension_stands_in():
    no_status = {k: v for k, v in OBS.items() if k != "status"}
    assert _check("Observation", no_status) == ["Observation.status: missing"]
    absent = {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason"}]}
    absent["extension"][0]["valueCode"] = "unknown"
    assert _check("Observation", {**no_status, "_status": absent}) is None


def test_a_required_choice_is_named_by_its_element():
    no_med = {k: v for k, v in MED.items() if k != "medicationCodeableConcept"}
    assert _check("MedicationRequest", no_med) == ["MedicationRequest.medication[x]: missing"]
    assert (
        _check("MedicationRequest", {**no_med, "medicationReference": {"reference": "Medication/m"}}) is None
    )


def test_findings_name_paths_and_kinds_never_values():
    bad = {
        **OBS,
        "effectiveDateTime": "2020-13-45",
        "note": [],
        "bogusElement": "secret-value-42",
        "valueQuantity": {"value": "seventy"},
        "component": [{"code": {"text": "c"}, "valueString": 5}],
    }
    findings = _check("Observation", bad)
    assert findings == [
        "Observation.bogusElement: extra_forbidden",
        "Observation.component.valueString: type",
        "Observation.effectiveDateTime: pattern",
        "Observation.note: empty_array",
        "Observation.valueQuantity.value: type",
    ]
    assert not any(v in " ".join(findings) for v in ("2020-13-45", "secret-value-42", "seventy"))


def test_contained_resources_are_checked_against_their_own_type():
    med = {**MED, "contained": [{"resourceType": "Medication", "id": "m", "ingredientz": []}]}
    assert _check("MedicationRequest", med) == ["MedicationRequest.contained.ingredientz: extra_forbidden"]
    unknown = {**MED, "contained": [{"resourceType": "NoSuchType"}]}
    assert _check("MedicationRequest", unknown) == ["MedicationRequest.contained.resourceType: enum"]


def test_a_resource_stored_under_another_type_fails():
    assert _check("Patient", OBS) == [
        "Patient.code: extra_forbidden",
        "Patient.effectiveDateTime: extra_forbidden",
        "Patient.resourceType: const",
        "Patient.status: extra_forbidden",
        "Patient.valueQuantity: extra_forbidden",
    ]


def test_without_definitions_the_check_falls_back_to_the_r4b_models(monkeypatch, tmp_path):
    monkeypatch.setenv(r4schema.DEFINITIONS_ENV, str(tmp_path))
    r4schema.r4_schema.cache_clear()
    try:
        assert r4schema.r4_schema() is None
        check = structure._model_check("Observation")
        no_status = {k: v for k, v in OBS.items() if k != "status"}
        assert check(orjson.dumps(no_status).decode()) == ["Observation.status: missing"]
    finally:
        monkeypatch.delenv(r4schema.DEFINITIONS_ENV)
        r4schema.r4_schema.cache_clear()


def test_a_number_no_double_can_hold_is_a_finding_not_a_crash():
    check = structure._schema_check("Basic")
    assert check is not None
    text = '{"resourceType":"Basic","code":{"text":"x"},"n":' + "9" * 1000 + "}"
    assert check(text) == ["Basic: number_out_of_range"]


def test_megabyte_strings_are_checked_without_handing_them_whole_to_the_validator():
    check = structure._schema_check("Binary")
    assert check is not None
    data = "QUJD" * 3_000_000  # 12 MB of base64
    good = {"resourceType": "Binary", "contentType": "application/pdf", "data": data}
    assert check(orjson.dumps(good).decode()) is None
    # MIME-style line breaks between base64 groups are allowed, as the schema's pattern allows them.
    wrapped = {**good, "data": "\n".join(["QUJD" * 19] * 200_000)}
    assert check(orjson.dumps(wrapped).decode()) is None
    bad = {**good, "data": data + "!!!!"}  # not base64, past the prefix the validator sees
    assert check(orjson.dumps(bad).decode()) == ["Binary.data: pattern"]
    not_base64 = {**good, "data": "!!!!" + data}  # within the prefix: the validator's own finding
    assert check(orjson.dumps(not_base64).decode()) == ["Binary.data: pattern"]


def _whole_schema_findings(rtype: str, resource: dict) -> list[str] | None:
    """What the check found when every R4 type was compiled into one validator (the reference)."""
    import jsonschema_rs

    schema = r4schema.r4_schema()
    root = {
        "$schema": schema["$schema"],
        "$defs": schema["$defs"],
        "type": "object",
        "properties": {t: {"$ref": f"#/$defs/{t}"} for t in schema["x-resource-types"]},
    }
    validator = jsonschema_rs.validator_for(root, pattern_options=jsonschema_rs.RegexOptions())
    doc = {rtype: resource}
    found = [f for e in validator.iter_errors(doc) for f in structure._schema_findings(rtype, e)]
    return found or None


NESTED = [
    ("Observation", OBS),
    (
        "MedicationRequest",
        {**MED, "contained": [{"resourceType": "Medication", "id": "m", "ingredientz": []}]},
    ),
    ("MedicationRequest", {**MED, "contained": [{"resourceType": "NoSuchType"}, {"id": "no-type"}]}),
    (
        "Bundle",
        {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [
                {"resource": {**OBS, "status": 7}},
                {"resource": {"resourceType": "Patient", "gender": [], "contained": [{**MED, "intent": 1}]}},
                {"resource": {"resourceType": "Bundle", "type": "batch", "entry": [{"resource": {"x": 1}}]}},
            ],
        },
    ),
    (
        "Parameters",
        {"resourceType": "Parameters", "parameter": [{"name": "p", "resource": {**OBS, "note": []}}]},
    ),
    # No resourceType of its own, and a nested one: the nested type is still compiled.
    (
        "Observation",
        {k: v for k, v in OBS.items() if k != "resourceType"} | {"contained": [{**MED, "bad": 1}]},
    ),
]


@pytest.mark.parametrize(("rtype", "resource"), NESTED)
def test_compiling_only_the_types_met_finds_what_the_whole_schema_finds(rtype, resource):
    check = structure._schema_check(rtype)
    assert check(orjson.dumps(resource).decode()) == _whole_schema_findings(rtype, resource)


def test_a_nested_type_written_with_escapes_is_compiled_too():
    med = {**MED, "contained": [{"resourceType": "Medication", "id": "m", "ingredientz": []}]}
    text = (
        orjson.dumps(med)
        .decode()
        .replace('"resourceType":"Medication"', '"resource\\u0054ype":"Medic\\u0061tion"')
    )
    assert orjson.loads(text) == med
    check = structure._schema_check("MedicationRequest")
    assert check(text) == ["MedicationRequest.contained.ingredientz: extra_forbidden"]


def _counting_compiles(monkeypatch) -> list[frozenset[str]]:
    compiled: list[frozenset[str]] = []
    build = structure._validator

    def spy(rtype, nested):
        compiled.append(nested)
        return build(rtype, nested)

    monkeypatch.setattr(structure, "_validator", spy)
    return compiled


def test_one_type_compiles_only_what_it_reaches(monkeypatch):
    # Observation reaches data types, not other resources' definitions, until a nested resource needs one.
    compiled = _counting_compiles(monkeypatch)
    check = structure._schema_check("Observation")
    assert check(orjson.dumps(OBS).decode()) is None
    assert compiled == [frozenset()]
    defs = dict(r4schema.r4_schema()["$defs"])
    assert "Patient" not in structure._reachable(defs | {"ResourceList": {"type": "object"}}, "Observation")
    contained = {**OBS, "contained": [{"resourceType": "Patient", "id": "p"}]}
    assert check(orjson.dumps(contained).decode()) is None
    assert check(orjson.dumps(contained).decode()) is None
    assert compiled == [frozenset(), frozenset({"Patient"})]  # recompiled once, with Patient

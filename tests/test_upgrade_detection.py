"""Release detection: explicit markers, structural signals, mixed files, and R4 left on its fast paths."""

from __future__ import annotations

import orjson
import pytest

from pipelines import formats
from pipelines.fhir_versions import candidates, file_release
from tests.conftest import resource, write_ndjson

PATIENT = {"reference": "Patient/p1"}
DSTU2_ORDER = resource("MedicationOrder", "mo1", status="active", patient=PATIENT)
DSTU2_CONDITION = resource("Condition", "c1", patient=PATIENT, clinicalStatus="active")
STU3_CONDITION = resource("Condition", "c2", subject=PATIENT, clinicalStatus="active", assertedDate="2016")
R4_CONDITION = resource("Condition", "c3", subject=PATIENT, clinicalStatus={"coding": [{"code": "active"}]})


@pytest.mark.parametrize(
    ("res", "expected"),
    [
        (DSTU2_ORDER, {"1.0"}),
        (DSTU2_CONDITION, {"1.0"}),
        (STU3_CONDITION, {"3.0"}),
        (R4_CONDITION, {"4.0"}),
        (resource("Patient", "p", careProvider=[PATIENT]), {"1.0"}),
        (resource("Patient", "p", name=[{"family": ["Doe"]}]), {"1.0"}),
        (resource("Patient", "p", name=[{"family": "Doe"}]), {"3.0", "4.0"}),
        (resource("Encounter", "e", patient=PATIENT, **{"class": "inpatient"}), {"1.0"}),
        (resource("AllergyIntolerance", "a", substance={"text": "x"}, criticality="CRITH"), {"1.0"}),
        (resource("Immunization", "i", wasNotGiven=False, reported=False), {"1.0"}),
        (resource("Immunization", "i", occurrenceDateTime="2020"), {"4.0"}),
        (resource("Observation", "o", category={"text": "x"}), {"1.0"}),
        (resource("ServiceRequest", "s"), {"4.0"}),
        (resource("Observation", "o", status="final"), {"1.0", "3.0", "4.0"}),
        (
            resource("Patient", "p", meta={"profile": ["http://hl7.org/fhir/StructureDefinition/Patient"]}),
            None,
        ),
        (
            resource(
                "Patient", "p", meta={"profile": ["http://hl7.org/fhir/3.0/StructureDefinition/Patient"]}
            ),
            {"3.0"},
        ),
        (resource("CapabilityStatement", "c", fhirVersion="1.0.2"), {"1.0"}),
    ],
)
def test_candidates_from_markers_and_shapes(res, expected):
    assert candidates(res) == (frozenset(expected) if expected else frozenset({"1.0", "3.0", "4.0"}))


def test_contradicting_signals_leave_no_candidate():
    assert candidates(resource("Condition", "c", patient=PATIENT, recordedDate="2020")) == frozenset()


def test_a_release_ehrlift_does_not_read_is_unsupported():
    assert file_release([resource("Patient", "p", fhirVersion="5.0.0")]) == "unsupported"


def test_file_release_goes_by_the_majority_and_r4_when_nothing_tells():
    assert file_release([DSTU2_ORDER, DSTU2_CONDITION, R4_CONDITION]) == "1.0"
    assert file_release([resource("Observation", "o", status="final")]) == "4.0"


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([DSTU2_ORDER, DSTU2_CONDITION], formats.FHIR_NDJSON_DSTU2),
        ([STU3_CONDITION, STU3_CONDITION], formats.FHIR_NDJSON_STU3),
        ([R4_CONDITION, resource("Patient", "p")], formats.FHIR_NDJSON),
        ([R4_CONDITION, R4_CONDITION, DSTU2_CONDITION], formats.FHIR_NDJSON_MIXED),
        ([DSTU2_ORDER], formats.FHIR_NDJSON_DSTU2),
        ([resource("Patient", "p", fhirVersion="0.5.0")], formats.FHIR_UNSUPPORTED_VERSION),
    ],
)
def test_ndjson_release_formats(tmp_path, lines, expected):
    path = write_ndjson(tmp_path / "x.ndjson", *lines)
    assert formats.detect(path)[0] == expected


def _bundle(tmp_path, *resources, **fields):
    bundle = {"resourceType": "Bundle", "type": "transaction", **fields}
    bundle["entry"] = [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in resources]
    path = tmp_path / "b.json"
    path.write_bytes(orjson.dumps(bundle, option=orjson.OPT_INDENT_2))
    return path


def test_bundle_release_keeps_the_bundle_type_as_detail(tmp_path):
    assert formats.detect(_bundle(tmp_path, DSTU2_ORDER, DSTU2_CONDITION)) == (
        formats.FHIR_BUNDLE_DSTU2,
        "transaction",
    )
    assert formats.detect(_bundle(tmp_path, R4_CONDITION)) == (formats.FHIR_BUNDLE, "transaction")


def test_bundle_profile_names_the_release(tmp_path):
    meta = {"profile": ["http://hl7.org/fhir/R5/StructureDefinition/Bundle"]}
    assert formats.detect(_bundle(tmp_path, R4_CONDITION, meta=meta))[0] == formats.FHIR_UNSUPPORTED_VERSION
    meta = {"profile": ["http://hl7.org/fhir/STU3/StructureDefinition/Bundle"]}
    assert (
        formats.detect(_bundle(tmp_path, resource("Observation", "o"), meta=meta))[0]
        == formats.FHIR_BUNDLE_STU3
    )


def test_single_resource_file(tmp_path):
    path = tmp_path / "r.json"
    path.write_bytes(orjson.dumps(DSTU2_ORDER, option=orjson.OPT_INDENT_2))
    assert formats.detect(path) == (formats.FHIR_RESOURCE_DSTU2, "MedicationOrder")


def test_corpus_releases(corpus):
    """Every R4 corpus file keeps its R4 format (and fast path); the Synthea DSTU2 Bundles are DSTU2."""
    older = {
        f
        for name, f in vars(formats).items()
        if isinstance(f, str) and name.endswith(("_DSTU2", "_STU3", "_MIXED"))
    }
    older.add(formats.FHIR_UNSUPPORTED_VERSION)
    checked = 0
    for path in sorted((corpus / "fhir-r4").rglob("*")):
        if path.is_file() and path.suffix in (".json", ".ndjson"):
            fmt, _ = formats.detect(path)
            assert fmt not in older, path.name
            checked += 1
    assert checked > 40
    for path in sorted((corpus / "fhir-dstu2" / "synthea-bundles").glob("*.json")):
        assert formats.detect(path) == (formats.FHIR_BUNDLE_DSTU2, "transaction"), path.name

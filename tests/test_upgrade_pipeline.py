"""DSTU2/STU3 files through the whole pipeline: upgraded units, bad input quarantined with its reason."""

from __future__ import annotations

import orjson

from pipelines.convert.fhir.prepare import warehouse_id
from pipelines.run import run_pipeline
from tests.conftest import resource, write_ndjson

PATIENT = {"reference": "Patient/p1"}
ORDER = resource(
    "MedicationOrder",
    "mo1",
    status="active",
    patient=PATIENT,
    dateWritten="2015-03-04",
    medicationCodeableConcept={
        "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "1"}]
    },
)


def _ledger(con):
    return con.execute(
        "SELECT unit_position, outcome, coalesce(reason, '') FROM ops.ledger ORDER BY unit_position"
    ).fetchall()


def test_dstu2_ndjson_bad_units_are_quarantined_with_their_reason(tmp_path, make_config, warehouse):
    lines = [
        resource(
            "Patient", "p1", name=[{"family": ["Secretname"]}], careProvider=[{"reference": "Practitioner/x"}]
        ),
        ORDER,
        resource("Condition", "c1", patient=PATIENT, clinicalStatus="active", verificationStatus="unknown"),
        resource("Observation", "o1", status="final", subject=PATIENT, valueAttachment={"title": "scan"}),
        resource("Order", "or1", subject=PATIENT),
        resource("Condition", "c2", subject=PATIENT, clinicalStatus={"coding": [{"code": "active"}]}),
        {**ORDER, "id": "mo2", "priorPrescription": {"reference": "Order/or1"}},
        {**ORDER, "id": "mo3", "reasonReference": {"reference": "#missing"}},
        {**ORDER, "id": "mo4", "madeUpElement": "Secretvalue"},
        "{not json",
        "",
        resource("Encounter", "e1", patient=PATIENT, **{"class": "other"}),
        {**ORDER, "id": "mo5", "Secret Key": 1},
        {k: v for k, v in {**ORDER, "id": "mo6"}.items() if k != "status"},
    ]
    path = write_ndjson(tmp_path / "in" / "export.ndjson", *lines)
    run = run_pipeline(make_config(path))
    con = warehouse()
    assert run.reconciles
    assert con.execute("SELECT format FROM ops.files").fetchone() == ("fhir-ndjson-dstu2",)
    assert _ledger(con) == [
        (1, "converted", ""),
        (2, "converted", ""),
        (3, "quarantined", "upgrade_unmappable_code"),
        (4, "quarantined", "upgrade_no_target_type"),
        (5, "quarantined", "unsupported_resource_version"),
        (6, "quarantined", "fhir_version_mismatch"),
        (7, "quarantined", "upgrade_broken_reference"),
        (8, "quarantined", "upgrade_broken_reference"),
        (9, "quarantined", "upgrade_unmapped_element"),
        (10, "quarantined", "invalid_json"),
        (11, "skipped", "blank_line"),
        (12, "quarantined", "upgrade_unmappable_code"),
        (13, "quarantined", "upgrade_unmapped_element"),
        (14, "quarantined", "upgrade_missing_required"),
    ]
    messages = [m for (m,) in con.execute("SELECT message FROM ops.quarantine").fetchall()]
    assert all("Secret" not in m for m in messages)  # structure only, never values
    assert "DSTU2 Order has no upgrade to R4 in ehrlift" in messages
    stored = con.execute("SELECT id, resource::VARCHAR FROM fhir.MedicationRequest").fetchall()
    assert [rid for rid, _ in stored] == [warehouse_id("default", "MedicationRequest", "mo1")]
    order = orjson.loads(stored[0][1])
    assert order["subject"] == {"reference": f"Patient/{warehouse_id('default', 'Patient', 'p1')}"}
    assert order["intent"] == "order" and order["authoredOn"] == "2015-03-04"


def test_dstu2_bundle_references_follow_the_renamed_type(tmp_path, make_config, warehouse):
    patient = resource("Patient", "p1", name=[{"family": ["Doe"]}])
    order = {**ORDER, "patient": {"reference": "urn:uuid:aaa"}}
    statement = resource(
        "MedicationStatement",
        "ms1",
        patient={"reference": "urn:uuid:aaa"},
        status="active",
        supportingInformation=[{"reference": "urn:uuid:bbb"}],
        medicationCodeableConcept={"text": "x"},
    )
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": "urn:uuid:aaa", "resource": patient},
            {"fullUrl": "urn:uuid:bbb", "resource": order},
            {"fullUrl": "urn:uuid:ccc", "resource": statement},
        ],
    }
    path = tmp_path / "in" / "b.json"
    path.parent.mkdir()
    path.write_bytes(orjson.dumps(bundle, option=orjson.OPT_INDENT_2))
    run = run_pipeline(make_config(path))
    con = warehouse()
    assert run.reconciles
    assert con.execute("SELECT format, format_detail FROM ops.files").fetchone() == (
        "fhir-bundle-dstu2",
        "collection",
    )
    (doc,) = con.execute("SELECT resource::VARCHAR FROM fhir.MedicationStatement").fetchone()
    statement = orjson.loads(doc)
    order_id = warehouse_id("default", "MedicationRequest", "mo1")
    assert statement["derivedFrom"] == [{"reference": f"MedicationRequest/{order_id}"}]
    assert con.execute("SELECT id FROM fhir.MedicationRequest").fetchall() == [(order_id,)]


def test_rerun_is_idempotent(tmp_path, make_config, warehouse):
    path = write_ndjson(
        tmp_path / "in" / "x.ndjson", resource("Patient", "p1", careProvider=[PATIENT]), ORDER
    )
    run_pipeline(make_config(path))
    second = run_pipeline(make_config(path))
    con = warehouse()
    assert second.reconciles
    assert con.execute("SELECT count(*) FROM fhir.MedicationRequest").fetchone() == (1,)
    assert con.execute("SELECT count(*) FROM fhir.Patient").fetchone() == (1,)


def test_unsupported_release_is_quarantined_whole(tmp_path, make_config, warehouse):
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "meta": {"profile": ["http://hl7.org/fhir/R5/StructureDefinition/Bundle"]},
        "entry": [{"resource": resource("Patient", "p1")}],
    }
    path = tmp_path / "in" / "r5.json"
    path.parent.mkdir()
    path.write_bytes(orjson.dumps(bundle))
    run = run_pipeline(make_config(path))
    con = warehouse()
    assert run.reconciles
    assert _ledger(con) == [(0, "quarantined", "unsupported_fhir_version")]

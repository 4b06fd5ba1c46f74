"""A declared file whose Bundle itself names another FHIR release is quarantined whole."""

from __future__ import annotations

import pytest

from pipelines.run import run_pipeline
from tests.conftest import resource, write_json

PATIENT = {"reference": "Patient/p1"}


def _bundle(tmp_path, **top) -> object:
    # Observations with nothing in them that tells DSTU2 from R4: only the Bundle says its release.
    entries = [
        {"resource": resource("Observation", f"o{n}", status="final", subject=PATIENT, code={"text": "x"})}
        for n in (1, 2, 3)
    ]
    return write_json(
        tmp_path / "in" / "bundle.json", resource("Bundle", "b", type="collection", **top, entry=entries)
    )


def _outcomes(con) -> list[tuple]:
    return con.execute(
        "SELECT l.unit_position, l.outcome, coalesce(l.reason, ''), coalesce(q.message, '') "
        "FROM ops.ledger l "
        "LEFT JOIN ops.quarantine q USING (run_id, file_sha256, unit_position) ORDER BY l.unit_position"
    ).fetchall()


@pytest.mark.parametrize(
    ("declared", "top", "message"),
    [
        (
            "dstu2",
            {"meta": {"profile": ["http://hl7.org/fhir/R4/StructureDefinition/Bundle"]}},
            "Bundle names R4 (4.0.x) in its fhirVersion or profile; the file is declared DSTU2 (1.0.2)",
        ),
        (
            "r4",
            {"fhirVersion": "1.0.2"},
            "Bundle names DSTU2 (1.0.2) in its fhirVersion or profile; the file is declared R4 (4.0.x)",
        ),
        (
            "stu3",
            {"meta": {"profile": ["http://hl7.org/fhir/5.0/StructureDefinition/Bundle"]}},
            "Bundle names a release other than DSTU2, STU3 or R4 in its fhirVersion or profile; "
            "the file is declared STU3 (3.0.x)",
        ),
    ],
)
def test_a_bundle_naming_another_release_is_quarantined_as_a_file(
    tmp_path, make_config, warehouse, declared, top, message
):
    run = run_pipeline(make_config(_bundle(tmp_path, **top), fhir_release=declared))
    con = warehouse()
    assert run.reconciles
    assert _outcomes(con) == [(0, "quarantined", "declared_release_contradicted", message)]
    assert con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'Observation'"
    ).fetchone() == (0,)


def test_a_bundle_naming_its_declared_release_converts(tmp_path, make_config, warehouse):
    top = {"meta": {"profile": ["http://hl7.org/fhir/DSTU2/StructureDefinition/Bundle"]}}
    run = run_pipeline(make_config(_bundle(tmp_path, **top), fhir_release="dstu2"))
    con = warehouse()
    assert run.reconciles
    assert _outcomes(con) == [(n, "converted", "", "") for n in (1, 2, 3)]
    assert con.execute('SELECT count(*) FROM fhir."Observation"').fetchone() == (3,)


def test_an_undeclared_bundle_goes_by_its_own_marker(tmp_path, make_config, warehouse):
    top = {"meta": {"profile": ["http://hl7.org/fhir/DSTU2/StructureDefinition/Bundle"]}}
    run = run_pipeline(make_config(_bundle(tmp_path, **top)))
    con = warehouse()
    assert run.reconciles
    assert con.execute("SELECT format FROM ops.files").fetchone() == ("fhir-bundle-dstu2",)
    assert _outcomes(con) == [(n, "converted", "", "") for n in (1, 2, 3)]

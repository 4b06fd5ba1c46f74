"""The demo DSTU2 export: DSTU2 shapes, deterministic bytes, and a pipeline run that reconciles with it."""

from __future__ import annotations

from collections import Counter

from pipelines.demo import generate_demo_data
from pipelines.demo.dstu2 import DSTU2_DIR, dstu2_patients
from pipelines.fhir_versions import candidates
from pipelines.run import run_pipeline
from tests.conftest import read_ndjson


def test_dstu2_export_has_dstu2_shapes_and_is_deterministic(tmp_path):
    a = generate_demo_data(tmp_path / "a", patients=30, seed=5, dstu2=True)
    b = generate_demo_data(tmp_path / "b", patients=30, seed=5, dstu2=True)
    assert a.to_dict() == b.to_dict()
    files = sorted((tmp_path / "a" / DSTU2_DIR).glob("*.ndjson"))
    assert {p.name.split(".")[0] for p in files} >= {"Patient", "Encounter", "Condition", "MedicationOrder"}
    defects = {(d.file, d.position) for d in a.defects}
    patients = 0
    for path in files:
        for number, res in enumerate(read_ndjson(path), 1):
            if (f"{DSTU2_DIR}/{path.name}", number) in defects:
                continue
            assert "1.0" in candidates(res), path.name
            patients += res["resourceType"] == "Patient"
    assert patients == dstu2_patients(30) == 3
    condition = read_ndjson(tmp_path / "a" / DSTU2_DIR / "Condition.dstu2.ndjson")[0]
    assert isinstance(condition["clinicalStatus"], str) and "patient" in condition
    encounter = read_ndjson(tmp_path / "a" / DSTU2_DIR / "Encounter.dstu2.ndjson")[0]
    assert encounter["class"] in ("ambulatory", "emergency", "inpatient") and "patient" in encounter


def test_without_the_flag_no_dstu2_export_is_written(tmp_path):
    generate_demo_data(tmp_path, patients=5, seed=5)
    assert not (tmp_path / DSTU2_DIR).exists()


def test_demo_run_with_dstu2_matches_the_generator_summary(tmp_path, make_config, warehouse):
    demo = generate_demo_data(tmp_path / "demo", patients=40, seed=11, dstu2=True)
    run = run_pipeline(make_config(tmp_path / "demo" / "sources", source_system="demo"))
    con = warehouse()
    assert run.reconciles
    by_name = dict(con.execute("SELECT original_name, file_sha256 FROM ops.files").fetchall())
    dstu2_defects = [d for d in demo.defects if d.file.startswith(DSTU2_DIR)]
    assert Counter(d.reason for d in dstu2_defects) == {
        "upgrade_unmappable_code": 1,
        "fhir_version_mismatch": 1,
        "upgrade_broken_reference": 1,
    }
    for defect in demo.defects:
        row = con.execute(
            "SELECT outcome, reason FROM ops.ledger WHERE file_sha256 = ? AND unit_position = ?",
            [by_name[defect.file.rsplit("/", 1)[1]], defect.position],
        ).fetchone()
        assert row == (defect.outcome, defect.reason), defect
    formats = dict(con.execute("SELECT original_name, format FROM ops.files").fetchall())
    assert formats["MedicationOrder.dstu2.ndjson"] == "fhir-ndjson-dstu2"
    # The warehouse holds exactly the valid resources of every file, DSTU2 ones upgraded to R4.
    assert run.warehouse_resources == demo.resources


def test_upgraded_demo_patients_agree_with_their_r4_rendering():
    """The same synthetic patients rendered in DSTU2 (upgraded) and in R4 agree field by field, except
    where DSTU2 cannot say what R4 says (its value sets lack "inactive" and "unconfirmed")."""
    from pipelines.convert.fhir.upgrade.agreement import Agreement, compare_bundles
    from pipelines.demo.fhir_dstu2 import render_patient_dstu2
    from pipelines.demo.fhir_r4 import render_patient
    from pipelines.demo.model import iter_patients

    def bundle(rendered):
        return {"entry": [{"fullUrl": f"{t}/{r['id']}", "resource": r} for t, r in rendered]}

    agreement = Agreement()
    for patient in iter_patients(3, 60, "dstu2"):
        compare_bundles(bundle(render_patient_dstu2(patient)), bundle(render_patient(patient)), agreement)
    assert not agreement.unpaired and not agreement.quarantined
    lossy = {
        ("Condition", "status", "clinicalStatus"),
        ("Condition", "status", "verificationStatus"),
        ("AllergyIntolerance", "status", "clinicalStatus"),
        ("AllergyIntolerance", "status", "verificationStatus"),
    }
    exact = [k for k in agreement.both if k not in lossy]
    assert agreement.rate(exact) == 1.0, [k for k in exact if agreement.agree[k] != agreement.both[k]]
    assert sum(agreement.both[k] for k in exact) > 5_000

"""Demo identity noise: the truth file, look-alikes and the drift between sources."""

from __future__ import annotations

import csv

from pipelines.demo import build_patient, generate_demo_data
from pipelines.demo.identity import TRUTH_NAME, lookalike_role, noisy_variant
from pipelines.demo.identity_population import iter_population


def test_truth_names_every_source_patient_of_every_person(tmp_path):
    generate_demo_data(tmp_path, patients=12, seed=3, hl7v2=True, ccda=True, identity=True)
    rows = list(csv.DictReader((tmp_path / TRUTH_NAME).open()))
    assert len(rows) == 36
    assert {r["source"] for r in rows} == {"fhir-r4", "hl7v2", "ccda"}
    assert len({r["person"] for r in rows}) == 12
    twins = [r for r in rows if r["role"] == "twin"]
    assert twins and all(r["lookalike_of"] and r["lookalike_of"] != r["person"] for r in twins)


def test_without_identity_noise_no_truth_and_sources_unchanged(tmp_path):
    plain = generate_demo_data(tmp_path / "a", patients=6, seed=3, hl7v2=True, ccda=True)
    again = generate_demo_data(tmp_path / "b", patients=6, seed=3, hl7v2=True, ccda=True)
    assert not (tmp_path / "a" / TRUTH_NAME).exists()
    assert [f.sha256 for f in plain.files] == [f.sha256 for f in again.files]


def test_twins_share_birth_date_family_and_home_but_not_given():
    model, twin = build_patient(5, 3, identity=True), build_patient(5, 4, identity=True)
    assert lookalike_role(4) == "twin"
    assert (twin.birth_date, twin.family, twin.address) == (model.birth_date, model.family, model.address)
    assert twin.given != model.given


def test_namesake_has_the_same_name_and_another_generation():
    model, namesake = build_patient(5, 6, identity=True), build_patient(5, 7, identity=True)
    assert (namesake.given, namesake.family) == (model.given, model.family)
    assert abs(namesake.birth_date.year - model.birth_date.year) >= 22


def test_noise_is_deterministic_and_drifts_somewhere():
    people = [build_patient(9, i) for i in range(60)]
    variants = [noisy_variant(p, "ccda", 9, outside_ids=True) for p in people]
    assert variants == [noisy_variant(p, "ccda", 9, outside_ids=True) for p in people]
    assert sum(v.family != p.family for p, v in zip(people, variants, strict=True)) >= 5
    assert sum(v.address != p.address for p, v in zip(people, variants, strict=True)) >= 5
    assert sum(v.mrn_root is not None for v in variants) >= 5
    assert all(v.uid == p.uid and v.encounters == p.encounters for p, v in zip(people, variants, strict=True))


def test_population_has_truth_and_roughly_the_asked_size():
    records = list(iter_population(7, 100, 1000))
    assert 800 <= len(records) <= 1200
    assert len({r.person for r in records}) == 100
    assert len({r.resource["id"] for r in records}) == len(records)

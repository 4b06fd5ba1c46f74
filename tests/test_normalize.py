"""The normalization engine: remap chains and cycles, crosswalks, maps, units, reasons, idempotence."""

from __future__ import annotations

import copy

import duckdb
import orjson
import pytest

from pipelines.common.errors import ConfigError
from terminology.crosswalks import effective, read_crosswalk
from terminology.normalize import EXT_DECISION, EXT_METHOD, Normalizer, strip_added
from terminology.terms import WarehouseTerminology
from tests.terminology_builders import ICD10CM, LOCAL, LOINC, NDC, RXNORM, SNOMED, load_terms, write_crosswalk

CONCEPTS = [
    (LOINC, "2345-7", "Glucose [Mass/volume] in Serum or Plasma", "active"),
    (LOINC, "1111-4", "Retired test", "inactive"),
    (LOINC, "2222-8", "Retired too", "inactive"),
    (LOINC, "3333-2", "Current test", "active"),
    (LOINC, "4444-6", "Cycle a", "inactive"),
    (LOINC, "5555-8", "Cycle b", "inactive"),
    (LOINC, "6666-2", "Dead end", "inactive"),
    (LOINC, "7777-6", "Ambiguous", "inactive"),
    (SNOMED, "44054006", "Diabetes mellitus type 2", "active"),
    (SNOMED, "73211009", "Diabetes mellitus (old)", "inactive"),
    (RXNORM, "860975", "metformin 500 MG Oral Tablet", "active"),
    (ICD10CM, "E11.9", "Type 2 diabetes mellitus without complications", "active"),
]
REPLACEMENTS = [
    (LOINC, "1111-4", "2222-8", "MAP_TO"),
    (LOINC, "2222-8", "3333-2", "MAP_TO"),
    (LOINC, "4444-6", "5555-8", "MAP_TO"),
    (LOINC, "5555-8", "4444-6", "MAP_TO"),
    (LOINC, "7777-6", "2345-7", "MAP_TO"),
    (LOINC, "7777-6", "3333-2", "MAP_TO"),
    (SNOMED, "73211009", "44054006", "REPLACED_BY"),
]
MAPS = [
    ("rxnorm:ndc", NDC, "00093-1048-01", RXNORM, "860975"),
    ("icd10cm-snomed", ICD10CM, "E11.9", SNOMED, "44054006"),
]


@pytest.fixture
def terms():
    con = duckdb.connect()
    load_terms(con, CONCEPTS, replacements=REPLACEMENTS, maps=MAPS)
    yield WarehouseTerminology(con)
    con.close()


def decide(n: Normalizer, system, code, display=None):
    d = n.decide(system, code, display)
    return d.method, d.reason, d.target_system, d.target_code


def test_retired_codes_follow_chains_and_cycles_are_reported(terms):
    n = Normalizer(terms)
    assert decide(n, LOINC, "2345-7") == ("exact", None, LOINC, "2345-7")
    assert decide(n, LOINC, "1111-4") == ("remap", "retired, chain of 2", LOINC, "3333-2")
    assert decide(n, LOINC, "2222-8") == ("remap", "retired", LOINC, "3333-2")
    assert decide(n, LOINC, "4444-6") == ("unmapped", "replacement_cycle", None, None)
    assert decide(n, LOINC, "6666-2") == ("unmapped", "inactive_no_replacement", None, None)
    assert decide(n, LOINC, "7777-6") == ("unmapped", "ambiguous_replacement", None, None)
    assert decide(n, SNOMED, "73211009") == ("remap", "retired", SNOMED, "44054006")


def test_bad_and_unknown_codes_are_logged_with_reasons(terms):
    n = Normalizer(terms)
    assert decide(n, LOINC, "9999-4") == ("unmapped", "code_not_in_release", LOINC, None)
    assert decide(n, "http://example.org/unknown", "X") == ("unmapped", "unknown_system", None, None)
    assert decide(n, None, "X") == ("unmapped", "no_system", None, None)
    assert decide(n, LOINC, None) == ("unmapped", "no_code", None, None)
    assert decide(n, LOCAL, "GLU") == ("unmapped", "local_code_not_mapped", None, None)
    # A well-formed code of a standard system with no release loaded stays standard, flagged unverified.
    assert decide(n, "http://hl7.org/fhir/sid/cvx", "08") == (
        "exact",
        "terminology_not_loaded",
        "http://hl7.org/fhir/sid/cvx",
        "08",
    )
    assert decide(n, "http://www.ama-assn.org/go/cpt", "99213") == (
        "unmapped",
        "terminology_not_loaded",
        "http://www.ama-assn.org/go/cpt",
        None,
    )
    method, reason, *_ = decide(n, LOINC, " 2345-7")
    assert method == "unmapped" and reason.startswith("malformed_code: ")
    assert decide(n, LOINC, 2345) == ("unmapped", "malformed_coding", None, None)


def test_ndc_and_icd10cm_map_through_loaded_maps_and_aliases_become_canonical(terms):
    n = Normalizer(terms)
    # NDCs arrive as RxNorm's NDC map (no NDC release of their own): the map alone decides.
    assert decide(n, NDC, "00093-1048-01") == ("crosswalk", None, RXNORM, "860975")
    assert decide(n, NDC, "12345-6789-01") == ("unmapped", "terminology_not_loaded", NDC, None)
    assert decide(n, ICD10CM, "E11.9") == ("crosswalk", None, SNOMED, "44054006")
    assert decide(n, "LN", "2345-7") == ("exact", "canonical_system", LOINC, "2345-7")
    assert decide(n, "urn:oid:2.16.840.1.113883.6.1", "2345-7")[:2] == ("exact", "canonical_system")


def test_added_codings_keep_the_source_and_say_how_they_were_obtained(terms, tmp_path):
    cw = write_crosswalk(
        tmp_path / "lab.csv",
        (LOCAL, "GLU", "GLUCOSE", LOINC, "2345-7", "equivalent", "a.author", "r.reviewer", "2026-01-05", "1"),
    )
    terms.add_crosswalks(effective(read_crosswalk(cw)))
    n = Normalizer(terms)
    obs = {
        "resourceType": "Observation",
        "code": {
            "coding": [
                {"system": LOCAL, "code": "GLU", "display": "GLUCOSE"},
                {"system": LOINC, "code": "1111-4"},
            ]
        },
        "valueQuantity": {"value": 5, "unit": "mg/dl"},
        "component": [{"code": {"coding": [{"system": LOCAL, "code": "GLU", "display": "GLUCOSE"}]}}],
    }
    out = n.normalize(copy.deepcopy(obs), "lab")
    d_cw = n.decide(LOCAL, "GLU", "GLUCOSE")
    d_remap = n.decide(LOINC, "1111-4", None)
    assert out["code"]["coding"] == [
        {"system": LOCAL, "code": "GLU", "display": "GLUCOSE"},
        {"system": LOINC, "code": "1111-4"},
        {
            "extension": [
                {"url": EXT_METHOD, "valueCode": "crosswalk"},
                {"url": EXT_DECISION, "valueString": d_cw.decision_id},
            ],
            "system": LOINC,
            "code": "2345-7",
            "display": "Glucose [Mass/volume] in Serum or Plasma",
        },
        {
            "extension": [
                {"url": EXT_METHOD, "valueCode": "remap"},
                {"url": EXT_DECISION, "valueString": d_remap.decision_id},
            ],
            "system": LOINC,
            "code": "3333-2",
            "display": "Current test",
        },
    ]
    assert d_cw.crosswalk_version == "crosswalk:lab@1"
    assert out["valueQuantity"] == {
        "value": 5,
        "unit": "mg/dl",
        "system": "http://unitsofmeasure.org",
        "code": "mg/dL",
        "extension": [{"url": "urn:ehrlift:extension:source-unit", "valueCoding": {"display": "mg/dl"}}],
    }
    assert len(out["component"][0]["code"]["coding"]) == 2
    # Re-normalizing strips and re-derives: byte-identical; stripping gives back the source exactly.
    again = n.normalize(orjson.loads(orjson.dumps(out)), "lab")
    assert orjson.dumps(again) == orjson.dumps(out)
    assert orjson.dumps(strip_added(again)) == orjson.dumps(obs)
    counts = {(n.decisions[did].source_code, src): k for (did, src), k in n.counts.items()}
    assert counts == {("GLU", "lab"): 4, ("1111-4", "lab"): 2, ("mg/dl", "lab"): 2}


def test_a_target_already_in_the_array_is_not_added_twice(terms, tmp_path):
    cw = write_crosswalk(
        tmp_path / "lab.csv", (LOCAL, "GLU", "", LOINC, "2345-7", "equivalent", "a", "r", "2026-01-05", "1")
    )
    terms.add_crosswalks(effective(read_crosswalk(cw)))
    cc = {"coding": [{"system": LOCAL, "code": "GLU"}, {"system": LOINC, "code": "2345-7"}]}
    assert (
        Normalizer(terms).normalize({"resourceType": "Observation", "code": copy.deepcopy(cc)})["code"] == cc
    )


def test_crosswalk_versions_newest_wins_and_conflicts_name_file_and_line(tmp_path):
    v1 = write_crosswalk(
        tmp_path / "lab.csv",
        (LOCAL, "GLU", "", LOINC, "2345-7", "equivalent", "a", "r", "2026-01-05", "9"),
        (LOCAL, "NA", "", LOINC, "2951-2", "equivalent", "a", "r", "2026-01-05", "9"),
    )
    v2 = write_crosswalk(
        tmp_path / "lab-v10.csv",
        (LOCAL, "GLU", "", LOINC, "3333-2", "equivalent", "a", "r", "2026-02-01", "10"),
    )
    rows = effective(read_crosswalk(v1) + read_crosswalk(v2))
    assert [(r.source_code, r.target_code, r.version, r.file.name) for r in rows] == [
        ("GLU", "3333-2", "10", "lab-v10.csv"),
        ("NA", "2951-2", "9", "lab.csv"),
    ]
    clash = write_crosswalk(
        tmp_path / "other.csv", (LOCAL, "NA", "", LOINC, "2947-0", "equivalent", "a", "r", "", "9")
    )
    with pytest.raises(ConfigError, match=r"other\.csv:2: maps the same source code as .*lab\.csv:3"):
        effective(read_crosswalk(v1) + read_crosswalk(clash))
    bad = write_crosswalk(tmp_path / "bad.csv", (LOCAL, "K", "", LOINC, "", "equivalent", "a", "r", "", "1"))
    with pytest.raises(ConfigError, match=r"bad\.csv:2: target_code is empty"):
        read_crosswalk(bad)
    wrong = write_crosswalk(tmp_path / "hdr.csv", header="source,code")
    with pytest.raises(ConfigError, match=r"hdr\.csv:1: crosswalk header"):
        read_crosswalk(wrong)
    date = write_crosswalk(
        tmp_path / "d.csv", (LOCAL, "K", "", LOINC, "1-8", "equal", "a", "r", "5/1/26", "1")
    )
    with pytest.raises(ConfigError, match=r"d\.csv:2: review_date"):
        read_crosswalk(date)


def test_crosswalk_target_missing_from_the_release_is_unmapped_with_reason(terms, tmp_path):
    cw = write_crosswalk(
        tmp_path / "lab.csv", (LOCAL, "X1", "", LOINC, "9999-4", "equivalent", "a", "r", "2026-01-05", "1")
    )
    terms.add_crosswalks(effective(read_crosswalk(cw)))
    assert decide(Normalizer(terms), LOCAL, "X1") == (
        "unmapped",
        "crosswalk_target_not_in_release",
        LOINC,
        "9999-4",
    )


def test_a_code_missing_from_a_subset_release_stays_standard_flagged(terms):
    terms.subsets.add(LOINC)
    assert Normalizer(terms).decide(LOINC, "9999-4", None).reason == "not_in_loaded_subset"
    assert decide(Normalizer(terms), LOINC, "9999-4") == ("exact", "not_in_loaded_subset", LOINC, "9999-4")


def test_units_valid_aliased_and_free_text(terms):
    n = Normalizer(terms)
    unit = n.decide_unit
    assert (unit(None, "mg/dL").method, unit(None, "mg/dL").target_code) == ("exact", "mg/dL")
    assert unit("http://unitsofmeasure.org", "{tbl}").method == "exact"  # an annotation is a UCUM unit
    assert (unit(None, "K/uL").method, unit(None, "K/uL").target_code) == ("crosswalk", "10*3/uL")
    assert (unit(None, "per high power field").method, unit(None, "per high power field").reason) == (
        "unmapped",
        "unit_not_ucum",
    )
    q = {"value": 1, "unit": "see note"}
    assert n.normalize({"resourceType": "Observation", "valueQuantity": dict(q)})["valueQuantity"] == q

"""Fact de-duplication golden cases: keys per type, tolerances, the survivor, never deleting, re-runs."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from pipelines.common.warehouse import ensure_resource_table, open_warehouse
from pipelines.identity import identify
from tests.test_identity_link import MRN, MRN_ALIAS, load, patient

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"


def obs(rid: str, pat: str, when: str, value: float, code: str = "2345-7", local: bool = False) -> dict:
    coding = [{"system": "urn:oid:1.2.3.4", "code": "GLU"}] + (
        [] if local else [{"system": LOINC, "code": code}]
    )
    return {
        "resourceType": "Observation",
        "id": rid,
        "subject": {"reference": f"Patient/{pat}"},
        "code": {"coding": coding},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": "mg/dL"},
    }


def cond(rid: str, pat: str, onset: str, code: str = "44054006") -> dict:
    return {
        "resourceType": "Condition",
        "id": rid,
        "subject": {"reference": f"Patient/{pat}"},
        "code": {"coding": [{"system": SNOMED, "code": code}]},
        "onsetDateTime": onset,
    }


def allergy(rid: str, pat: str, code: str | None = "7980") -> dict:
    res = {"resourceType": "AllergyIntolerance", "id": rid, "patient": {"reference": f"Patient/{pat}"}}
    if code:
        res["code"] = {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": code}]}
    return res


def put(con, fmt: str, *resources: dict) -> None:
    """Insert resources as if landed from a file of that format."""
    con.execute(
        "INSERT INTO ops.files SELECT ?, 1, ?, NULL, 'test', 'x', 'x', 'r0', now() "
        "WHERE NOT EXISTS (SELECT 1 FROM ops.files WHERE file_sha256 = ?)",
        [f"file-{fmt}", fmt, f"file-{fmt}"],
    )
    for res in resources:
        table = ensure_resource_table(con, res["resourceType"])
        con.execute(
            f"INSERT INTO {table} VALUES (?, ?, 'test', NULL, ?, 0, 'r0', ?, NULL, false)",
            [res["id"], orjson.dumps(res).decode(), f"file-{fmt}", res["id"]],
        )


@pytest.fixture
def con(tmp_path: Path):
    c = open_warehouse(tmp_path / "w.duckdb")
    # One person through two paths (linked by the MRN alias), and another person.
    load(
        c,
        ("hl7v2", patient("adt", ids=[(MRN, "1")])),
        ("ccda", patient("doc", ids=[(MRN_ALIAS, "1")])),
        (
            "hl7v2",
            patient("other", "Wei", "Chen", "1990-01-01", gender="male", zip="60601", ids=[(MRN, "2")]),
        ),
    )
    yield c
    c.close()


def dupes(con) -> list[tuple[str, str, str, str]]:
    return con.execute(
        "SELECT resource_type, resource_id, survivor_id, rule FROM ops.fact_duplicates ORDER BY 1, 2"
    ).fetchall()


def test_the_same_result_by_two_paths_is_one_fact_and_the_feed_survives(con):
    put(con, "ccda", obs("o-doc", "doc", "2024-03-01T10:20:00-05:00", 101.0))
    put(con, "hl7v2", obs("o-adt", "adt", "2024-03-01T15:00:00Z", 101.004))  # 40 min later, same to 2 places
    result = identify(con, "r1")
    assert dupes(con) == [("Observation", "o-doc", "o-adt", "Observation:person+code+time±60min+value")]
    assert result["facts"]["Observation"] == {"facts": 2, "keyed": 2, "duplicates": 1}
    assert con.execute('SELECT count(*) FROM fhir."Observation"').fetchall()[0][0] == 2  # never deleted


@pytest.mark.parametrize(
    ("second", "why"),
    [
        (obs("o2", "doc", "2024-03-01T12:30:00Z", 101.0), "outside the hour"),
        (obs("o2", "doc", "2024-03-01T10:10:00Z", 99.0), "another value"),
        (obs("o2", "doc", "2024-03-01T10:10:00Z", 101.0, code="2339-0"), "another code"),
        (obs("o2", "other", "2024-03-01T10:10:00Z", 101.0), "another person"),
    ],
)
def test_near_facts_that_differ_in_a_key_stay(con, second, why):
    put(con, "hl7v2", obs("o1", "adt", "2024-03-01T10:00:00Z", 101.0))
    put(con, "ccda", second)
    identify(con, "r1")
    assert dupes(con) == [], why


def test_a_local_only_code_matches_only_its_own_kind(con):
    put(con, "hl7v2", obs("o1", "adt", "2024-03-01T10:00:00Z", 5.0, local=True))
    put(
        con,
        "ccda",
        obs("o2", "doc", "2024-03-01T10:00:00Z", 5.0, local=True),
        obs("o3", "doc", "2024-03-01T10:00:00Z", 5.0),
    )
    identify(con, "r1")
    assert dupes(con) == [("Observation", "o2", "o1", "Observation:person+code+time±60min+value")]


def test_conditions_within_a_day_chain_and_allergies_need_no_time(con):
    put(
        con,
        "ccda",
        cond("c-doc", "doc", "2023-05-02"),
        allergy("a-doc", "doc"),
        allergy("a-none", "doc", None),
    )
    put(con, "fhir-ndjson", cond("c-exp", "adt", "2023-05-01T20:00:00Z"), allergy("a-exp", "adt"))
    put(con, "hl7v2", cond("c-far", "adt", "2023-05-04"))
    identify(con, "r1")
    assert dupes(con) == [
        ("AllergyIntolerance", "a-doc", "a-exp", "AllergyIntolerance:person+code+time±0min+value"),
        ("Condition", "c-doc", "c-exp", "Condition:person+code+time±1440min+value"),
    ]


def test_rerunning_adds_nothing(con):
    put(con, "ccda", obs("o-doc", "doc", "2024-03-01T10:20:00Z", 101.0))
    put(con, "hl7v2", obs("o-adt", "adt", "2024-03-01T10:00:00Z", 101.0))
    identify(con, "r1")
    first = dupes(con)
    identify(con, "r2")
    assert dupes(con) == first and len(first) == 1

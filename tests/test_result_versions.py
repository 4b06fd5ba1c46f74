"""Result versions under one MSH-7: preliminary, final, corrected ordered by status, not conflicts."""

from __future__ import annotations

import pytest

from pipelines.result_versions import rank_sql, ranks
from pipelines.run import run_pipeline

HEAD = "MSH|^~\\&|LIS|LAB|R|R|20240301120000-0500||ORU^R01^ORU_R01|{ctl}|P|2.5.1"
BODY = [
    "PID|1||M1^^^LAB^MR||Roe^Ray||19800101|M",
    "OBR|1||F1^LAB|2345-7^Glucose^LN|||20240301080000-0500||||||||||||||||||{status}",
    "OBX|1|NM|2345-7^Glucose^LN||{value}|mg/dL|70-99||||{status}",
]


def _message(ctl: str, status: str, value: str) -> str:
    return "\r".join([HEAD.format(ctl=ctl), *(s.format(status=status, value=value) for s in BODY)]) + "\r"


def _outcomes(tmp_path, make_config, warehouse, *messages: str) -> tuple[list[tuple], list[tuple]]:
    src = tmp_path / "in"
    src.mkdir()
    for i, m in enumerate(messages):
        (src / f"m{i}.hl7").write_text(m)
        run = run_pipeline(make_config(src / f"m{i}.hl7"))
        assert run.reconciles
    con = warehouse()
    ledger = con.execute(
        "SELECT coalesce(reason, outcome) FROM ops.ledger ORDER BY run_id, file_sha256"
    ).fetchall()
    stored = con.execute(
        "SELECT json_extract_string(resource, '$.status'), "
        "json_extract_string(resource, '$.valueQuantity.value') FROM fhir.Observation"
    ).fetchall()
    return ledger, stored


@pytest.mark.parametrize(
    ("first", "second", "kept", "second_outcome"),
    [
        (("P", "101"), ("F", "102"), ("final", "102"), "newer_version"),
        (("F", "102"), ("P", "101"), ("final", "102"), "superseded"),
        (("F", "102"), ("C", "103"), ("corrected", "103"), "newer_version"),
    ],
    ids=["final-after-preliminary", "preliminary-after-final", "corrected-after-final"],
)
def test_versions_of_one_msh7_are_ordered_by_status(
    tmp_path, make_config, warehouse, first, second, kept, second_outcome
):
    ledger, stored = _outcomes(
        tmp_path, make_config, warehouse, _message("C1", *first), _message("C2", *second)
    )
    assert stored == [kept]
    assert ("conflicting_duplicate",) not in ledger
    assert second_outcome in {r[0] for r in ledger}


def test_two_finals_of_one_msh7_that_differ_still_conflict(tmp_path, make_config, warehouse):
    ledger, stored = _outcomes(
        tmp_path, make_config, warehouse, _message("C1", "F", "101"), _message("C2", "F", "102")
    )
    assert ("conflicting_duplicate",) in ledger and stored == [("final", "101")]


def test_rank_sql_comes_from_the_data_file_only_for_results():
    assert rank_sql("resource", "Patient") == "0"
    sql = rank_sql("resource", "Observation")
    assert all(f"WHEN '{code}' THEN {n}" in sql for code, n in ranks()["rank"].items())
    assert ranks()["rank"]["preliminary"] < ranks()["rank"]["final"] < ranks()["rank"]["corrected"]

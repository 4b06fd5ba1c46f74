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


def _timed(ctl: str, status: str, value: str, reported: str = "", analysed: str = "") -> str:
    """One ORU under the shared MSH-7 with OBR-22 (results reported) and OBX-19 (analysis time)."""
    obr = ["OBR", "1", "", "F1^LAB", "2345-7^Glucose^LN", "", "", "20240301080000-0500"]
    obr += [""] * 14 + [reported, "", "", status]
    obx = ["OBX", "1", "NM", "2345-7^Glucose^LN", "", value, "mg/dL", "70-99", "", "", "", status]
    obx += [""] * 7 + [analysed]
    return "\r".join([HEAD.format(ctl=ctl), BODY[0], "|".join(obr), "|".join(obx)]) + "\r"


@pytest.mark.parametrize(
    ("first", "second", "kept", "second_outcome"),
    [
        (("101", "202403011000-0500"), ("102", "202403011100-0500"), "102", "newer_version"),
        (("102", "202403011100-0500"), ("101", "202403011000-0500"), "102", "superseded"),
    ],
    ids=["later-report-second", "earlier-report-second"],
)
def test_one_status_under_one_msh7_is_ordered_by_obr22(
    tmp_path, make_config, warehouse, first, second, kept, second_outcome
):
    ledger, stored = _outcomes(
        tmp_path,
        make_config,
        warehouse,
        _timed("C1", "F", first[0], reported=first[1]),
        _timed("C2", "F", second[0], reported=second[1]),
    )
    assert stored == [("final", kept)]
    assert ("conflicting_duplicate",) not in ledger
    assert second_outcome in {r[0] for r in ledger}
    report = warehouse().execute(
        "SELECT json_extract_string(resource, '$.issued') FROM fhir.DiagnosticReport"
    )
    assert report.fetchall() == [("2024-03-01T11:00:00-05:00",)]


def test_equal_obr22_falls_to_the_analysis_time_obx19(tmp_path, make_config, warehouse):
    at = "202403011000-0500"
    _, stored = _outcomes(
        tmp_path,
        make_config,
        warehouse,
        _timed("C1", "F", "103", reported=at, analysed="202403010930-0500"),
        _timed("C2", "F", "101", reported=at, analysed="202403010900-0500"),
    )
    assert stored == [("final", "103")]
    # The Observation is ordered by OBX-19; its report, the same under one OBR-22 but for the message it
    # came in (meta.source), has no time of its own to order by and stays the one conflict.
    con = warehouse()
    assert con.execute("SELECT DISTINCT resource_type FROM ops.quarantine").fetchall() == [
        ("DiagnosticReport",)
    ]
    (ext,) = (
        warehouse().execute("SELECT json_extract(resource, '$.extension') FROM fhir.Observation").fetchone()
    )
    assert "observation-analysis-date-time" in ext and "2024-03-01T09:30:00-05:00" in ext


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("", ""), ("202403011100-0500", "")),
        (("202403011100-0500", ""), ("", "")),
        (("202403011000-0500", ""), ("202403011000-0500", "")),
    ],
    ids=["time-missing-on-the-first", "time-missing-on-the-second", "equal-times"],
)
def test_versions_that_cannot_be_ordered_still_conflict(tmp_path, make_config, warehouse, first, second):
    ledger, _ = _outcomes(
        tmp_path,
        make_config,
        warehouse,
        _timed("C1", "F", "101", *first),
        _timed("C2", "F", "102", *second),
    )
    assert ("conflicting_duplicate",) in ledger


def test_rank_sql_comes_from_the_data_file_only_for_results():
    assert rank_sql("resource", "Patient") == "0"
    sql = rank_sql("resource", "Observation")
    assert all(f"WHEN '{code}' THEN {n}" in sql for code, n in ranks()["rank"].items())
    assert ranks()["rank"]["preliminary"] < ranks()["rank"]["final"] < ranks()["rank"]["corrected"]

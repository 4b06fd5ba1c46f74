"""The normalize stage in a run: resources rewritten in place, exact mapping_log rows, re-runs, drift."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.common.warehouse import open_warehouse
from pipelines.normalize import normalize_stage, renormalize
from pipelines.run import run_pipeline
from tests.conftest import resource, write_ndjson
from tests.terminology_builders import LOINC, fixture_terminology_only, load_terms, write_crosswalk  # noqa: F401

HOSP = "http://hospital.example.org/lab-codes"

pytestmark = pytest.mark.usefixtures("fixture_terminology_only")


def _obs(rid: str, *codings: dict, **fields) -> dict:
    return resource("Observation", rid, status="final", code={"coding": list(codings)}, **fields)


@pytest.fixture
def lab_run(tmp_path: Path, make_config, monkeypatch):
    monkeypatch.setenv("EHRLIFT_CROSSWALKS", str(tmp_path / "crosswalks"))
    write_crosswalk(
        tmp_path / "crosswalks" / "lab.csv",
        (HOSP, "GLU", "GLUCOSE", LOINC, "2345-7", "equivalent", "a.author", "r.reviewer", "2026-01-05", "1"),
    )
    config = make_config(
        write_ndjson(
            tmp_path / "src" / "Observation.ndjson",
            # Written as text: the decimal 7.10 must keep its trailing zero through normalization.
            '{"resourceType":"Observation","id":"o1","status":"final","code":{"coding":[{"system":"'
            + HOSP
            + '","code":"GLU","display":"GLUCOSE"}]},"valueQuantity":{"value":7.10,"unit":"mg/dl"}}',
            _obs(
                "o2",
                {"system": HOSP, "code": "GLU", "display": "GLUCOSE"},
                {"system": LOINC, "code": "1111-4"},
            ),
            _obs("o3", {"system": HOSP, "code": "ZZZ", "display": "ODD TEST"}),
        ),
        source_system="labsys",
    )
    with open_warehouse(config.warehouse) as con:
        load_terms(
            con,
            [
                (LOINC, "2345-7", "Glucose [Mass/volume] in Serum or Plasma", "active"),
                (LOINC, "1111-4", "Retired", "inactive"),
            ],
            versions={LOINC: "2.78"},
            replacements=[(LOINC, "1111-4", "2345-7", "MAP_TO")],
        )
    return config


def _log(con, run_id):
    return con.execute(
        "SELECT source_system, source_code, source_display, target_system, target_code, method, reason, "
        "terminology_version, crosswalk_version, occurrences, data_source, kind FROM ops.mapping_log "
        "WHERE run_id = ? ORDER BY ALL",
        [run_id],
    ).fetchall()


def _resources(con):
    return con.execute('SELECT id, resource::VARCHAR FROM fhir."Observation" ORDER BY id').fetchall()


EXPECTED_LOG = [
    (
        HOSP,
        "GLU",
        "GLUCOSE",
        LOINC,
        "2345-7",
        "crosswalk",
        None,
        "2.78",
        "crosswalk:lab@1",
        2,
        "labsys",
        "coding",
    ),
    (HOSP, "ZZZ", "ODD TEST", None, None, "unmapped", "unknown_system", None, None, 1, "labsys", "coding"),
    (LOINC, "1111-4", None, LOINC, "2345-7", "remap", "retired", "2.78", None, 1, "labsys", "coding"),
    (
        None,
        "mg/dl",
        None,
        "http://unitsofmeasure.org",
        "mg/dL",
        "crosswalk",
        None,
        None,
        "units.csv@",
        1,
        "labsys",
        "unit",
    ),
]


def test_mapping_log_rows_are_exact_and_a_rerun_is_byte_identical(lab_run, warehouse):
    run_pipeline(lab_run)
    con = warehouse()
    log = _log(con, lab_run.run_id)
    # The units file's version is its content hash: compare its prefix only.
    assert [(*r[:8], r[8][:10] if r[11] == "unit" else r[8], *r[9:]) for r in log] == EXPECTED_LOG
    before = _resources(con)
    o2 = next(doc for _, doc in before if '"1111-4"' in doc)
    assert o2.count('"code":"2345-7"') == 1  # one added coding, though two source codings lead there
    assert sum('"value":7.10,' in doc for _, doc in before) == 1
    con.close()
    stats = normalize_stage(lab_run)
    assert stats["rewritten"] == 0 and stats["resources"] == 3
    con = warehouse()
    assert _resources(con) == before
    assert [r[:8] for r in _log(con, lab_run.run_id)] == [r[:8] for r in log]  # replaced, not doubled


def test_renormalize_rewrites_resources_whose_codes_changed_status(lab_run, warehouse):
    run_pipeline(lab_run)
    with open_warehouse(lab_run.warehouse) as con:
        con.execute("UPDATE terminology.concepts SET status = 'inactive' WHERE code = '2345-7'")
        con.execute(
            "INSERT INTO terminology.concepts VALUES (?, '99991-2', 'Glucose new', 'active', NULL, '2')",
            [LOINC],
        )
        con.execute(
            "INSERT INTO terminology.replacements VALUES (?, '2345-7', '99991-2', 'MAP_TO', '2')", [LOINC]
        )
        result = renormalize(con, [(LOINC, "2345-7")], run_id="drift-1")
        assert (result["resources"], result["rewritten"]) == (2, 2)
        rows = _log(con, "drift-1")
    assert [(r[1], r[4], r[5], r[6], r[9]) for r in rows] == [
        ("GLU", "2345-7", "unmapped", "crosswalk_target_inactive", 2),
        ("1111-4", "99991-2", "remap", "retired, chain of 2", 1),
        ("mg/dl", "mg/dL", "crosswalk", None, 1),
    ]
    docs = [doc for _, doc in _resources(warehouse())]
    assert sum('"code":"99991-2"' in d for d in docs) == 1  # o2's retired code now follows the longer chain
    assert not any('"code":"2345-7","display"' in d for d in docs)  # the crosswalk target is no longer added


def test_a_table_fetches_its_terminology_in_one_query_not_one_per_code(tmp_path, make_config, monkeypatch):
    from pipelines.run import convert_stage, land_stage
    from terminology.terms import WarehouseTerminology

    bulk: list[tuple[set, set]] = []
    single: list[list] = []
    real_sets, real_one = WarehouseTerminology.prefetch_sets, WarehouseTerminology.prefetch

    def sets(self, systems, codes):
        bulk.append((set(systems), set(codes)))
        return real_sets(self, systems, codes)

    def one(self, pairs):
        pairs = list(pairs)
        single.append(pairs)
        return real_one(self, pairs)

    monkeypatch.setattr(WarehouseTerminology, "prefetch_sets", sets)
    monkeypatch.setattr(WarehouseTerminology, "prefetch", one)
    observations = [_obs(f"o{i}", {"system": HOSP, "code": f"LOCAL-{i}"}) for i in range(40)]
    config = make_config(write_ndjson(tmp_path / "src" / "obs.ndjson", *observations))
    land_stage(config)
    convert_stage(config)
    normalize_stage(config)
    assert len(bulk) == 1  # the table's systems and codes, read from its text in SQL
    assert {f"LOCAL-{i}" for i in range(40)} <= bulk[0][1] and HOSP in bulk[0][0]
    assert single == []  # no decision had to ask for a pair of its own

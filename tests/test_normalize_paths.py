"""The set-prefetched normalize stage against the per-resource walk it replaced: same resources, same log."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import orjson
import pytest

from pipelines.common.warehouse import open_warehouse, resource_tables
from pipelines.demo import generate_demo_data
from pipelines.normalize import (
    build_normalizer,
    load_default_terminology,
    normalize_all,
    normalize_stage,
    parse_exact,
    write_mapping_log,
)
from pipelines.run import convert_stage, land_stage
from terminology.normalize import iter_pairs
from tests.conftest import resource, write_ndjson
from tests.terminology_builders import LOINC, load_terms, write_crosswalk

HOSP = "http://hospital.example.org/lab-codes"
UCUM = "http://unitsofmeasure.org"


def reference_normalize(con: duckdb.DuckDBPyConnection, run_id: str, warehouse: Path) -> None:
    """The walk as it was: every resource parsed exactly, normalized, serialized and compared."""
    load_default_terminology(con)
    normalizer, _ = build_normalizer(con, warehouse)
    for table in resource_tables(con):
        rows = con.execute(
            f'SELECT rowid, resource::VARCHAR, source_system FROM fhir."{table}" ORDER BY rowid'
        ).fetchall()
        parsed = [(rid, src, *parse_exact(text)) for rid, text, src in rows]
        normalizer.prefetch(p for _, _, doc, _ in parsed for p in iter_pairs(doc))
        for rid, src, doc, baseline in parsed:
            out = orjson.dumps(normalizer.normalize(doc, src))
            if out != baseline:
                con.execute(
                    f'UPDATE fhir."{table}" SET resource = ?::JSON WHERE rowid = ?', [out.decode(), rid]
                )
    write_mapping_log(con, run_id, normalizer)


def snapshot(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, list[tuple]]:
    out = {
        table: con.execute(f'SELECT rowid, resource::VARCHAR FROM fhir."{table}" ORDER BY rowid').fetchall()
        for table in resource_tables(con)
    }
    out["mapping_log"] = con.execute(
        "SELECT * EXCLUDE (run_id) FROM ops.mapping_log WHERE run_id = ? ORDER BY ALL", [run_id]
    ).fetchall()
    return out


def assert_both_paths_agree(config, tmp_path: Path) -> dict[str, list[tuple]]:
    """Converts, then normalizes one copy of the warehouse each way (twice: the second pass strips and
    re-derives what the first added); returns the final snapshot."""
    land_stage(config)
    convert_stage(config)
    old = tmp_path / "old.duckdb"
    shutil.copy(config.warehouse, old)
    normalize_stage(config)
    with duckdb.connect(str(old)) as con:
        reference_normalize(con, config.run_id, config.warehouse)
        want = snapshot(con, config.run_id)
    with open_warehouse(config.warehouse, read_only=True) as con:
        got = snapshot(con, config.run_id)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == want[key], key
    assert want["mapping_log"], "nothing was normalized: the comparison would prove nothing"
    with open_warehouse(config.warehouse) as con:
        counts = normalize_all(con, "again", config.warehouse)
        again = snapshot(con, "again")
    assert counts["rewritten"] == 0
    with duckdb.connect(str(old)) as con:
        reference_normalize(con, "again", config.warehouse)
        assert snapshot(con, "again") == again
    return got


def test_edge_cases_give_the_same_bytes_and_log(tmp_path, make_config, monkeypatch):
    monkeypatch.setenv("EHRLIFT_CROSSWALKS", str(tmp_path / "crosswalks"))
    write_crosswalk(
        tmp_path / "crosswalks" / "lab.csv",
        (HOSP, "GLU", "GLUCOSE", LOINC, "2345-7", "equivalent", "a.author", "r.reviewer", "2026-01-05", "1"),
        (HOSP, "K/S", "", LOINC, "2345-7", "equivalent", "a.author", "r.reviewer", "2026-01-05", "1"),
    )
    glu = {"system": HOSP, "code": "GLU", "display": "GLUCOSE"}
    config = make_config(
        write_ndjson(
            tmp_path / "src" / "Observation.ndjson",
            # A decimal with a trailing zero and spacing: kept verbatim in the rewritten text.
            '{"resourceType":"Observation","id":"o1","status":"final","code":{"coding":[{"system":"'
            + HOSP
            + '","code":"GLU","display":"GLUCOSE"}]},"valueQuantity":{"value":7.10,"unit":"mg/dl"}}',
            # An integer beyond 64 bits: only the exact parser reads it.
            '{"resourceType":"Observation","id":"o2","status":"final","code":{"coding":[{"system":"'
            + HOSP
            + '","code":"GLU"}]},"valueInteger":123456789012345678901234567890}',
            # A code written with an escaped slash: the text scan does not see it, the walk decides it.
            '{"resourceType":"Observation","id":"o3","status":"final","code":{"coding":[{"system":"'
            + HOSP
            + '","code":"K\\/S"}]}}',
            resource(
                "Observation",
                "o4",
                status="final",
                code={"coding": [glu, {"system": LOINC, "code": "1111-4"}]},
            ),
            resource("Observation", "o5", status="final", code={"coding": [{"system": HOSP, "code": "ZZZ"}]}),
            resource(
                "Observation",
                "o6",
                status="final",
                code={"coding": [{"system": LOINC, "code": "2345-7"}]},
                valueQuantity={"value": 1.5, "system": UCUM, "code": "mg/dL"},
            ),
        ),
        source_system="labsys",
    )
    with open_warehouse(config.warehouse) as con:
        load_terms(
            con,
            [(LOINC, "2345-7", "Glucose", "active"), (LOINC, "1111-4", "Retired", "inactive")],
            versions={LOINC: "2.78"},
            replacements=[(LOINC, "1111-4", "2345-7", "MAP_TO")],
        )
    got = assert_both_paths_agree(config, tmp_path)
    docs = [doc for _, doc in got["Observation"]]
    assert sum('"value":7.10,' in d for d in docs) == 1
    assert sum("123456789012345678901234567890" in d for d in docs) == 1
    assert sum('"code":"2345-7","display":"Glucose"' in d for d in docs) == 4  # o1, o2, o3, o4


def test_the_demo_gives_the_same_bytes_and_log(tmp_path, make_config):
    generate_demo_data(tmp_path / "demo", patients=3, seed=5, hl7v2=True, ccda=True, dstu2=True)
    config = make_config(tmp_path / "demo" / "sources", source_system="demo")
    got = assert_both_paths_agree(config, tmp_path)
    assert sum(len(rows) for key, rows in got.items() if key != "mapping_log") > 100


_BULK = "fhir-r4/sample-bulk-fhir-datasets/10-patients/"
_VALIDATOR = "ccda/reference-ccda-validator/src/test/resources/"


@pytest.mark.parametrize(
    "samples",
    [
        [_BULK + f"{t}.000.ndjson" for t in ("Condition", "Immunization", "MedicationRequest", "Procedure")],
        [_VALIDATOR + f for f in ("C-CDA_R2-1_CCD_EF.xml", "2023SVAPCCD.xml", "ReferralNote.xml")],
        ["hl7v2/python-hl7"],
    ],
    ids=["ndjson", "ccda", "hl7v2"],
)
def test_corpus_samples_give_the_same_bytes_and_log(corpus, samples, tmp_path, make_config):
    sources = [corpus / s for s in samples]
    missing = [s for s, p in zip(samples, sources, strict=True) if not p.exists()]
    if missing:
        pytest.skip(f"corpus samples absent: {', '.join(missing)}")
    assert_both_paths_agree(make_config(*sources), tmp_path)

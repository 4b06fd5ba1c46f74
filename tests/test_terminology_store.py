"""The shipped default terminology in the warehouse, user releases over it, and the terminology commands."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import duckdb
import pytest

from pipelines.cli import main
from pipelines.common.warehouse import apply_contract, open_warehouse
from terminology.loaders import load_release
from terminology.store import (
    DEFAULT_DIR,
    changed_in_warehouse,
    default_sources,
    ensure_default,
    releases,
    status,
)

FIX = Path(__file__).parent / "fixtures" / "terminology"


@pytest.fixture
def con():
    c = duckdb.connect()
    apply_contract(c)
    yield c
    c.close()


def counts(con) -> dict[str, int]:
    return {
        t: con.execute(f"SELECT count(*) FROM terminology.{t}").fetchone()[0]
        for t in ("concepts", "designations", "properties", "releases")
    }


def test_default_loads_once_with_the_shipped_counts(con) -> None:
    ensure_default(con)
    shipped = duckdb.connect()
    expected = {
        t: shipped.execute(f"SELECT count(*) FROM '{DEFAULT_DIR / (t + '.parquet')}'").fetchone()[0]
        for t in ("concepts", "designations", "properties", "releases")
    }
    assert counts(con) == expected
    ensure_default(con)
    assert counts(con) == expected  # idempotent
    by_system = {s["system"]: s for s in status(con)["systems"]}
    assert by_system["http://hl7.org/fhir/sid/icd-10-cm"]["concepts"] > 90_000
    assert by_system["http://snomed.info/sct"]["content"] == "fragment"
    assert by_system["http://snomed.info/sct"]["concepts"] >= 26_000  # the Global Patient Set
    assert by_system["http://unitsofmeasure.org"]["concepts"] > 800
    assert by_system["http://terminology.hl7.org/CodeSystem/v2-0203"]["kind"] == "default"
    assert con.execute(
        "SELECT display, status FROM terminology.concepts "
        "WHERE system = 'http://hl7.org/fhir/sid/icd-10-cm' AND code = 'E11.9'"
    ).fetchall() == [("Type 2 diabetes mellitus without complications", "active")]
    assert con.execute(
        "SELECT count(*) FROM terminology.concepts "
        "WHERE system = 'http://unitsofmeasure.org' AND code = 'mg/dL'"
    ).fetchone() == (1,)


def test_sources_record_versions_licences_and_hashes() -> None:
    meta = default_sources()
    names = [s["name"] for s in meta["sources"]]
    assert names[0] == "hl7.terminology.r4" and len(names) == 5
    # The US Core codes ehrlift writes itself are in the default, from their curated file.
    us_core = meta["sources"][-1]
    assert (
        us_core["sha256"]
        == hashlib.sha256((DEFAULT_DIR.parent / "us_core_codes.csv").read_bytes()).hexdigest()
    )
    for source in meta["sources"]:
        assert source["version"] and source["licence"] and len(source["sha256"]) == 64
    total = sum(p.stat().st_size for p in DEFAULT_DIR.iterdir())
    assert total < 15_000_000
    assert json.loads((DEFAULT_DIR / "sources.json").read_text())["tables"].keys() == {
        "concepts",
        "designations",
        "properties",
        "releases",
    }


def test_user_release_replaces_the_default_and_survives_a_new_default(con) -> None:
    ensure_default(con)
    report = load_release(con, "loinc", FIX / "loinc" / "Loinc_9.01")
    assert report.previous_version is not None and report.previous_version.startswith("codes enumerated")
    assert con.execute(
        "SELECT count(*) FROM terminology.concepts WHERE system = 'http://loinc.org'"
    ).fetchone() == (5,)
    # A newer shipped default (a new content hash) must not overwrite the user's LOINC release.
    con.execute("UPDATE terminology.releases SET sha256 = 'older' WHERE kind = 'default'")
    ensure_default(con)
    active = [
        (r["kind"], r["version"]) for r in releases(con) if r["system"] == "http://loinc.org" and r["active"]
    ]
    assert active == [("loinc", "9.01")]
    assert con.execute(
        "SELECT count(*) FROM terminology.concepts WHERE system = 'http://loinc.org'"
    ).fetchone() == (5,)


def test_changed_codes_present_in_the_mapping_log(tmp_path: Path) -> None:
    con = open_warehouse(tmp_path / "w.duckdb")
    try:
        load_release(con, "loinc", FIX / "loinc" / "Loinc_9.01")
        con.execute(
            "INSERT INTO ops.mapping_log "
            "(run_id, source_system, source_code, target_system, target_code, method) "
            "VALUES ('r1', 'http://hospital.example/lab', 'NA', 'http://loinc.org', '99902-9', 'crosswalk'), "
            "('r1', 'http://loinc.org', '99901-1', 'http://loinc.org', '99901-1', 'exact')"
        )
        report = load_release(con, "loinc", FIX / "loinc" / "Loinc_9.02")
        assert changed_in_warehouse(con, report.changed) == (1, ["http://loinc.org|99902-9"])
    finally:
        con.close()


def test_cli_load_and_status(tmp_path: Path, capsys) -> None:
    wh = tmp_path / "w.duckdb"
    assert (
        main(["terminology", "load", "loinc", str(FIX / "loinc" / "Loinc_9.01"), "--warehouse", str(wh)]) == 0
    )
    assert (
        main(["terminology", "load", "loinc", str(FIX / "loinc" / "Loinc_9.02"), "--warehouse", str(wh)]) == 0
    )
    text = capsys.readouterr().out
    assert "loaded loinc 9.02 for http://loinc.org, replacing 9.01" in text
    assert "1 code(s) changed status or replacement since the previous release" in text
    assert "0 of them appear in the warehouse's mapping log" in text
    assert (
        main(["terminology", "load", "loinc", str(FIX / "loinc" / "Loinc_9.02"), "--warehouse", str(wh)]) == 0
    )
    assert "already the release in force: nothing done" in capsys.readouterr().out
    assert main(["terminology", "status", "--warehouse", str(wh)]) == 0
    text = capsys.readouterr().out
    assert "http://loinc.org  loinc 9.02 (complete): 6 concepts, 2 inactive, 2 replacements" in text
    assert "http://hl7.org/fhir/sid/icd-10-cm  default" in text


def test_cli_status_of_a_warehouse_without_terminology(tmp_path: Path, capsys) -> None:
    wh = tmp_path / "w.duckdb"
    open_warehouse(wh).close()
    assert main(["terminology", "status", "--warehouse", str(wh)]) == 0
    assert "no terminology in this warehouse yet" in capsys.readouterr().out
    assert main(["terminology", "status", "--warehouse", str(tmp_path / "missing.duckdb")]) == 4


def test_cli_load_of_a_corrupt_release_exits_with_terminology_status(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "cvx.txt"
    bad.write_text("03|MMR\n", encoding="utf-8")
    assert main(["terminology", "load", "cvx", str(bad), "--warehouse", str(tmp_path / "w.duckdb")]) == 6
    assert "cvx.txt line 1: 2 fields" in capsys.readouterr().err


def test_a_new_release_renormalizes_the_records_holding_a_code_it_retired(tmp_path, make_config, capsys):
    from pipelines.run import run_pipeline
    from tests.conftest import resource, write_ndjson

    obs = resource(
        "Observation",
        "o1",
        status="final",
        code={"coding": [{"system": "http://loinc.org", "code": "99902-9"}]},
    )
    config = make_config(write_ndjson(tmp_path / "src" / "Observation.ndjson", obs))
    wh = str(config.warehouse)
    assert main(["terminology", "load", "loinc", str(FIX / "loinc" / "Loinc_9.01"), "--warehouse", wh]) == 0
    run_pipeline(config)

    def codings() -> list[tuple[str, str | None]]:
        with open_warehouse(config.warehouse, read_only=True) as con:
            stored = json.loads(con.execute('SELECT resource FROM fhir."Observation"').fetchone()[0])
        return [
            (
                c["code"],
                next((e["valueCode"] for e in c.get("extension", []) if "mapping-method" in e["url"]), None),
            )
            for c in stored["code"]["coding"]
        ]

    assert codings() == [("99902-9", None)]  # active in 9.01: the source coding stands alone
    capsys.readouterr()
    # 9.02 deprecates 99902-9 with MAP_TO 99906-0: the stored Observation gains the replacement.
    assert main(["terminology", "load", "loinc", str(FIX / "loinc" / "Loinc_9.02"), "--warehouse", wh]) == 0
    text = capsys.readouterr().out
    assert "1 of them appear in the warehouse's mapping log" in text
    assert "re-normalized 1 resource(s) holding them (1 rewritten" in text
    assert codings() == [("99902-9", None), ("99906-0", "remap")]

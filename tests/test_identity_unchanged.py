"""Linking is skipped when nothing it depends on changed: same results, no model run, no splink import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from pipelines.common.warehouse import open_warehouse
from pipelines.identity import identify
from pipelines.identity import link as link_module
from pipelines.identity.review import import_decisions
from tests.conftest import REPO
from tests.test_identity_link import MRN, MRN_ALIAS, load, patient, rules_folder

TABLES = {
    "identity_links": "SELECT * FROM ops.identity_links",
    "person_map": "SELECT * FROM ops.person_map",
    "person_records": "SELECT person_id, CAST(resource AS VARCHAR), members, run_id FROM ops.person_records",
}


@pytest.fixture
def con(tmp_path: Path):
    c = open_warehouse(tmp_path / "w.duckdb")
    load(
        c,
        ("hl7v2", patient("a", ids=[(MRN, "1")])),
        ("ccda", patient("b", "Peggy", ids=[(MRN_ALIAS, "1")])),
        ("fhir-ndjson", patient("c", "Wei", "Chen", "1990-01-01", gender="male", zip="60601")),
        ("ccda", patient("d", "Wei", "Chen", "1990-01-01", gender="male", zip="60601", line="9 Elm St")),
    )
    yield c
    c.close()


def snapshot(con, without: tuple[str, ...] = ()) -> dict[str, list]:
    out = {}
    for name, sql in TABLES.items():
        rows = con.execute(sql).df().drop(columns=list(without), errors="ignore")
        out[name] = sorted(map(str, rows.itertuples(index=False)))
    return out


def model_runs(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = link_module.score_pairs

    def counting(con, cfg, records, work):
        calls.append("scored")
        return real(con, cfg, records, work)

    monkeypatch.setattr(link_module, "score_pairs", counting)
    return calls


def test_an_unchanged_run_keeps_the_decisions_without_running_the_model(con, monkeypatch):
    calls = model_runs(monkeypatch)
    first = identify(con, "r1")["link"]
    before = snapshot(con)
    second = identify(con, "r2")["link"]
    assert calls == ["scored"]  # the second run never reached the model
    assert snapshot(con) == before  # every column, run ids and decision times included
    assert first["decided_by"] == "r1" and second["decided_by"] == "r1"
    assert {k: second[k] for k in ("source_patients", "persons", "pairs", "methods", "model_version")} == {
        k: first[k] for k in ("source_patients", "persons", "pairs", "methods", "model_version")
    }
    assert con.execute("SELECT run_id, decided_by FROM ops.identity_runs ORDER BY run_id").fetchall() == [
        ("r1", "r1"),
        ("r2", "r1"),
    ]
    assert con.execute("SELECT count(*) FROM ops.identity_models").fetchone()[0] == 1


def test_the_kept_decisions_are_those_a_forced_run_makes(con):
    identify(con, "r1")
    identify(con, "r2")
    kept = snapshot(con, without=("run_id", "decided_at"))
    forced = identify(con, "r3", force=True)["link"]
    assert forced["decided_by"] == "r3"
    assert snapshot(con, without=("run_id", "decided_at")) == kept


@pytest.mark.parametrize("change", ["patient", "added", "decision", "rules"])
def test_any_change_runs_the_model_again(con, monkeypatch, tmp_path, change):
    calls = model_runs(monkeypatch)
    identify(con, "r1")
    rules = None
    if change == "patient":
        res = patient("d", "Wei", "Chen", "1990-01-02", gender="male", zip="60601", line="9 Elm St")
        con.execute('UPDATE fhir."Patient" SET resource = ? WHERE id = ?', [orjson.dumps(res).decode(), "d"])
    elif change == "added":
        load(con, ("hl7v2", patient("e", "Ruth", "Okafor", "2001-09-17")))
    elif change == "decision":
        path = tmp_path / "decisions.csv"
        path.write_text("left_patient_id,right_patient_id,decision,reviewer\nc,d,no_link,kim\n")
        import_decisions(con, path)
    else:
        rules = rules_folder(tmp_path, thresholds={"review": 0.5})
    result = identify(con, "r2", rules)["link"]
    assert calls == ["scored", "scored"]
    assert result["decided_by"] == "r2"
    assert con.execute("SELECT DISTINCT run_id FROM ops.person_map").fetchall() == [("r2",)]


def test_a_skipped_run_does_not_import_splink(con, tmp_path):
    identify(con, "r1")
    con.close()
    script = f"""
import sys
from pipelines.common.warehouse import open_warehouse
from pipelines.identity import identify
with open_warehouse({str(tmp_path / "w.duckdb")!r}) as con:
    result = identify(con, "r2")
print(result["link"]["decided_by"], "splink" in sys.modules)
"""
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True, timeout=300
    )
    assert out.stdout.split() == ["r1", "False"]

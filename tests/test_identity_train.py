"""Model parameters from the run's data at any size: what the data supports is estimated, the rest is a
prior kept with its reason, saved with the run."""

from __future__ import annotations

import logging
from pathlib import Path

import duckdb
import orjson
import pytest

from pipelines.common.warehouse import open_warehouse
from pipelines.demo.identity_population import iter_population
from pipelines.identity import identify
from pipelines.identity.config import load_config
from tests.conftest import REPO
from tests.identity_digest import linking_digest
from tests.test_identity_link import load, patient, persons, rules_folder


@pytest.fixture
def con(tmp_path: Path):
    c = open_warehouse(tmp_path / "w.duckdb")
    yield c
    c.close()


def small_population(con, people: int, records: int) -> dict[str, str]:
    """Source Patients of the demo's noisy population; returns {patient id: true person}."""
    truth = {}
    rows = []
    for sp in iter_population(3, people, records):
        sp.resource.setdefault("meta", {}).setdefault("lastUpdated", "2024-01-01T00:00:00Z")
        rows.append(("fhir-ndjson", sp.resource))
        truth[sp.resource["id"]] = sp.person
    load(con, *rows)
    return truth


def saved_model(con, run_id: str) -> tuple[str, dict]:
    trained, model = con.execute(
        "SELECT trained, model FROM ops.identity_models WHERE run_id = ?", [run_id]
    ).fetchone()
    return trained, orjson.loads(model)


def check_every_parameter_says_where_it_came_from(estimates: dict) -> None:
    assert estimates["levels"]
    for name, entry in estimates["levels"].items():
        assert set(entry) == {"m", "u"}, name
        for which in ("m", "u"):
            if entry[which]["source"] == "prior":
                assert entry[which]["why"], (name, which)


def test_a_tiny_run_keeps_every_prior_and_says_why(con):
    load(
        con,
        ("hl7v2", patient("a", "William", "Brown", "1975-03-08", gender="male")),
        ("ccda", patient("b", "Bill", "Brown", "1975-03-08", gender="male")),
        ("ccda", patient("c", "Ruth", "Okafor", "2001-09-17")),
    )
    identify(con, "r1")
    trained, model = saved_model(con, "r1")
    estimates = model["parameter_estimates"]
    assert trained == "priors"
    assert estimates["random_pairs"] == 3
    check_every_parameter_says_where_it_came_from(estimates)
    assert {e["u"]["why"] for e in estimates["levels"].values()} == {"only 3 random pairs (fewer than 1000)"}
    assert {e["m"]["why"] for e in estimates["levels"].values()} == {"no EM session had enough blocked pairs"}
    assert estimates["probability_two_random_records_match"]["source"] == "prior"
    assert all(not s["ran"] and "fewer than 1000" in s["why"] for s in estimates["em_sessions"])
    assert persons(con)["a"] == persons(con)["b"] != persons(con)["c"]


def test_a_small_run_samples_u_and_keeps_priors_only_where_the_data_is_thin(con, tmp_path):
    truth = small_population(con, 40, 80)  # about 3,000 random pairs: enough for common levels only
    identify(con, "r1")
    trained, model = saved_model(con, "r1")
    estimates = model["parameter_estimates"]
    n = len(truth)
    assert estimates["random_pairs"] == n * (n - 1) // 2
    check_every_parameter_says_where_it_came_from(estimates)
    u = {name: e["u"] for name, e in estimates["levels"].items()}
    sampled = {name for name, e in u.items() if e["source"] == "sampled"}
    # the levels most random pairs fall in are estimated; levels too rare in 80 records keep the prior
    assert {"given: different", "family: different", "birth_date: different", "sex: exact"} <= sampled
    assert all(u[name]["pairs"] >= 10 for name in sampled)
    assert u["given: transposed"] == {"source": "prior", "why": "level not seen among the random pairs"}
    assert u["given: nickname"]["source"] == "prior"
    assert u["given: nickname"]["why"].endswith("random pairs (fewer than 10)")
    levels = {
        (c["output_column_name"], lv.get("label_for_charts")): lv
        for c in model["comparisons"]
        for lv in c["comparison_levels"]
    }
    assert levels[("given", "different")]["u_probability"] != 0.983  # the prior of model.json
    assert levels[("given", "transposed")]["u_probability"] == 0.0001  # the prior, kept
    assert trained == "u"
    # Random pairs of a small, duplicate-heavy load are often one person's records: a level where they
    # would be too many of its pairs (an exact birth date here) keeps its prior.
    identify(con, "r2", rules_folder(tmp_path, thresholds={"max_match_share_for_u": 0.3}))
    u = {name: e["u"] for name, e in saved_model(con, "r2")[1]["parameter_estimates"]["levels"].items()}
    assert u["birth_date: exact"]["source"] == "prior"
    assert "expected to be one person's records (more than 30%)" in u["birth_date: exact"]["why"]
    assert u["birth_date: different"]["source"] == "sampled"


def test_em_runs_seeded_with_the_priors_when_its_sessions_have_the_pairs(con, tmp_path):
    truth = small_population(con, 40, 80)
    identify(con, "r1", rules_folder(tmp_path, thresholds={"min_pairs_for_em": 5, "min_pairs_for_prior": 1}))
    trained, model = saved_model(con, "r1")
    estimates = model["parameter_estimates"]
    assert trained == "em"
    assert any(s["ran"] for s in estimates["em_sessions"])
    check_every_parameter_says_where_it_came_from(estimates)
    assert any(e["m"]["source"] == "em" for e in estimates["levels"].values())
    assert estimates["probability_two_random_records_match"]["source"] == "deterministic rules"
    # still a sane linkage: no two different people in one person
    mapped = persons(con)
    by_person: dict[str, set[str]] = {}
    for patient_id, person in mapped.items():
        by_person.setdefault(person, set()).add(truth[patient_id])
    assert all(len(people) == 1 for people in by_person.values())


def test_scoring_in_chunks_decides_as_scoring_at_once(con, tmp_path):
    small_population(con, 40, 80)
    identify(con, "r1")
    once = con.execute(
        "SELECT left_patient_id, right_patient_id, method, rule, score, decision FROM ops.identity_links "
        "ORDER BY ALL"
    ).fetchall()
    mapped = persons(con)
    chunked = rules_folder(tmp_path, thresholds={"predict_chunk_records": 20})  # 4 x 4 chunks
    identify(con, "r2", chunked, force=True)
    assert (
        con.execute(
            "SELECT left_patient_id, right_patient_id, method, rule, score, decision FROM ops.identity_links "
            "ORDER BY ALL"
        ).fetchall()
        == once
    )
    assert persons(con) == mapped
    assert (
        con.execute("SELECT pairs_scored FROM ops.identity_models ORDER BY run_id").fetchall()
        == [(con.execute("SELECT pairs_scored FROM ops.identity_models WHERE run_id = 'r1'").fetchone()[0],)]
        * 2
    )
    # nothing of the stage stays behind in the connection
    assert con.execute("SELECT count(*) FROM duckdb_tables() WHERE temporary").fetchone()[0] == 0
    assert (
        con.execute(
            "SELECT count(*) FROM duckdb_views() WHERE temporary AND starts_with(view_name, 'id_')"
        ).fetchone()[0]
        == 0
    )


def test_linking_makes_the_decisions_it_made_before_one_memory_cap(con, tmp_path):
    """The same links, rules, scores (to 6 places) and person ids as the linking with two DuckDBs
    (with the guards it had then: the transposed-twin guard came later and changes a decision here)."""
    small_population(con, 150, 1500)
    guards = [g for g in load_config().guards if g["name"] != "possible_twin_transposed"]
    identify(con, "r1", rules_folder(tmp_path, guards={"guards": guards}))
    golden = orjson.loads((REPO / "tests" / "golden" / "identity" / "decisions.json").read_bytes())
    assert linking_digest(con) == golden["population"]


def test_linking_runs_in_one_duckdb_with_its_scratch_files_in_the_work_folder(con, tmp_path, monkeypatch):
    from pipelines.identity import model
    from pipelines.identity.link import link_patients

    small_population(con, 40, 80)
    work = tmp_path / "work"
    seen: dict[str, object] = {}
    real = model._predict_in_chunks

    def spy(sp, linker, cfg, records, spill):
        # splink's cursor works in the warehouse's own DuckDB (one cap), on a scratch file in `work`
        seen["files"] = [
            r[0] for r in con.execute("SELECT path FROM duckdb_databases() WHERE path IS NOT NULL").fetchall()
        ]
        seen["limit"] = sp.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
        return real(sp, linker, cfg, records, spill)

    monkeypatch.setattr(model, "_predict_in_chunks", spy)
    link_patients(con, "r1", work=work)
    assert any(f.startswith(str(work)) and f.endswith("scoring.duckdb") for f in seen["files"])
    cap = load_config().thresholds["memory_limit"]
    fresh = duckdb.connect()
    fresh.execute(f"SET memory_limit = '{cap}'")
    assert seen["limit"] == fresh.execute("SELECT current_setting('memory_limit')").fetchone()[0]
    assert not work.exists()  # the scratch files, and the folder made for them, go when linking ends
    assert con.execute("SELECT current_setting('memory_limit')").fetchone()[0] != seen["limit"]
    assert not con.execute("SELECT 1 FROM duckdb_databases() WHERE database_name = 'id_scratch'").fetchall()


def test_linking_starts_again_with_a_larger_cap_when_it_runs_out_of_memory(con, tmp_path, caplog):
    small_population(con, 40, 80)
    identify(con, "r1")
    once = con.execute(
        "SELECT left_patient_id, right_patient_id, decision FROM ops.identity_links ORDER BY ALL"
    ).fetchall()
    tight = rules_folder(tmp_path, thresholds={"memory_limit": "1MB", "max_memory_limit": "2GB"})
    with caplog.at_level(logging.WARNING, logger="pipelines.identity.link"):
        identify(con, "r2", tight, force=True)
    retries = [r.getMessage() for r in caplog.records if "memory cap" in r.getMessage()]
    assert retries and retries[0] == "identity linking needs more than its 1 MB memory cap: again with 2 MB"
    assert (
        con.execute(
            "SELECT left_patient_id, right_patient_id, decision FROM ops.identity_links ORDER BY ALL"
        ).fetchall()
        == once
    )


def test_out_of_memory_past_the_largest_cap_stops_the_stage(con, tmp_path):
    small_population(con, 40, 80)
    tight = rules_folder(tmp_path, thresholds={"memory_limit": "1MB", "max_memory_limit": "1MB"})
    with pytest.raises(Exception, match=r"(?i)out of memory"):
        identify(con, "r1", tight)
    assert con.execute("SELECT count(*) FROM ops.person_map").fetchone()[0] == 0


def test_deciding_in_parts_decides_as_deciding_at_once(con, tmp_path):
    small_population(con, 40, 80)
    identify(con, "r1")
    once = linking_digest(con)
    parts = rules_folder(tmp_path, thresholds={"decide_part_pairs": 7})  # many parts of a few pairs
    identify(con, "r2", parts, force=True)
    assert linking_digest(con) == once
    assert con.execute("SELECT count(*) FROM duckdb_tables() WHERE temporary").fetchone()[0] == 0


def test_an_em_session_past_em_max_pairs_learns_from_a_bounded_sample(con, tmp_path):
    small_population(con, 40, 80)
    loose = {"min_pairs_for_em": 5, "min_pairs_for_prior": 1}
    identify(con, "r1", rules_folder(tmp_path / "all", thresholds=loose))
    whole = saved_model(con, "r1")[1]["parameter_estimates"]["em_sessions"]
    assert all("sampled_pairs" not in s for s in whole)  # under em_max_pairs: every blocked pair
    sampled = {**loose, "em_max_pairs": 20}
    identify(con, "r2", rules_folder(tmp_path / "sampled", thresholds=sampled), force=True)
    trained, model = saved_model(con, "r2")
    sessions = model["parameter_estimates"]["em_sessions"]
    assert [s["pairs"] for s in sessions] == [s["pairs"] for s in whole]
    ran = [s for s in sessions if s["ran"]]
    assert ran and all(s["sampled_pairs"] == 20 for s in ran if s["pairs"] > 20)
    assert any("sampled_pairs" in s for s in ran)
    assert trained == "em"
    check_every_parameter_says_where_it_came_from(model["parameter_estimates"])


def test_decide_threads_must_be_a_whole_number(con, tmp_path):
    from pipelines.common.errors import ConfigError

    small_population(con, 40, 80)
    with pytest.raises(ConfigError, match="decide_threads"):
        identify(con, "r1", rules_folder(tmp_path, thresholds={"decide_threads": "2"}))


def test_linking_restores_the_connection_settings_it_changes(con, tmp_path, monkeypatch):
    from pipelines.identity import model

    small_population(con, 40, 80)
    before = con.execute(
        "SELECT current_setting('threads'), current_setting('allocator_flush_threshold')"
    ).fetchall()
    seen = {}
    real = model._predict_in_chunks

    def spy(sp, *args):
        seen["threads"] = sp.execute("SELECT current_setting('threads')").fetchall()[0][0]
        return real(sp, *args)

    monkeypatch.setattr(model, "_predict_in_chunks", spy)
    identify(con, "r1", rules_folder(tmp_path, thresholds={"predict_threads": 1}))
    assert seen["threads"] == 1
    assert (
        con.execute(
            "SELECT current_setting('threads'), current_setting('allocator_flush_threshold')"
        ).fetchall()
        == before
    )


def test_clustering_and_storing_work_under_decide_memory_limit_with_the_same_decisions(
    con, tmp_path, monkeypatch
):
    from pipelines.identity import link

    small_population(con, 40, 80)
    identify(con, "r1", rules_folder(tmp_path / "one", thresholds={"decide_memory_limit": "128MB"}))
    once = linking_digest(con)
    seen: dict[str, object] = {}
    real = link.cluster

    def spy(c):
        seen["limit"] = c.execute("SELECT current_setting('memory_limit')").fetchone()[0]
        seen["threads"] = c.execute("SELECT current_setting('threads')").fetchone()[0]
        # the decisions are read from Parquet parts, and the pairs carry integer node numbers
        seen["decisions"] = c.execute(
            "SELECT count(*) FROM duckdb_views() WHERE temporary AND view_name = 'id_decisions'"
        ).fetchone()[0]
        seen["types"] = c.execute("SELECT typeof(l), typeof(r) FROM id_decisions LIMIT 1").fetchone()
        return real(c)

    monkeypatch.setattr(link, "cluster", spy)
    identify(
        con, "r2", rules_folder(tmp_path / "two", thresholds={"decide_memory_limit": "48MB"}), force=True
    )
    fresh = duckdb.connect()
    fresh.execute("SET memory_limit = '48MB'")
    assert seen["limit"] == fresh.execute("SELECT current_setting('memory_limit')").fetchone()[0]
    assert seen["threads"] == 1  # decide_threads
    assert seen["decisions"] == 1 and seen["types"] == ("INTEGER", "INTEGER")
    assert linking_digest(con) == once
    assert con.execute("SELECT count(*) FROM duckdb_tables() WHERE temporary").fetchone()[0] == 0

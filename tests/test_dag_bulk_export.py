"""The bulk_export DAG: its wiring, and its task callables run in order against the loopback server."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from pipelines import tasks as stages
from pipelines.common.errors import ConfigError
from pipelines.export.scheduled import export_options
from pipelines.export.state import ExportState
from tests.bulk_server import BulkServer, generated_resources
from tests.conftest import REPO
from tests.test_dag import _airflow_env
from tests.test_export import T0, file_gets
from tests.test_export_auth import _jwks


def test_dagbag_wires_export_before_the_stages_and_finish_before_validate(tmp_path: Path):
    script = """
import json
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=DAGS_FOLDER)
dag = bag.dags["bulk_export"]
print(json.dumps({
    "errors": {k: str(v)[:300] for k, v in bag.import_errors.items()},
    "tasks": sorted(t.task_id for t in dag.tasks),
    "upstream": {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks},
    "retries": {t.task_id: t.retries for t in dag.tasks},
    "max_active_runs": dag.max_active_runs,
    "params": sorted(dag.params.keys()),
}))
""".replace("DAGS_FOLDER", repr(str(REPO / "dags")))
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=_airflow_env(tmp_path),
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {
        "errors": {},
        "tasks": [
            "convert",
            "export",
            "finish_export",
            "identify",
            "land",
            "load",
            "normalize",
            "validate",
        ],
        "upstream": {
            "export": [],
            "land": ["export"],
            "convert": ["export", "land"],
            "normalize": ["convert", "export"],
            "identify": ["export", "normalize"],
            "load": ["export", "identify"],
            "finish_export": ["export", "load"],
            "validate": ["export", "finish_export"],
        },
        "retries": {
            "export": 2,
            "land": 2,
            "convert": 2,
            "normalize": 2,
            "identify": 2,
            "load": 2,
            "finish_export": 2,
            "validate": 0,
        },
        "max_active_runs": 1,
        "params": [
            "client_id",
            "fhir_release",
            "group",
            "key_file",
            "method",
            "partial_manifests",
            "patients",
            "scope",
            "server",
            "source_system",
            "type_filters",
            "types",
            "warehouse",
        ],
    }


def scheduled_run(params: dict, *, fail_at: str | None = None) -> dict:
    """The DAG's tasks in its order, as Airflow would call them (each gets the export task's config)."""
    config = stages.bulk_export(params)
    for name in ("land", "convert", "normalize", "identify", "load"):
        if name == fail_at:
            return config  # the stage failed for good: nothing after it runs in this DAG run
        getattr(stages, name)(config)
    finished = stages.finish_bulk_export(config, params)
    assert finished == {"since": config["export"]["transaction_time"], "run_id": config["run_id"]}
    stages.validate(config)
    return config


def counts(con, *types: str) -> dict[str, int]:
    return {t: con.execute(f'SELECT count(*) FROM fhir."{t}"').fetchone()[0] for t in types}


def test_scheduled_runs_are_incremental_and_load_the_warehouse(tmp_path, warehouse):
    params = {
        "server": None,
        "warehouse": str(tmp_path / "data" / "warehouse.duckdb"),
        "source_system": "ehr",
    }
    with BulkServer(generated_resources(3, T0)) as server:
        params["server"] = server.base
        first = scheduled_run(params)
        later = datetime.now(UTC) + timedelta(seconds=5)
        server.touch("Patient", "p1", later, gender="male")
        server.delete_resource("Condition", "c2", later)
        second = scheduled_run(params)
        kickoffs = server.kickoffs("GET")
    assert kickoffs == ["/fhir/$export", "/fhir/$export"]
    assert first["export"]["since_used"] is None
    assert second["export"]["since_used"] == first["export"]["transaction_time"]
    assert second["export"]["files"] == {"output": 1, "error": 1, "deleted": 1}
    assert second["export"]["resources"] == 1
    con = warehouse()
    assert counts(con, "Patient", "Encounter", "Observation", "Condition") == {
        "Patient": 3,
        "Encounter": 3,
        "Observation": 6,
        "Condition": 3,
    }
    assert con.execute(
        """SELECT json_extract_string(resource, '$.gender') FROM fhir."Patient" WHERE source_id = 'p1'"""
    ).fetchall() == [("male",)]
    # the identify task ran between normalize and load: every source Patient belongs to one person
    assert con.execute(
        'SELECT count(*), count(DISTINCT m.patient_id) FROM fhir."Patient" p '
        "JOIN ops.person_map m ON m.patient_id = p.id"
    ).fetchone() == (3, 3)
    runs = con.execute("SELECT run_id, status FROM ops.runs ORDER BY run_id").fetchall()
    assert [r[0] for r in runs] == sorted([first["run_id"], second["run_id"]])
    assert {r[1] for r in runs} == {"succeeded"}
    with ExportState(tmp_path / "data" / "exports", export_options(params).key()) as state:
        assert state.since == second["export"]["transaction_time"]
        assert [h["run_id"] for h in state.data["history"]] == [first["run_id"], second["run_id"]]


def test_a_run_whose_stages_failed_is_resumed_not_skipped(tmp_path, warehouse):
    params = {"server": None, "warehouse": str(tmp_path / "data" / "warehouse.duckdb")}
    with BulkServer(generated_resources(2, T0)) as server:
        params["server"] = server.base
        failed = scheduled_run(params, fail_at="convert")
        with ExportState(tmp_path / "data" / "exports", export_options(params).key()) as state:
            assert state.since is None and state.job["downloaded"]  # `_since` did not move on
        fetched = file_gets(server)
        again = scheduled_run(params)
        assert server.kickoffs("GET") == ["/fhir/$export"]  # the same job, not a new export
        assert file_gets(server) == fetched  # nothing downloaded twice
    assert again["export"]["resumed"] and again["export"]["fetched_now"] == 0
    assert again["export"]["transaction_time"] == failed["export"]["transaction_time"]
    assert again["sources"] == failed["sources"]
    assert counts(warehouse(), "Patient", "Observation") == {"Patient": 2, "Observation": 4}


def test_settings_come_from_the_environment_and_no_secret_is_logged(tmp_path, monkeypatch, caplog, warehouse):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = tmp_path / "private.jwks.json"
    key_file.write_bytes(orjson.dumps(_jwks(key, "k-rsa", "RS384", True)))
    data = generated_resources(4, T0)
    with BulkServer(data, groups={"g1": {"p1", "p3"}}, require_auth=True) as server:
        server.register_client("client-1", _jwks(key, "k-rsa", "RS384", False))
        monkeypatch.setenv("EHRLIFT_EXPORT_SERVER", server.base)
        monkeypatch.setenv("EHRLIFT_EXPORT_GROUP", "g1")
        monkeypatch.setenv("EHRLIFT_EXPORT_CLIENT_ID", "client-1")
        monkeypatch.setenv("EHRLIFT_EXPORT_KEY", str(key_file))
        monkeypatch.setenv("EHRLIFT_WAREHOUSE", str(tmp_path / "data" / "warehouse.duckdb"))
        params = {"server": None, "scope": None, "patients": [], "partial_manifests": True, "types": []}
        with caplog.at_level(logging.DEBUG):
            config = scheduled_run(params)
        assert server.requests("GET", "/fhir/Group/") == ["/fhir/Group/g1/$export"]
        assert all(server.with_token("/jobs/")) and all(server.with_token("/files/"))
        tokens = list(server.tokens)
    assert config["export"]["resources"] == 10  # two patients' compartments
    # The loopback server's own Authlib logs the tokens it issues; the client's side is what counts here.
    ours = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("authlib"))
    shown = ours + json.dumps(config)
    assert tokens and not any(t in shown for t in tokens)
    assert "PRIVATE" not in shown and '"d"' not in shown
    assert counts(warehouse(), "Patient") == {"Patient": 2}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "no FHIR server"),
        ({"server": "https://fhir.example.org", "scope": "everything"}, "scope must be one of"),
        ({"server": "https://fhir.example.org", "scope": "group"}, "needs a group id"),
    ],
)
def test_missing_or_wrong_settings_are_config_errors(params, message, monkeypatch):
    for name in ("EHRLIFT_EXPORT_SERVER", "EHRLIFT_EXPORT_SCOPE", "EHRLIFT_EXPORT_GROUP"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match=message):
        export_options(params)


def test_finish_refuses_a_job_that_was_not_downloaded(tmp_path):
    params = {"server": "https://fhir.example.org", "warehouse": str(tmp_path / "w.duckdb")}
    with pytest.raises(ConfigError, match="no downloaded export"):
        stages.finish_bulk_export({"export": {"transaction_time": "x"}, "run_id": "r"}, params)


@pytest.mark.airflow
def test_dag_test_exports_and_loads_end_to_end(tmp_path: Path):
    warehouse = tmp_path / "wh" / "warehouse.duckdb"
    env = _airflow_env(tmp_path)
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=env,
        capture_output=True,
        check=True,
        timeout=600,
    )
    with BulkServer(generated_resources(2, T0), lifetime=600) as server:
        conf = {"server": server.base, "warehouse": str(warehouse), "partial_manifests": True}
        script = f"""
import sys
sys.path.insert(0, {str(REPO / "dags")!r})
from bulk_export import bulk_export
run = bulk_export().test(run_conf={conf!r})
print("STATE", run.state)
"""
        out = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
        )
        assert "STATE success" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
        assert server.kickoffs("GET") == ["/fhir/$export"]
        assert file_gets(server) == Counter(
            {"Condition.ndjson": 1, "Encounter.ndjson": 1, "Observation.ndjson": 1, "Patient.ndjson": 1}
            | {"errors.ndjson": 1}
        )
    import duckdb

    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        assert con.execute('SELECT count(*) FROM fhir."Observation"').fetchone() == (4,)
        assert con.execute("SELECT status FROM ops.runs").fetchall() == [("succeeded",)]
    finally:
        con.close()

"""The backload DAG: clean import, plan -> send wiring, the pool that bounds requests; its task functions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pipelines import tasks as stages
from tests.backload_builders import build_warehouse, patient
from tests.backload_server import FhirServer
from tests.conftest import REPO
from tests.test_dag import _airflow_env


def test_backload_dag_imports_and_wires_plan_then_send(tmp_path: Path):
    script = """
import json, duckdb
def refuse(*a, **k):
    raise AssertionError("work at DAG parse time")
duckdb.connect = refuse
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=DAGS_FOLDER)
dag = bag.dags["backload"]
print(json.dumps({
    "errors": {k: str(v)[:300] for k, v in bag.import_errors.items()},
    "tasks": sorted(t.task_id for t in dag.tasks),
    "upstream_of_send": sorted(dag.get_task("send").upstream_task_ids),
    "pool": dag.get_task("send").pool,
    "pool_slots": dag.get_task("send").pool_slots,
    "concurrency_max": dag.params.get_param("concurrency").schema["maximum"],
    "hl7_pool": dag.get_task("send_hl7").pool,
    "upstream_of_hl7": sorted(dag.get_task("send_hl7").upstream_task_ids),
    "plan_retries": dag.get_task("plan").retries,
    "params": sorted(dag.params.keys()),
    "max_active_runs": dag.max_active_runs,
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
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {
        "errors": {},
        "tasks": ["plan", "send", "send_hl7"],
        "upstream_of_send": ["plan", "send_hl7"],
        "pool": "ehrlift_backload",
        "pool_slots": 4,  # = BACKLOAD_SEND_SLOTS: the most requests the send task has in flight
        "concurrency_max": 4,
        "hl7_pool": "ehrlift_hl7",
        "upstream_of_hl7": ["plan"],
        "plan_retries": 0,
        "params": [
            "concurrency",
            "dry_run",
            "hl7_connections",
            "hl7_messages",
            "hl7_part_size",
            "hl7_to",
            "hl7_version",
            "override_reason",
            "profile",
            "server",
            "warehouse",
        ],
        "max_active_runs": 1,
    }


def test_task_functions_plan_and_send(tmp_path: Path):
    wh = build_warehouse(tmp_path / "w.duckdb", [patient("p1", "M1"), patient("p2", "M2")])
    planned = stages.backload_plan({"warehouse": str(wh), "profile": "generic-r4"})
    assert planned["send"] == 2 and planned["profile"] == "generic-r4"
    with FhirServer("generic") as server:
        params = {"server": server.base, "concurrency": 2, "no_auth": True}
        assert stages.backload_send(planned, {**params, "dry_run": True})["would_create"] == 2
        assert server.writes() == 0
        sent = stages.backload_send(planned, params)
        assert sent["created"] == 2 and len(server.search("Patient")) == 2
        assert server.writes() == 1  # one transaction Bundle
        assert stages.backload_send(planned, params) == {"plan_id": planned["plan_id"], "planned_writes": 2}


def test_requests_in_flight_never_exceed_the_pool_slots_the_task_holds(tmp_path: Path):
    """The pool bounds requests: a run asking for 16 at once with 2 slots has at most 2 writes in flight."""
    patients = [patient(f"p{n}", f"M{n}") for n in range(24)]
    wh = build_warehouse(tmp_path / "w.duckdb", patients)
    planned = stages.backload_plan({"warehouse": str(wh), "profile": "millennium-r4"})
    with FhirServer("millennium") as server:
        server.faults(delayMs=40)  # slow writes, so the sender would overlap as many as it may
        params = {"server": server.base, "concurrency": 16, "no_auth": True}
        assert stages.backload_send(planned, params, 2)["created"] == 24
        assert server.stats()["maxInflight"] == 2
    wh2 = build_warehouse(tmp_path / "w2.duckdb", patients)
    planned = stages.backload_plan({"warehouse": str(wh2), "profile": "millennium-r4"})
    with FhirServer("millennium") as server:
        server.faults(delayMs=40)
        assert stages.backload_send(planned, {**params, "server": server.base}, 6)["created"] == 24
        assert server.stats()["maxInflight"] == 6  # the bound is the slots, not a fixed limit

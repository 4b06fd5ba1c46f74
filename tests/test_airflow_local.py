"""`make airflow`'s launcher for real: Airflow's components on loopback, the migration DAG triggered
through the REST API, the run succeeded and its report written, nothing listening beyond loopback."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import httpx
import psutil
import pytest

from pipelines.demo import generate_demo_data
from pipelines.orchestration.local_airflow import PASSWORDS, airflow_env, prepare, start, stop

pytestmark = pytest.mark.airflow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(check, what: str, seconds: float, logs: Path):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            result = check()
        except (httpx.HTTPError, OSError, ValueError):
            result = None
        if result:
            return result
        time.sleep(1)
    tails = "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in logs.glob("*.log"))
    raise AssertionError(f"gave up waiting for {what}\n{tails}")


def _listening(procs) -> set[str]:
    """Addresses the launcher's processes and their children listen on."""
    found = set()
    for proc in procs.values():
        try:
            family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for p in family:
            try:
                conns = p.net_connections(kind="inet")
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            found |= {c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN}
    return found


def test_the_migration_dag_runs_through_the_rest_api_on_a_loopback_airflow(tmp_path):
    src = tmp_path / "src"
    generate_demo_data(src, patients=3, seed=11)
    port = _free_port()
    env = airflow_env(tmp_path / "airflow", port)
    logs = tmp_path / "airflow" / "component-logs"
    prepare(env)
    procs = start(env, logs)
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        _wait_for(lambda: api.get("/api/v2/monitor/health").status_code == 200, "the API server", 300, logs)
        password = _wait_for(
            lambda: json.loads((Path(env["AIRFLOW_HOME"]) / PASSWORDS).read_text())["admin"],
            "the admin password file",
            60,
            logs,
        )
        token = api.post("/auth/token", json={"username": "admin", "password": password})
        assert token.status_code in (200, 201), token.text
        api.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
        dag = _wait_for(
            lambda: (r := api.get("/api/v2/dags/ehr_migration")).status_code == 200 and r.json(),
            "the DAG to be parsed",
            300,
            logs,
        )
        assert dag["is_paused"] is False  # runs when first triggered, no unpausing needed

        warehouse = tmp_path / "wh" / "warehouse.duckdb"
        conf = {"sources": [str(src / "sources")], "warehouse": str(warehouse), "source_system": "demo"}
        made = api.post("/api/v2/dags/ehr_migration/dagRuns", json={"logical_date": None, "conf": conf})
        assert made.status_code == 200, made.text
        run_id = made.json()["dag_run_id"]
        state = _wait_for(
            lambda: (
                (s := api.get(f"/api/v2/dags/ehr_migration/dagRuns/{run_id}").json()["state"])
                in ("success", "failed")
                and s
            ),
            "the DAG run to finish",
            900,
            logs,
        )
        assert state == "success", api.get(f"/api/v2/dags/ehr_migration/dagRuns/{run_id}/taskInstances").text
        xcom = api.get(
            f"/api/v2/dags/ehr_migration/dagRuns/{run_id}/taskInstances/report/xcomEntries/return_value"
        )
        assert xcom.status_code == 200, xcom.text
        addresses = _listening(procs)
    finally:
        api.close()
        stop(procs)

    summary = xcom.json()["value"]
    summary = json.loads(summary) if isinstance(summary, str) else summary
    assert summary["status"] == "succeeded" and summary["reconciles"] is True
    units = summary["units"]
    assert units["in"] == units["converted"] + units["quarantined"] + units["skipped"] > 0
    assert Path(summary["report"]).is_file() and Path(summary["report"]).is_relative_to(warehouse.parent)
    assert addresses and addresses <= {"127.0.0.1", "::1"}, addresses

"""The migration DAG under the CeleryExecutor with Redis and two workers: chunks spread, same warehouse."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from pipelines.common.config import RunConfig
from pipelines.demo import generate_demo_data
from pipelines.run import run_pipeline
from tests.conftest import REPO

pytestmark = pytest.mark.airflow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(check, what: str, attempts: int, pause: float = 1.0):
    for _ in range(attempts):
        result = check()
        if result:
            return result
        time.sleep(pause)
    raise AssertionError(f"gave up waiting for {what}")


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class _Processes:
    """Every process the test starts, each in its own session so stopping it stops its children."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[subprocess.Popen] = []

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("wb")
        proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.started.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.started):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.started:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def tail(self) -> str:
        return "\n".join(
            f"== {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in sorted(self.logs.glob("*.log"))
        )


@pytest.fixture
def redis_url(tmp_path):
    """Debian's redis-server on a free loopback port, for this test only (`make redis` installs it)."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("no redis-server on PATH: `make test` installs Debian's redis-server when run as root")
    port = _free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_for(lambda: _listening(port), "redis-server", 100, 0.1)
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _sources(root: Path) -> Path:
    src = root / "src"
    generate_demo_data(src / "demo", patients=12, seed=5, hl7v2=True, ccda=True)
    archive = src / "archive" / "adt.hl7"
    archive.parent.mkdir(parents=True)
    archive.write_bytes(
        "".join(
            f"MSH|^~\\&|REG|HOSP|EHR|HOSP|{_when(i)}||ADT^A08^ADT_A01|C{i}|P|2.5.1\r"
            f"PID|1||MRN{i % 150}^^^HOSP^MR||Person{i % 150}^Test{i % 3}||19700101|F\r\n"
            for i in range(400)
        ).encode()
    )
    return src


def _when(i: int) -> str:
    return f"2024{1 + i % 12:02d}{1 + i % 27:02d}0800"


def _narrow_limits(path: Path) -> Path:
    """Small groups and slices, so a test-sized input makes a dozen chunks."""
    limits = json.loads((REPO / "schemas" / "scale_limits.json").read_text())
    limits.update(group_files=6, group_bytes=32 << 10, slice_bytes=32 << 10, slice_units=40, pool_min_bytes=0)
    path.write_text(json.dumps(limits))
    return path


def _contents(warehouse: Path) -> dict[str, list[tuple]]:
    """What the run wrote, without its run id (the two runs have their own)."""
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        types = [
            r[0]
            for r in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'fhir' ORDER BY 1"
            ).fetchall()
        ]
        out = {
            t: con.execute(f'SELECT * EXCLUDE (run_id) FROM fhir."{t}" ORDER BY ALL').fetchall()
            for t in types
        }
        for table, exclude in {
            "ops.ledger": "run_id",
            "ops.quarantine": "run_id, quarantined_at",
            "ops.unconsumed": "run_id",
            "ops.unit_items": "run_id",
            "ops.run_files": "run_id, landing",
        }.items():
            out[table] = con.execute(f"SELECT * EXCLUDE ({exclude}) FROM {table} ORDER BY ALL").fetchall()
        out["status"] = con.execute("SELECT status FROM ops.runs").fetchall()
        return out
    finally:
        con.close()


def _airflow_env(tmp_path: Path, redis: str, limits: Path) -> dict[str, str]:
    home = tmp_path / "airflow"
    home.mkdir()
    api_port = _free_port()
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CELERY__BROKER_URL": f"{redis}/0",
            "AIRFLOW__CELERY__RESULT_BACKEND": f"{redis}/1",
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(api_port),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": os.urandom(32).hex(),
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "EHRLIFT_SCALE_LIMITS": str(limits),
            "PYTHONPATH": str(REPO),
        }
    )
    return env


def test_celery_workers_share_the_chunks_and_the_warehouse_equals_one_process(
    tmp_path, redis_url, monkeypatch
):
    src = _sources(tmp_path)
    limits = _narrow_limits(tmp_path / "limits.json")
    monkeypatch.setenv("EHRLIFT_SCALE_LIMITS", str(limits))
    single = run_pipeline(
        RunConfig(sources=(str(src),), warehouse=tmp_path / "single" / "wh.duckdb", progress=False, workers=1)
    )
    assert single.status in ("succeeded", "blocked")

    env = _airflow_env(tmp_path, redis_url, limits)
    airflow = [sys.executable, "-m", "airflow"]
    for args in (["db", "migrate"], ["pools", "set", "ehrlift_warehouse", "1", "DuckDB has one writer"]):
        subprocess.run(airflow + args, env=env, capture_output=True, check=True, timeout=600)
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = _Processes(logs)
    try:
        procs.start("api", [*airflow, "api-server"], env)
        procs.start("scheduler", [*airflow, "scheduler"], env)
        procs.start("dag-processor", [*airflow, "dag-processor"], env)
        for name in ("w1", "w2"):
            worker_env = env | {
                "EHRLIFT_WORKER_NAME": name,
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(_free_port()),
            }
            args = [*airflow, "celery", "worker", "-H", f"{name}@ehrlift", "-c", "1", "--skip-serve-logs"]
            procs.start(name, args, worker_env)
        _wait_for(lambda: _two_workers(env), "two Celery workers", 180)
        _wait_for(
            lambda: _run([*airflow, "dags", "unpause", "ehr_migration"], env), "the DAG to be parsed", 180
        )
        warehouse = tmp_path / "af" / "wh.duckdb"
        conf = {"sources": [str(src)], "warehouse": str(warehouse), "max_chunks": 12}
        assert _run([*airflow, "dags", "trigger", "ehr_migration", "--conf", json.dumps(conf)], env)
        state = _wait_for(lambda: _dag_run_state(env), "the DAG run to finish", 900)
        assert state == "success", procs.tail()
        chunks = _convert_tasks(env)
    finally:
        procs.stop()

    assert len(chunks) >= 4 and all(state == "success" for _i, state in chunks)
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        workers = {w.split(":")[0] for (w,) in con.execute("SELECT worker FROM ops.stage_batches").fetchall()}
    finally:
        con.close()
    assert workers == {"w1", "w2"}  # chunks converted on both Celery workers
    assert _contents(warehouse) == _contents(tmp_path / "single" / "wh.duckdb")


def _run(args: list[str], env: dict[str, str]) -> bool:
    return subprocess.run(args, env=env, capture_output=True, timeout=300).returncode == 0


def _two_workers(env: dict[str, str]) -> bool:
    script = (
        "from airflow.providers.celery.executors.celery_executor import app\n"
        "print(len(app.control.ping(timeout=2.0)))"
    )
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    return out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == ["2"]


def _metadata(env: dict[str, str]) -> sqlite3.Connection:
    return sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db", timeout=30)


def _dag_run_state(env: dict[str, str]) -> str | None:
    with _metadata(env) as db:
        rows = db.execute("SELECT state FROM dag_run WHERE dag_id = 'ehr_migration'").fetchall()
    return rows[0][0] if rows and rows[0][0] in ("success", "failed") else None


def _convert_tasks(env: dict[str, str]) -> list[tuple[int, str]]:
    with _metadata(env) as db:
        return db.execute(
            "SELECT map_index, state FROM task_instance "
            "WHERE dag_id = 'ehr_migration' AND task_id = 'convert' ORDER BY map_index"
        ).fetchall()

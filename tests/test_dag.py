"""DAG integrity (clean import, no work at parse time, retries, thin wiring) and one real dag.test() run."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, resource, write_ndjson

DAG_FILES = sorted((REPO / "dags").glob("*.py"))
ALLOWED_IMPORTS = {"__future__", "airflow", "pipelines", "datetime"}


def _airflow_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW_HOME": str(tmp_path / "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path / 'airflow' / 'airflow.db'}",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
            "PYTHONPATH": str(REPO),
        }
    )
    return env


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.name)
def test_dag_files_only_wire(dag_file: Path):
    tree = ast.parse(dag_file.read_text())
    assert ast.get_docstring(tree), "every DAG file explains itself in a docstring"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots = {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots = {(node.module or "").split(".")[0]}
        else:
            continue
        assert roots <= ALLOWED_IMPORTS, f"{dag_file.name} imports {roots - ALLOWED_IMPORTS}"
    # Module level: imports, the DAG function and the call that registers it; nothing else runs at parse.
    for stmt in tree.body:
        assert isinstance(stmt, ast.Import | ast.ImportFrom | ast.FunctionDef | ast.Expr), ast.dump(stmt)[:80]
    # Each task body is one call into pipelines/.
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef) and any(
            isinstance(d, ast.Name) and d.id == "task" for d in fn.decorator_list
        ):
            body = [s for s in fn.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
            assert len(body) == 1 and isinstance(body[0], ast.Return), (
                f"task {fn.name} does more than one call"
            )
            call = body[0].value
            assert isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
            assert isinstance(call.func.value, ast.Name) and call.func.value.id == "stages"


def test_dagbag_imports_cleanly_without_touching_files_or_databases(tmp_path: Path):
    # Parse the DAG folder with duckdb.connect and open() of data paths forbidden: parse must do no work.
    script = """
import builtins, json, duckdb
def refuse(*a, **k):
    raise AssertionError("work at DAG parse time")
duckdb.connect = refuse
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=DAGS_FOLDER)
dag = bag.dags["ehr_migration"]
print(json.dumps({
    "errors": {k: str(v)[:300] for k, v in bag.import_errors.items()},
    "tasks": sorted(t.task_id for t in dag.tasks),
    "retries": sorted({t.retries for t in dag.tasks}),
    "max_active_runs": dag.max_active_runs,
    "upstream_of_load": sorted(dag.get_task("load").upstream_task_ids),
    "upstream_of_validate": sorted(dag.get_task("validate").upstream_task_ids),
    "validate_retries": dag.get_task("validate").retries,
    "upstream_of_merge": sorted(dag.get_task("merge").upstream_task_ids),
    "mapped": sorted(t.task_id for t in dag.tasks if hasattr(t, "expand_input")),
    "warehouse_pool": sorted(t.task_id for t in dag.tasks if t.pool == "ehrlift_warehouse"),
    "outlets": {t.task_id: [a.name for a in t.outlets] for t in dag.tasks if t.outlets},
    "upstream_of_report": sorted(dag.get_task("report").upstream_task_ids),
    "report_trigger_rule": getattr(dag.get_task("report").trigger_rule, "value", None),
    "paused_upon_creation": dag.is_paused_upon_creation,
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
            "configure",
            "convert",
            "identify",
            "land",
            "load",
            "merge",
            "normalize",
            "plan",
            "report",
            "validate",
        ],
        "retries": [0, 2],
        "max_active_runs": 1,
        "upstream_of_load": ["configure", "identify"],
        "upstream_of_validate": ["configure", "load"],
        "validate_retries": 0,
        "upstream_of_merge": ["configure", "convert", "plan"],
        "mapped": ["convert"],
        "warehouse_pool": ["identify", "land", "load", "merge", "normalize", "plan", "report", "validate"],
        "outlets": {"land": ["ehrlift_landed"], "convert": ["ehrlift_staged"], "merge": ["ehrlift_merged"]},
        "upstream_of_report": ["configure", "validate"],
        "report_trigger_rule": "all_done",
        "paused_upon_creation": False,
    }


@pytest.mark.airflow
def test_dag_test_runs_the_pipeline_end_to_end(tmp_path: Path):
    src = write_ndjson(tmp_path / "src" / "Patient.ndjson", resource("Patient", "p1"), b"{broken")
    warehouse = tmp_path / "wh" / "warehouse.duckdb"
    env = _airflow_env(tmp_path)
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=env,
        capture_output=True,
        check=True,
        timeout=600,
    )
    script = f"""
import sys
sys.path.insert(0, {str(REPO / "dags")!r})
from ehr_migration import ehr_migration
dag = ehr_migration()
run = dag.test(run_conf={{"sources": [{str(src)!r}], "warehouse": {str(warehouse)!r}, "source_system": "af"}})
print("STATE", run.state)
"""
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert "STATE success" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
    import duckdb

    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        assert con.execute("SELECT outcome, reason FROM ops.ledger ORDER BY unit_position").fetchall() == [
            ("converted", None),
            ("quarantined", "invalid_json"),
        ]
        assert con.execute('SELECT source_system, source_id FROM fhir."Patient"').fetchall() == [("af", "p1")]
        assert con.execute("SELECT status FROM ops.runs").fetchall() == [("succeeded",)]
    finally:
        con.close()

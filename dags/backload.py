"""Airflow DAG for the back-load into the target EHR: plan (from the latest succeeded run), then send.

Triggered by hand (or after ehr_migration) with params server, profile and concurrency. The send task runs
in the Airflow pool `ehrlift_backload`: create it with as many slots as senders the target may see at
once (`airflow pools set ehrlift_backload 1 "back-load senders"`), so requests in flight to the target are
at most slots x concurrency. Credentials come from the environment (EHRLIFT_BACKLOAD_CLIENT_ID, _KEY (a
private key file path), _KID, _TOKEN_URL), never from params. A run blocked by a critical expectation
is refused by the plan task (exit status 7); a failed or killed send resumes on retry without duplicates.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, task

from pipelines import tasks as stages


@dag(
    dag_id="backload",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # one plan and one sender per warehouse: DuckDB has one writer
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5)},
    params={
        "server": Param(None, type=["null", "string"], description="target FHIR base URL"),
        "profile": Param("millennium-r4", type="string", description="terminology/targets/<name>.json"),
        "concurrency": Param(4, type="integer", minimum=1, maximum=64, description="requests in flight"),
        "warehouse": Param(None, type=["null", "string"], description="DuckDB warehouse file"),
        "dry_run": Param(False, type="boolean", description="check capabilities and count; write nothing"),
        "override_reason": Param(
            None, type=["null", "string"], description="plan a run the gate blocked; recorded with the plan"
        ),
    },
    tags=["ehrlift"],
    doc_md=__doc__,
)
def backload():
    @task(retries=0)  # a blocked gate is a verdict on the data: retrying cannot change it
    def plan(params=None) -> dict:
        return stages.backload_plan(params)

    @task(pool="ehrlift_backload", pool_slots=1)
    def send(planned: dict, params=None) -> dict:
        return stages.backload_send(planned, params)

    send(plan())


backload()

"""Airflow DAG for the back-load into the target EHR: plan (from the latest succeeded run), then send.

Triggered by hand (or after ehr_migration) with params server, profile and concurrency. The pool
`ehrlift_backload` bounds requests, not senders: the send task holds BACKLOAD_SEND_SLOTS (pipelines/tasks.py)
pool slots and keeps at most that many requests in flight (the concurrency param may lower it, never raise
it), so create the pool with as many slots as requests the target may see at once (`airflow pools set
ehrlift_backload 4 "requests to the target EHR"`); a smaller pool never runs the task.
Credentials come from the environment (EHRLIFT_BACKLOAD_CLIENT_ID, _KEY (a private key file path), _KID,
_TOKEN_URL), never from params. A run blocked by a critical expectation
is refused by the plan task (exit status 7); a failed or killed send resumes on retry without duplicates.
With param hl7_to (HOST:PORT of the site's inbound MLLP interface) the send_hl7 task also sends ORU/VXU/MDM/
ADT messages, in the pool `ehrlift_hl7` (`airflow pools set ehrlift_hl7 1 "HL7 interface"`): open MLLP
connections are at most slots x hl7_connections; a retry sends only what was not acknowledged.
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
        "concurrency": Param(
            stages.BACKLOAD_SEND_SLOTS,
            type="integer",
            minimum=1,
            maximum=stages.BACKLOAD_SEND_SLOTS,
            description="requests in flight",
        ),
        "warehouse": Param(None, type=["null", "string"], description="DuckDB warehouse file"),
        "dry_run": Param(False, type="boolean", description="check capabilities and count; write nothing"),
        "override_reason": Param(
            None, type=["null", "string"], description="plan a run the gate blocked; recorded with the plan"
        ),
        "hl7_to": Param(None, type=["null", "string"], description="HL7 v2 interface HOST:PORT (MLLP)"),
        "hl7_messages": Param("adt,oru,vxu,mdm", type="string", description="HL7 messages to send"),
        "hl7_version": Param("2.5.1", enum=["2.5.1", "2.3.1"], description="HL7 v2 version"),
        "hl7_connections": Param(1, type="integer", minimum=1, maximum=16, description="MLLP connections"),
        "hl7_part_size": Param(
            20000, type="integer", minimum=1, description="HL7 messages per part of a larger plan (memory)"
        ),
    },
    tags=["ehrlift"],
    doc_md=__doc__,
)
def backload():
    @task(retries=0)  # a blocked gate is a verdict on the data: retrying cannot change it
    def plan(params=None) -> dict:
        return stages.backload_plan(params)

    @task(pool="ehrlift_backload", pool_slots=stages.BACKLOAD_SEND_SLOTS)
    def send(planned: dict, params=None) -> dict:
        return stages.backload_send(planned, params, stages.BACKLOAD_SEND_SLOTS)

    # HL7 v2 feeds (param hl7_to) after the plan's gate check and before the FHIR send: one DuckDB writer at a
    # time. Pool ehrlift_hl7: slots x hl7_connections bounds the connections to the interface.
    @task(pool="ehrlift_hl7", pool_slots=1)
    def send_hl7(params=None) -> dict:
        return stages.backload_hl7(params)

    planned = plan()
    hl7 = send_hl7()
    planned >> hl7
    hl7 >> send(planned)


backload()

"""Airflow DAG for scheduled FHIR bulk exports: export, land, convert, normalize, identify, load, validate.

Each run asks the server only for what changed since the last finished run (`_since`, remembered per
server, scope and selection beside the warehouse). The export task kicks off (or resumes) the job,
polls it and downloads its files; the normal stages then migrate them; `finish_export` moves `_since`
on once they are loaded. If a stage fails for good, the next run resumes the same downloaded job, so
nothing is skipped. The identify task links the source Patients into persons before load, as in
the ehr_migration DAG. Settings come from the params below or, when left empty, from the environment
(EHRLIFT_EXPORT_SERVER, _SCOPE, _GROUP, _CLIENT_ID, _KEY (a private key file path), _KID, _TOKEN_URL);
no secret belongs in a param, this file or the logs.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, task

from pipelines import tasks as stages


@dag(
    dag_id="bulk_export",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # one job per server and scope at a time; DuckDB has one writer
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5)},
    params={
        "server": Param(None, type=["null", "string"], description="FHIR base URL"),
        "scope": Param(None, type=["null", "string"], description="system, patient or group"),
        "group": Param(None, type=["null", "string"], description="Group id (group scope)"),
        "patients": Param([], type="array", description="limit to these Patient ids (POST kick-off)"),
        "types": Param([], type="array", description="_type resource types"),
        "type_filters": Param([], type="array", description="_typeFilter queries"),
        "partial_manifests": Param(False, type="boolean", description="download while the job runs"),
        "method": Param(None, type=["null", "string"], description="get or post (default: automatic)"),
        "client_id": Param(None, type=["null", "string"], description="SMART client id"),
        "key_file": Param(None, type=["null", "string"], description="path of the private key file"),
        "warehouse": Param(None, type=["null", "string"], description="DuckDB warehouse file"),
        "source_system": Param(None, type=["null", "string"], description="source system name"),
        "fhir_release": Param(
            None, type=["null", "string"], description="auto (the server's metadata), dstu2, stu3 or r4"
        ),
    },
    tags=["ehrlift"],
    doc_md=__doc__,
)
def bulk_export():
    @task
    def export(params=None) -> dict:
        return stages.bulk_export(params)

    @task
    def land(config: dict) -> dict:
        return stages.land(config)

    @task
    def convert(config: dict) -> dict:
        return stages.convert(config)

    @task
    def normalize(config: dict) -> dict:
        return stages.normalize(config)

    @task
    def identify(config: dict) -> dict:
        return stages.identify(config)

    @task
    def load(config: dict) -> dict:
        return stages.load(config)

    @task
    def finish_export(config: dict, params=None) -> dict:
        return stages.finish_bulk_export(config, params)

    @task(retries=0)  # a blocked gate is a verdict on the data: retrying cannot change it
    def validate(config: dict) -> dict:
        return stages.validate(config)

    config = export()
    (
        land(config)
        >> convert(config)
        >> normalize(config)
        >> identify(config)
        >> load(config)
        >> finish_export(config)
        >> validate(config)
    )


bulk_export()

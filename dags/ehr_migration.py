"""Airflow DAG for one migration run: configure → land → convert → normalize → identify → load → validate.

Trigger with a config such as {"sources": ["/data/legacy/export"], "source_system": "legacy-lab"}.
Each task is safe to retry: landing is keyed by sha256, each file converts in one transaction,
normalization re-derives what it added, and the load merges whatever is staged in one transaction.
The validate task fails, without retries, when a critical data-quality expectation failed: the run is
then 'blocked' in ops.runs and must not be back-loaded (see ops.validation_results).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, task

from pipelines import tasks as stages


@dag(
    dag_id="ehr_migration",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # DuckDB has one writer: runs of this DAG must not overlap
    default_args={"retries": 2, "retry_delay": timedelta(minutes=1)},
    params={
        "sources": Param([], type="array", description="files or folders to migrate"),
        "warehouse": Param(None, type=["null", "string"], description="DuckDB warehouse file"),
        "source_system": Param(None, type=["null", "string"], description="legacy system name"),
        "fhir_release": Param(
            None,
            type=["null", "string"],
            enum=[None, "auto", "dstu2", "stu3", "r4"],
            description="FHIR release of the sources (default auto, or EHRLIFT_FHIR_RELEASE)",
        ),
    },
    tags=["ehrlift"],
    doc_md=__doc__,
)
def ehr_migration():
    @task
    def configure(params=None) -> dict:
        return stages.configure(
            params["sources"], params["warehouse"], params["source_system"], params.get("fhir_release")
        )

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

    @task(retries=0)  # a blocked gate is a verdict on the data: retrying cannot change it
    def validate(config: dict) -> dict:
        return stages.validate(config)

    config = configure()
    (
        land(config)
        >> convert(config)
        >> normalize(config)
        >> identify(config)
        >> load(config)
        >> validate(config)
    )


ehr_migration()

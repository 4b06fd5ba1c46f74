"""Airflow DAG for one migration run: land → plan → convert ×N → merge → normalize → identify → load →
validate → report (wiring only).

Trigger with a config such as {"sources": ["/data/legacy/export"], "source_system": "legacy-lab"}.
Conversion scales out: `plan` cuts the run's pending files into chunks (the commit groups and archive
slices `ehrlift run` uses), one mapped `convert` task per chunk writes staged Parquet under the stage
folder beside the warehouse (every worker must see it and the landing folder, e.g. on shared storage),
and `merge`, the one writer, commits the batches in plan order, so the warehouse equals a one-machine run.
The tasks that write the warehouse run in the `ehrlift_warehouse` pool: create it with one slot
(`airflow pools set ehrlift_warehouse 1 "DuckDB has one writer"`). Assets link the stages.
Each task is safe to retry: landing is keyed by sha256, a convert task rewrites its own batches, the
merge skips batches it already committed (ops.stage_batches), and normalization re-derives what it added.
The validate task fails, without retries, when a critical data-quality expectation failed: the run is
then 'blocked' in ops.runs and must not be back-loaded (see ops.validation_results). The report task runs
whatever came before it (trigger rule all_done), so a blocked run still gets its compliance report; it
returns the run's counts as `ehrlift run` prints them (units are ledger rows, resources stored resources).
A task whose error a retry cannot change (exit status 3, 5, 6 or 7) fails at once, without retries.
A null `warehouse` param means $EHRLIFT_WAREHOUSE, else $AIRFLOW_HOME/ehrlift-data/warehouse.duckdb.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Asset, Param, dag, task

from pipelines import tasks as stages


@dag(
    dag_id="ehr_migration",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # DuckDB has one writer: runs of this DAG must not overlap
    # Unpaused when first parsed: it has no schedule, so nothing runs until someone triggers it, and a
    # paused DAG would only queue that first trigger silently.
    is_paused_upon_creation=False,
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
        "max_chunks": Param(64, type="integer", minimum=1, description="most convert tasks to map"),
    },
    tags=["ehrlift"],
    doc_md=__doc__,
)
def ehr_migration():
    pool = "ehrlift_warehouse"  # one slot: the tasks that write the warehouse never overlap
    landed = Asset(name="ehrlift_landed", uri="ehrlift://landing")
    staged = Asset(name="ehrlift_staged", uri="ehrlift://stage")
    merged = Asset(name="ehrlift_merged", uri="ehrlift://warehouse/fhir")

    @task
    def configure(params=None) -> dict:
        return stages.configure(
            params["sources"], params["warehouse"], params["source_system"], params.get("fhir_release")
        )

    @task(pool=pool, outlets=[landed])
    def land(config: dict) -> dict:
        return stages.land(config)

    @task(pool=pool, inlets=[landed])
    def plan(config: dict, params=None) -> list:
        return stages.plan_chunks(config, params.get("max_chunks", 64))

    @task(outlets=[staged])  # no pool: convert tasks never open the warehouse
    def convert(config: dict, chunk: dict) -> dict:
        return stages.convert_chunk(config, chunk)

    @task(pool=pool, inlets=[staged], outlets=[merged])
    def merge(config: dict, chunks: list, converted: list) -> dict:
        return stages.merge_chunks(config, chunks)

    @task(pool=pool)
    def normalize(config: dict) -> dict:
        return stages.normalize(config)

    @task(pool=pool)
    def identify(config: dict) -> dict:
        return stages.identify(config)

    @task(pool=pool, inlets=[merged])
    def load(config: dict) -> dict:
        return stages.load(config)

    @task(pool=pool, retries=0)  # a blocked gate is a verdict on the data: retrying cannot change it
    def validate(config: dict) -> dict:
        return stages.validate(config)

    @task(pool=pool, trigger_rule="all_done", retries=0)  # after a blocked or failed stage too
    def report(config: dict) -> dict:
        return stages.report(config)

    config = configure()
    chunks = plan(config)
    land(config) >> chunks
    converted = convert.partial(config=config).expand(chunk=chunks)
    (
        merge(config, chunks, converted)
        >> normalize(config)
        >> identify(config)
        >> load(config)
        >> validate(config)
        >> report(config)
    )


ehr_migration()

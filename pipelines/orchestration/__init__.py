"""Running ehrlift's DAGs on a local Airflow: the loopback-only launcher behind `make airflow`."""

from pipelines.orchestration.local_airflow import airflow_env, serve

__all__ = ["airflow_env", "serve"]

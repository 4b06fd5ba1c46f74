"""The identity stage's one entry point (run, DAG, CLI): link patients, build persons, mark duplicates."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import duckdb

from pipelines.common.config import RunConfig
from pipelines.common.paths import shipped
from pipelines.common.warehouse import open_warehouse
from pipelines.identity.config import load_config
from pipelines.identity.facts import mark_duplicates
from pipelines.identity.link import link_patients, save_model
from pipelines.identity.views import resolve_person_views

log = logging.getLogger(__name__)


def identify(
    con: duckdb.DuckDBPyConnection, run_id: str, rules_dir: Path | None = None, force: bool = False
) -> dict[str, Any]:
    """Link source Patients into persons and mark duplicate facts; returns counts (never record values).

    Linking is skipped (the last decisions stand) when nothing it depends on changed, unless `force`.
    """
    cfg = load_config(rules_dir)
    linked = link_patients(con, run_id, cfg, force=force)
    facts = mark_duplicates(con, cfg, run_id)
    return {"link": linked.to_dict(), "facts": facts, "_model": linked}


def audit_link(con: duckdb.DuckDBPyConnection, run_id: str, result: dict[str, Any]) -> None:
    """A stand-alone link reads fhir.Patient and writes the person tables: one ops.phi_access row.

    Inside a run, the run's own audit row covers the stage.
    """
    from pipelines.deid.audit import record_access

    link = result["link"]
    tables = {
        "fhir.Patient": link["source_patients"],
        "ops.person_records": link["persons"],
        "ops.fact_duplicates": sum(c["duplicates"] for c in result["facts"].values()),
    }
    record_access(con, "identity link", "write", tables, run_id)


def identify_stage(config: RunConfig, rules_dir: Path | None = None) -> dict[str, Any]:
    """The stage between normalize and load; the trained model is saved beside the run's report."""
    with open_warehouse(config.warehouse) as con:
        result = identify(con, config.run_id, rules_dir)
    save_model(
        config.warehouse.parent / "runs" / f"{config.run_id}.identity-model.json", result.pop("_model")
    )
    return result


def refresh_views(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Rebuild the analyst views and resolve them to persons (after a stand-alone link or import)."""
    from pipelines.views.materialize import materialize_views

    views_dir = shipped("schemas") / "views"
    materialize_views(con, views_dir)
    return resolve_person_views(con, views_dir)

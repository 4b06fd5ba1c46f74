"""Linking source Patients into persons: features, rules, the model, decisions, clusters, person records."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from pipelines.identity.config import IdentityConfig, load_config
from pipelines.identity.decide import cluster, decide_pairs
from pipelines.identity.features import build_features
from pipelines.identity.model import empty_scores, score_pairs
from pipelines.identity.person import iter_person_records, map_persons
from pipelines.identity.rules import build_rule_pairs, build_trusted

log = logging.getLogger(__name__)


@dataclass(slots=True)
class LinkResult:
    """Counts only: never a name, identifier or date of any record."""

    source_patients: int = 0
    persons: int = 0
    pairs: dict[str, int] = field(default_factory=dict)  # decision -> count
    methods: dict[str, int] = field(default_factory=dict)  # method -> count of links
    pairs_scored: int = 0
    model_version: str | None = None
    trained: str | None = None
    seconds: float = 0.0
    model: dict[str, Any] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__slots__ if k != "model"}
        return out


def link_patients(
    con: duckdb.DuckDBPyConnection, run_id: str, cfg: IdentityConfig | None = None
) -> LinkResult:
    """Decide every candidate pair, form persons; replace identity_links, person_map, person_records.

    The candidate pairs stay in DuckDB from scoring to storing (TEMP tables id_scored, id_decisions,
    id_comp): memory does not grow with their number.
    """
    started = time.monotonic()
    cfg = cfg or load_config()
    result = LinkResult()
    result.source_patients = build_features(con, cfg)
    build_rule_pairs(con, cfg)
    build_trusted(con, cfg)
    empty_scores(con)
    if result.source_patients >= 2:
        scored = score_pairs(con, cfg, result.source_patients)
        result.pairs_scored, result.model_version, result.trained = (
            scored.compared,
            scored.model_version,
            scored.trained,
        )
        result.model = scored.model
    decide_pairs(con, cfg)
    cluster(con)
    result.persons = map_persons(con, cfg.survivorship)
    result.pairs = dict(
        con.execute("SELECT decision, count(*) FROM id_decisions GROUP BY 1 ORDER BY 1").fetchall()
    )
    result.methods = dict(
        con.execute(
            "SELECT method, count(*) FROM id_decisions WHERE decision = 'link' GROUP BY 1 ORDER BY 1"
        ).fetchall()
    )
    _store(con, run_id, cfg, result)
    result.seconds = round(time.monotonic() - started, 3)
    log.info(
        "identity: %d source patients -> %d persons; pairs %s",
        result.source_patients,
        result.persons,
        result.pairs,
    )
    return result


def _store(con: duckdb.DuckDBPyConnection, run_id: str, cfg: IdentityConfig, result: LinkResult) -> None:
    try:
        con.execute("BEGIN TRANSACTION")
        con.execute("DELETE FROM ops.identity_links")
        con.execute(
            "INSERT INTO ops.identity_links SELECT l, r, method, rule, "
            "CASE WHEN method = 'model' THEN ? END, score, decision, reviewer, ?, now() "
            "FROM id_decisions ORDER BY l, r",
            [result.model_version, run_id],
        )
        con.execute("DELETE FROM ops.person_map")
        con.execute(
            "INSERT INTO ops.person_map SELECT patient_id, person_id, survivor, ? FROM id_person_map "
            "ORDER BY patient_id",
            [run_id],
        )
        con.execute("DELETE FROM ops.person_records")
        for batch in iter_person_records(con, cfg.survivorship, result.persons):
            rows = pa.table(
                {
                    "person": [r[0] for r in batch],
                    "res": [r[1] for r in batch],
                    "n": pa.array([r[2] for r in batch], pa.int32()),
                }
            )
            con.register("id_records_new", rows)
            try:
                con.execute(
                    "INSERT INTO ops.person_records "
                    "SELECT person, CAST(res AS JSON), n, ? FROM id_records_new",
                    [run_id],
                )
            finally:
                con.unregister("id_records_new")
        con.execute("DELETE FROM ops.identity_models WHERE run_id = ?", [run_id])
        if result.model is not None:
            con.execute(
                "INSERT INTO ops.identity_models VALUES (?, ?, ?, ?, ?, ?, ?, now())",
                [
                    run_id,
                    result.model_version,
                    result.trained,
                    cfg.version(),
                    result.source_patients,
                    result.pairs_scored,
                    orjson.dumps(result.model).decode(),
                ],
            )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def save_model(path: Path, result: LinkResult) -> Path | None:
    """The trained model beside the run's report, so a run can be explained later."""
    if result.model is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(result.model, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    return path

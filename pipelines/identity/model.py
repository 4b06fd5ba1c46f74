"""Probabilistic scoring of candidate pairs with splink on DuckDB, the model trained on each run's data."""

from __future__ import annotations

import copy
import hashlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import orjson

from pipelines.identity.config import IdentityConfig

log = logging.getLogger(__name__)
_FEATURES = (
    "unique_id, given, given_nick, family, birth_date, birth_date_swapped, birth_year, sex, postcode, "
    "street, phone, id_tail"
)


@dataclass(slots=True)
class ScoredPairs:
    """The trained model; the pairs at or above the record floor are in the TEMP table id_scored."""

    model_version: str
    model: dict[str, Any]
    trained: str  # em (u sampled, m by EM), u (u sampled only) or priors (model.json as it is)
    compared: int


def empty_scores(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("CREATE OR REPLACE TEMP TABLE id_scored (l VARCHAR, r VARCHAR, score DOUBLE, guard VARCHAR)")


def score_pairs(con: duckdb.DuckDBPyConnection, cfg: IdentityConfig, records: int) -> ScoredPairs:
    """Train (u by sampling; m by EM when the data is large enough) and score the blocked pairs.

    The pairs never pass through Python: splink scores them into a DuckDB table (spilled to disk past
    the memory limit), those over the record floor are written to a Parquet file and read into the
    TEMP table id_scored (l, r, score, guard) of the warehouse connection.
    """
    from splink import DuckDBAPI, Linker

    # splink logs training progress (comparison names and counts only); our own summary lines suffice.
    logging.getLogger("splink").setLevel(logging.ERROR)
    settings = copy.deepcopy(cfg.model)
    settings["blocking_rules_to_generate_predictions"] = list(cfg.blocking)
    t = cfg.thresholds
    features = con.sql(f"SELECT {_FEATURES} FROM id_features").to_arrow_table()
    with tempfile.TemporaryDirectory(prefix="ehrlift-identity-") as spill:
        sp = duckdb.connect(
            ":memory:",
            config={"temp_directory": spill, "threads": 2, "memory_limit": t.get("memory_limit", "1GB")},
        )
        try:
            sp.execute("SET preserve_insertion_order = false")
            db_api = DuckDBAPI(sp)
            linker = Linker(db_api.register(features, table_name="id_features"), settings, log_level=None)
            trained = "priors"
            if records >= int(t.get("min_records_for_u", 200)):
                linker.training.estimate_u_using_random_sampling(
                    max_pairs=float(t.get("u_max_pairs", 1e6)), seed=1
                )
                trained = "u"
            if records >= int(t.get("min_records_for_em", 1000)):
                linker.training.estimate_probability_two_random_records_match(
                    t["prior_blocking_rules"], recall=float(t.get("prior_recall", 0.7))
                )
                for rule in t["em_blocking_rules"]:
                    linker.training.estimate_parameters_using_expectation_maximisation(rule)
                trained = "em"
            model = linker.misc.save_model_to_json()
            version = hashlib.sha256(orjson.dumps(model, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
            # Every blocked pair is scored into a DuckDB table (spilled to disk past the memory limit), so
            # memory does not grow with the number of candidate pairs; only those over the floor come back.
            name = linker.inference.predict().physical_name
            compared = int(sp.execute(f"SELECT count(*) FROM {name}").fetchall()[0][0])
            guard_sql = " ".join(f"WHEN {g['sql']} THEN '{g['name']}'" for g in cfg.guards)
            guard = f"CASE {guard_sql} END" if guard_sql else "CAST(NULL AS VARCHAR)"
            path = Path(spill) / "scored.parquet"
            sp.execute(
                "COPY (SELECT least(unique_id_l, unique_id_r) AS l, "
                f"greatest(unique_id_l, unique_id_r) AS r, match_probability AS score, {guard} AS guard "
                f"FROM {name} WHERE match_probability >= {float(t['record_floor'])!r}) "
                f"TO {_literal(path)} (FORMAT parquet)"
            )
            con.execute(
                "CREATE OR REPLACE TEMP TABLE id_scored AS "
                f"SELECT l, r, score, guard FROM read_parquet({_literal(path)})"
            )
        finally:
            sp.close()
    return ScoredPairs(version, model, trained, compared)


def _literal(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"

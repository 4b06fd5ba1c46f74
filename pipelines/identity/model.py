"""Probabilistic scoring of candidate pairs with splink on DuckDB, the model trained on each run's data."""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import orjson

from pipelines.common.errors import ConfigError
from pipelines.identity.config import IdentityConfig
from pipelines.identity.train import train

log = logging.getLogger(__name__)
_FEATURES = (
    "unique_id, given, given_nick, family, birth_date, birth_date_swapped, birth_year, sex, postcode, "
    "street, phone, id_tail, family_given_like"
)


@dataclass(slots=True)
class ScoredPairs:
    """The trained model; the pairs at or above the record floor are in the TEMP table id_scored."""

    model_version: str
    model: dict[str, Any]
    trained: str  # em (m by EM), u (u sampled, no EM) or priors (nothing could be estimated)
    compared: int


def empty_scores(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("CREATE OR REPLACE TEMP TABLE id_scored (l INTEGER, r INTEGER, score DOUBLE, guard VARCHAR)")


_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(MB|MiB|GB|GiB)\s*", re.IGNORECASE)


def megabytes(text: str) -> int:
    found = _SIZE.fullmatch(str(text))
    if not found:
        raise ConfigError(f"thresholds.json: a memory size must read like 192MB or 2GB, not {text!r}")
    value, unit = float(found.group(1)), found.group(2).upper()
    return int(value * 1024) if unit.startswith("G") else int(value)


def out_of_memory(exc: BaseException | None) -> bool:
    while exc is not None:
        if isinstance(exc, duckdb.OutOfMemoryException):
            return True
        exc = exc.__cause__
    return False


def score_pairs(con: duckdb.DuckDBPyConnection, cfg: IdentityConfig, records: int, work: Path) -> ScoredPairs:
    """Train on the run's data (train.py: what it supports, priors elsewhere) and score the blocked pairs.

    splink runs on a second cursor of the linking's own DuckDB (one buffer pool, one memory cap), its
    tables in a scratch database file in `work` (ATTACHed as id_scratch) so that they are evicted to
    disk rather than held. The pairs never pass through Python: they are scored chunk by chunk, those
    over the record floor written to Parquet files and read into the TEMP table id_scored (l, r, score,
    guard) of the warehouse connection, the pairs as node numbers (id_nodes).
    """
    from splink import DuckDBAPI, Linker

    # splink logs training progress (comparison names and counts only); our own summary lines suffice.
    logging.getLogger("splink").setLevel(logging.ERROR)
    scratch = work / "scoring.duckdb"
    con.execute(f"ATTACH {_literal(scratch)} AS id_scratch")
    order = con.execute("SELECT current_setting('preserve_insertion_order')").fetchall()[0][0]
    sp = con.cursor()
    try:
        con.execute("SET preserve_insertion_order = false")
        con.execute(
            f"CREATE TABLE id_scratch.main.id_features AS SELECT {_FEATURES} FROM temp.id_features "
            "ORDER BY unique_id"
        )
        sp.execute("USE id_scratch")
        db_api = DuckDBAPI(sp)
        frame = db_api.register("id_features", table_name="id_features")
        fitted = train(sp, db_api, frame, cfg, records)
        linker = Linker(frame, fitted.settings, log_level=None)
        model = linker.misc.save_model_to_json()
        model.pop("linker_uid", None)  # random per Linker: the same data and priors give one version
        version = hashlib.sha256(orjson.dumps(model, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
        model["parameter_estimates"] = fitted.estimates  # estimated or prior, and why, per parameter
        # Blocking a chunk joins it on every prediction rule at once, and each join takes buffers per
        # thread whatever the chunk's size: fewer threads here let the chunks fit the cap.
        threads = sp.execute("SELECT current_setting('threads')").fetchall()[0][0]
        sp.execute(f"SET threads = {int(cfg.thresholds.get('predict_threads', threads))}")
        try:
            compared, parts = _predict_in_chunks(sp, linker, cfg, records, work)
        finally:
            sp.execute(f"SET threads = {int(threads)}")
        files = "[" + ", ".join(_literal(p) for p in parts) + "]"
        con.execute(
            "CREATE OR REPLACE TEMP TABLE id_scored AS SELECT a.n AS l, b.n AS r, p.score, p.guard "
            f"FROM read_parquet({files}) p JOIN id_nodes a ON a.id = p.l JOIN id_nodes b ON b.id = p.r"
        )
    finally:
        sp.close()
        con.execute(f"SET preserve_insertion_order = {'true' if order else 'false'}")
        con.execute("DETACH DATABASE IF EXISTS id_scratch")
    return ScoredPairs(version, model, fitted.trained, compared)


def _predict_in_chunks(
    sp: duckdb.DuckDBPyConnection, linker: Any, cfg: IdentityConfig, records: int, spill: Path
) -> tuple[int, list[Path]]:
    """Score the blocked pairs chunk by chunk (splink splits records into n x n slices); each chunk's
    pairs over the record floor go to a Parquet file and its table is dropped, so the pairs held at
    once depend on the chunk size (predict_chunk_records), not on the number of records."""
    t = cfg.thresholds
    n = max(1, math.ceil(records / int(t.get("predict_chunk_records", 20_000))))
    guard_sql = " ".join(f"WHEN {g['sql']} THEN '{g['name']}'" for g in cfg.guards)
    guard = f"CASE {guard_sql} END" if guard_sql else "CAST(NULL AS VARCHAR)"
    compared = 0
    parts: list[Path] = []
    for left, right in itertools.product(range(1, n + 1), repeat=2):
        chunk = linker.inference.predict_chunk(
            left_chunk=(left, n), right_chunk=(right, n), warning_mode="never"
        )
        name = chunk.physical_name
        compared += int(sp.execute(f"SELECT count(*) FROM {name}").fetchall()[0][0])
        path = spill / f"scored-{left}-{right}.parquet"
        sp.execute(
            "COPY (SELECT least(unique_id_l, unique_id_r) AS l, "
            f"greatest(unique_id_l, unique_id_r) AS r, match_probability AS score, {guard} AS guard "
            f"FROM {name} WHERE match_probability >= {float(t['record_floor'])!r}) "
            f"TO {_literal(path)} (FORMAT parquet)"
        )
        chunk.drop_table_from_database_and_remove_from_cache()
        parts.append(path)
    return compared, parts


def _literal(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"

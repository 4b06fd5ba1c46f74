"""Linking source Patients into persons: features, rules, the model, decisions, clusters, person records."""

from __future__ import annotations

import logging
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.common.errors import ConfigError
from pipelines.identity.config import IdentityConfig, load_config
from pipelines.identity.decide import cluster, decide_pairs
from pipelines.identity.features import build_features
from pipelines.identity.inputs import input_digest, record_inputs, standing_decision
from pipelines.identity.model import empty_scores, megabytes, out_of_memory, score_pairs
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
    decided_by: str | None = None  # the run whose decisions stand (an earlier one when nothing changed)
    model: dict[str, Any] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__slots__ if k != "model"}
        return out


def link_patients(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    cfg: IdentityConfig | None = None,
    force: bool = False,
    work: Path | None = None,
) -> LinkResult:
    """Decide every candidate pair, form persons; replace identity_links, person_map, person_records.

    The whole linking runs in the warehouse's DuckDB under one small memory cap (thresholds.json
    memory_limit): one buffer pool holds the features, splink's tables (a scratch database file in a
    work folder, `work` or beside the warehouse) and the TEMP tables of scored pairs, decisions and
    components, and past the cap they spill to disk, so memory does not grow with the number of pairs.
    When no source Patient, reviewer decision or identity data file changed since the last linking, its
    decisions stand: the model is not run (nor splink imported) and the tables are left as they are,
    unless `force`.
    """
    started = time.monotonic()
    cfg = cfg or load_config()
    cap = megabytes(cfg.thresholds.get("memory_limit", "128MB"))
    after = megabytes(cfg.thresholds.get("decide_memory_limit", f"{cap}MB"))
    ceiling = megabytes(cfg.thresholds.get("max_memory_limit", "2GB"))
    root = work or work_folder(con)
    made = root is not None and not root.exists()
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
    try:
        while True:
            try:
                with tempfile.TemporaryDirectory(prefix="identity-", dir=root) as scratch:
                    result = _link(con, run_id, cfg, force, (cap, after), Path(scratch))
                break
            except Exception as exc:
                if not out_of_memory(exc) or cap * 2 > ceiling:
                    raise
                log.warning(
                    "identity linking needs more than its %d MB memory cap: again with %d MB", cap, cap * 2
                )
                cap, after = cap * 2, after * 2
    finally:
        if made and root is not None and not any(root.iterdir()):
            root.rmdir()  # nothing of the linking stays beside the warehouse
    result.seconds = round(time.monotonic() - started, 3)
    log.info(
        "identity: %d source patients -> %d persons; pairs %s",
        result.source_patients,
        result.persons,
        result.pairs,
    )
    return result


def work_folder(con: duckdb.DuckDBPyConnection) -> Path | None:
    """The folder beside the warehouse file for the linking's scratch files (None: the system's temp)."""
    (path,) = con.execute(
        "SELECT path FROM duckdb_databases() WHERE database_name = current_database()"
    ).fetchall()[0]
    return Path(path).parent / "work" if path else None


def _link(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    cfg: IdentityConfig,
    force: bool,
    caps: tuple[int, int],
    work: Path,
) -> LinkResult:
    """One attempt at linking with the warehouse's DuckDB capped at caps[0] MB while it scores, then at
    caps[1] MB while it decides, clusters and stores."""
    cap, after = caps
    previous = con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
    flush = con.execute("SELECT current_setting('allocator_flush_threshold')").fetchall()[0][0]
    threads = con.execute("SELECT current_setting('threads')").fetchall()[0][0]
    con.execute(f"SET memory_limit = '{cap}MB'")
    # Memory a query freed goes back to the system when it ends rather than staying cached by the
    # allocator (128MB by default): otherwise the process holds the cap and that cache on top of it.
    con.execute(
        f"SET allocator_flush_threshold = '{_setting(cfg.thresholds.get('allocator_flush', '16MB'))}'"
    )
    try:
        digest, present = input_digest(con, cfg)
        standing = None if force else standing_decision(con, digest, present)
        if standing is not None:
            result = _standing(con, standing)
            record_inputs(con, run_id, digest, present, standing)
            log.info("identity: no source patient or decision changed; the decisions of an earlier run stand")
            return result
        result = LinkResult()
        result.source_patients = build_features(con, cfg)
        build_rule_pairs(con, cfg)
        build_trusted(con, cfg)
        _drop(con, "id_identifiers", "id_links")
        empty_scores(con)
        if result.source_patients >= 2:
            scored = score_pairs(con, cfg, result.source_patients, work)
            result.pairs_scored, result.model_version, result.trained = (
                scored.compared,
                scored.model_version,
                scored.trained,
            )
            result.model = scored.model
        # What follows holds only what it still reads: every table is dropped after its last use,
        # so that DuckDB's pool does not stay filled (up to its cap) with what grows with the pairs.
        _drop(con, "id_features")
        decide_pairs(con, cfg, work)
        _drop(con, "id_scored", "id_rule_pairs", "id_reviewed")
        # Clustering and storing read the decisions from Parquet and keep integer node numbers, so
        # they work in a smaller pool: one filled to the scoring's cap would hold what grows with
        # the pairs (DuckDB keeps what it read cached up to its cap).
        con.execute(f"SET memory_limit = '{min(cap, after)}MB'")
        # Each thread's hash tables count against the cap: at two, clustering ran out of memory under the
        # smaller cap at 200k source Patients on a quiet machine (and the linking started again at twice it).
        con.execute(f"SET threads = {_count(cfg.thresholds.get('decide_threads', 1))}")
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
        _store(con, run_id, cfg, result, digest, work)
    finally:
        _drop_temp_tables(con)
        con.execute(f"SET threads = {int(threads)}")
        con.execute(f"SET memory_limit = '{_setting(previous)}'")
        con.execute(f"SET allocator_flush_threshold = '{_setting(flush)}'")
    return result


def _drop_temp_tables(con: duckdb.DuckDBPyConnection) -> None:
    """The stage's TEMP tables (features, pairs, decisions) go once stored: a run's connection lives on."""
    for kind, names in (
        ("VIEW", "SELECT view_name FROM duckdb_views() WHERE temporary AND starts_with(view_name, 'id_')"),
        (
            "TABLE",
            "SELECT table_name FROM duckdb_tables() WHERE temporary AND starts_with(table_name, 'id_')",
        ),
    ):
        for (name,) in con.execute(names).fetchall():
            con.execute(f'DROP {kind} IF EXISTS temp."{name}"')


def _drop(con: duckdb.DuckDBPyConnection, *tables: str) -> None:
    for name in tables:
        con.execute(f"DROP TABLE IF EXISTS temp.{name}")


def _count(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError("thresholds.json: decide_threads must be a whole number of at least 1")
    return value


def _setting(value: str) -> str:
    if not re.fullmatch(r"[0-9.]+ ?[A-Za-z]*", value):
        raise ConfigError("thresholds.json: memory_limit and allocator_flush must be sizes such as 128MB")
    return value


def _standing(con: duckdb.DuckDBPyConnection, decided_by: str) -> LinkResult:
    """Counts of the decisions that stand, read back from the tables (nothing is recomputed)."""
    result = LinkResult(decided_by=decided_by)
    result.source_patients, result.persons = con.execute(
        "SELECT count(*), count(DISTINCT person_id) FROM ops.person_map"
    ).fetchall()[0]
    result.pairs = dict(
        con.execute("SELECT decision, count(*) FROM ops.identity_links GROUP BY 1 ORDER BY 1").fetchall()
    )
    result.methods = dict(
        con.execute(
            "SELECT method, count(*) FROM ops.identity_links WHERE decision = 'link' GROUP BY 1 ORDER BY 1"
        ).fetchall()
    )
    model = con.execute(
        "SELECT model_version, trained FROM ops.identity_models WHERE run_id = ?", [decided_by]
    ).fetchall()
    if model:
        result.model_version, result.trained = model[0]
    return result


def _store(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    cfg: IdentityConfig,
    result: LinkResult,
    digest: str,
    work: Path,
) -> None:
    # The person records are assembled before the transaction, batch by batch into a Parquet file in
    # the work folder, and stored in one statement: appended batch by batch inside the transaction,
    # they were held in memory until it committed, a little more for every person.
    records = work / "person_records.parquet"
    schema = pa.schema([("person", pa.string()), ("res", pa.string()), ("n", pa.int32())])
    with pq.ParquetWriter(records, schema) as writer:
        for batch in iter_person_records(con, cfg.survivorship):
            writer.write_table(
                pa.table(
                    {
                        "person": [r[0] for r in batch],
                        "res": [r[1] for r in batch],
                        "n": pa.array([r[2] for r in batch], pa.int32()),
                    },
                    schema=schema,
                )
            )
    # The decisions with their ids back, likewise: the joins' tables are gone before the transaction.
    # No ORDER BY: sorting every pair of a large load holds it whole; readers order.
    links = work / "identity_links.parquet"
    con.execute(
        "COPY (SELECT a.id AS l, b.id AS r, method, rule, score, decision, reviewer FROM id_decisions d "
        f"JOIN id_nodes a ON a.n = d.l JOIN id_nodes b ON b.n = d.r) TO {_literal(links)} "
        "(FORMAT parquet, ROW_GROUP_SIZE 16384)"
    )
    try:
        con.execute("BEGIN TRANSACTION")
        con.execute("DELETE FROM ops.identity_links")
        con.execute(
            "INSERT INTO ops.identity_links SELECT l, r, method, rule, "
            "CASE WHEN method = 'model' THEN ? END, score, decision, reviewer, ?, now() "
            f"FROM read_parquet({_literal(links)})",
            [result.model_version, run_id],
        )
        con.execute("DELETE FROM ops.person_map")
        con.execute(
            "INSERT INTO ops.person_map SELECT patient_id, person_id, survivor, ? FROM id_person_map",
            [run_id],
        )
        con.execute("DELETE FROM ops.person_records")
        con.execute(
            "INSERT INTO ops.person_records SELECT person, CAST(res AS JSON), n, ? "
            f"FROM read_parquet({_literal(records)})",
            [run_id],
        )
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
        record_inputs(con, run_id, digest, result.source_patients, run_id)
        result.decided_by = run_id
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def _literal(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def save_model(path: Path, result: LinkResult) -> Path | None:
    """The trained model beside the run's report, so a run can be explained later."""
    if result.model is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(result.model, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    return path

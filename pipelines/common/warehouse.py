"""Opening the DuckDB warehouse, applying its contract (schemas/warehouse.sql) and resource tables."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from pipelines.common.errors import WarehouseError
from pipelines.common.paths import shipped

# 18: ops.identity_runs (what each patient linking depended on, so an unchanged one is skipped);
# 17: ops.backload_plan.site_changes and .server_id, ops.backload_plans.site (back-load site opt-ins);
# 16: ops.run_owners, ops.stage_marks (resuming every stage after a killed run; orphaned runs);
# 15: ops.retractions (ehrlift retract), ops.gate_overrides (a run's recorded gate override),
# ops.party_versions (versions of merged people and organizations); 14: ops.report_signoffs (sign-offs of
# the compliance report);
# 12: ops.backload_hl7_messages, ops.backload_hl7_results (HL7 v2 back-load over MLLP); 10: CDS Hooks cards
# and feedback; 9: ops.backload_plans, ops.backload_plan, ops.backload_ids, ops.backload_results (back-load);
# 8: identity tables (identity_links, person_map, ...); 7: ops.stage_batches (merges of staged batches
# from other workers); 6: ops.run_stages, ops.validation_counts, ops.views_stale
SCHEMA_VERSION = 18
STORAGE_VERSION = "v1.0.0"  # DuckDB's storage format for new files: readable by DuckDB 1.0 and later
RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")  # also guards table names

RESOURCE_TABLE_DDL = """
CREATE TABLE IF NOT EXISTS fhir."{rtype}" (
    id              VARCHAR NOT NULL,
    resource        JSON NOT NULL,
    source_system   VARCHAR NOT NULL,
    source_id       VARCHAR,
    file_sha256     VARCHAR NOT NULL,
    unit_position   BIGINT NOT NULL,
    run_id          VARCHAR NOT NULL,
    content_sha256  VARCHAR NOT NULL,
    last_updated    VARCHAR,
    reference_only  BOOLEAN NOT NULL DEFAULT FALSE
)
"""


# Warehouses a whole run holds open in this process (held_warehouse): path -> (pid, connection).
_HELD: dict[Path, tuple[int, duckdb.DuckDBPyConnection]] = {}


@contextmanager
def held_warehouse(path: Path | str) -> Iterator[None]:
    """Hold one connection to the warehouse while the block runs; open_warehouse then hands out cursors.

    Each stage opens the warehouse on its own (so Airflow can run it alone). Within one process that
    cost every stage a catalog load, a contract check and, on close, a checkpoint: about a tenth of a
    second each, the largest part of a one-file run. A cursor shares the open database: committed work
    is in the write-ahead log as before, so a kill loses nothing more, and one checkpoint ends the run.
    """
    key = Path(path).resolve()
    if key in _HELD and _HELD[key][0] == os.getpid():
        yield  # already held by an enclosing block
        return
    con = open_warehouse(path)
    _HELD[key] = (os.getpid(), con)
    try:
        yield
    finally:
        _HELD.pop(key, None)
        con.close()


def _held_cursor(path: Path) -> duckdb.DuckDBPyConnection | None:
    held = _HELD.get(path.resolve()) if path.exists() else None
    if held is None or held[0] != os.getpid():  # a forked worker never shares its parent's database
        return None
    return held[1].cursor()


def open_warehouse(path: Path | str, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Connect to the warehouse file, creating it and its contract tables on first use.

    Inside held_warehouse, a cursor of the held connection (its contract is already applied).
    """
    path = Path(path)
    held = _held_cursor(path)
    if held is not None:
        return held
    if read_only and not path.exists():
        raise WarehouseError(f"no warehouse at {path}", hint="run `ehrlift run` first or pass --warehouse")
    try:
        if not read_only:
            path.parent.mkdir(parents=True, exist_ok=True)
        con = duckdb.connect(str(path), read_only=read_only, config=duckdb_settings())
    except duckdb.IOException as exc:
        if "lock" in str(exc).lower():
            raise WarehouseError(
                f"the warehouse {path} is open in another process",
                hint="DuckDB allows one writer: close the other ehrlift, DuckDB shell or notebook and retry",
            ) from None
        raise WarehouseError(f"cannot open the warehouse {path}: {exc}") from None
    except duckdb.Error as exc:
        raise WarehouseError(f"{path} is not a usable DuckDB warehouse: {exc}") from None
    if not read_only:
        apply_contract(con)
    else:
        check_version(con)
    return con


THREADS_ENV = "EHRLIFT_DUCKDB_THREADS"


def duckdb_settings() -> dict[str, str]:
    """Settings for every DuckDB file ehrlift creates or opens (the warehouse, the analyst file)."""
    threads = {"threads": os.environ[THREADS_ENV]} if os.environ.get(THREADS_ENV) else {}
    return threads | {
        # Bounded by default so a migration shares an Airflow worker politely; DuckDB spills beyond it.
        "memory_limit": os.environ.get("EHRLIFT_DUCKDB_MEMORY_LIMIT", "4GB"),
        # A new file is written in a storage format that released DuckDB tools (the CLI, DBeaver, R and
        # BI connectors embedding an older DuckDB) open; the newest format would lock analysts out. It
        # only decides the format of a file being created: an existing file keeps the one it has.
        "storage_compatibility_version": os.environ.get("EHRLIFT_DUCKDB_STORAGE_VERSION", STORAGE_VERSION),
    }


def apply_contract(con: duckdb.DuckDBPyConnection) -> None:
    """Create or migrate the ops/fhir/views schemas; refuse a warehouse from a newer ehrlift.

    The DDL is written to be re-run (IF NOT EXISTS), so creating and migrating are one step; changes
    that DDL cannot express for existing tables are listed in _MIGRATIONS by the version that adds them.
    """
    found = check_version(con)
    if found == SCHEMA_VERSION:
        return
    with transaction(con):
        con.execute((shipped("schemas") / "warehouse.sql").read_text(encoding="utf-8"))
        for version, migrate in sorted(_MIGRATIONS.items()):
            if found is not None and found < version:
                migrate(con)
        con.execute("INSERT INTO ops.schema_version VALUES (?, now())", [SCHEMA_VERSION])


def _add_reference_only(con: duckdb.DuckDBPyConnection) -> None:
    for table in resource_tables(con):
        con.execute(
            f'ALTER TABLE fhir."{table}" ADD COLUMN IF NOT EXISTS reference_only BOOLEAN DEFAULT FALSE'
        )


def _add_mapping_log_columns(con: duckdb.DuckDBPyConnection) -> None:
    for column in ("decision_id", "data_source", "kind"):
        con.execute(f"ALTER TABLE ops.mapping_log ADD COLUMN IF NOT EXISTS {column} VARCHAR")


def _mark_existing_runs(con: duckdb.DuckDBPyConnection) -> None:
    from pipelines.resume.marks import mark_existing_runs

    mark_existing_runs(con)


def _add_backload_site_columns(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("ALTER TABLE ops.backload_plan ADD COLUMN IF NOT EXISTS site_changes JSON")
    con.execute("ALTER TABLE ops.backload_plan ADD COLUMN IF NOT EXISTS server_id VARCHAR")
    con.execute("ALTER TABLE ops.backload_plans ADD COLUMN IF NOT EXISTS site JSON")


_MIGRATIONS = {
    2: _add_reference_only,
    3: _add_mapping_log_columns,
    16: _mark_existing_runs,
    17: _add_backload_site_columns,
}


def check_version(con: duckdb.DuckDBPyConnection) -> int | None:
    # duckdb_tables() rather than information_schema: ten times cheaper, and every stage opens the
    # warehouse (a one-file run opens it about ten times).
    exists = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
        "AND schema_name = 'ops' AND table_name = 'schema_version'"
    ).fetchone()
    if not exists or not exists[0]:
        return None
    row = con.execute("SELECT max(version) FROM ops.schema_version").fetchone()
    found = row[0] if row else None
    if found is not None and found > SCHEMA_VERSION:
        raise WarehouseError(
            f"the warehouse has contract version {found}, newer than this ehrlift's {SCHEMA_VERSION}",
            hint="upgrade ehrlift",
        )
    return found


def ensure_resource_table(con: duckdb.DuckDBPyConnection, resource_type: str) -> str:
    """Create fhir."<Type>" if needed and return its quoted name; the type name is validated first."""
    if not RESOURCE_TYPE.fullmatch(resource_type):
        raise ValueError(f"not a FHIR resource type name: {resource_type!r}")
    con.execute(RESOURCE_TABLE_DDL.format(rtype=resource_type))
    return f'fhir."{resource_type}"'


def resource_tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    # duckdb_tables(), not information_schema: asked by most stages, at a tenth of the cost.
    rows = con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
        "AND schema_name = 'fhir' ORDER BY table_name"
    ).fetchall()
    return [r[0] for r in rows]


def rows_per_table(con: duckdb.DuckDBPyConnection, where: str, params: list) -> dict[str, int]:
    """Rows matching `where` in each resource table, in one statement for every table (a statement per
    table cost a one-file run one query for each type the warehouse has); tables without any left out."""
    tables = resource_tables(con)
    if not tables:
        return {}
    sql = " UNION ALL ".join(f'SELECT ?, count(*) FROM fhir."{t}" WHERE {where}' for t in tables)
    rows = con.execute(sql, [v for t in tables for v in (t, *params)]).fetchall()
    return {table: n for table, n in sorted(rows) if n}


def file_processed(con: duckdb.DuckDBPyConnection, sha: str, handler: str) -> bool:
    """Has any run already converted this file with this handler? Then a re-run adds nothing."""
    row = con.execute(
        "SELECT count(*) FROM ops.run_files WHERE file_sha256 = ? AND handler = ? AND status = 'converted'",
        [sha, handler],
    ).fetchone()
    return bool(row and row[0])


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """All or nothing: a crash inside leaves the warehouse as it was, so a re-run has no gaps or doubles."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")

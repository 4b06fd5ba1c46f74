"""Analysts' ways into the warehouse: the views exported as Parquet, and read-only SQL."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import duckdb

from pipelines.common.errors import ConfigError, EhrliftError, ExitCode
from pipelines.common.warehouse import open_warehouse

from .sqlval import quote_ident


def view_names(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [
        r[0]
        for r in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'views' "
            "AND database_name = current_database() ORDER BY 1"
        ).fetchall()
    ]


def export_parquet(warehouse: Path, out: Path, only: Iterable[str] = ()) -> dict[str, int]:
    """Write views.<name> as <out>/<name>.parquet (every view, or `only`); returns rows per view.

    Each file is written beside as .partial and renamed, so a reader never sees half a file. The
    export is recorded in ops.phi_access: the files hold what the views hold.
    """
    from pipelines.deid.audit import record_access

    with open_warehouse(warehouse) as con:
        present = view_names(con)
        if not present:
            raise ConfigError(f"the warehouse {warehouse} has no views yet", hint="run `ehrlift run` first")
        wanted = list(only) or present
        unknown = sorted(set(wanted) - set(present))
        if unknown:
            raise ConfigError(f"no such view: {', '.join(unknown)}", hint=f"views: {', '.join(present)}")
        out.mkdir(parents=True, exist_ok=True)
        rows: dict[str, int] = {}
        for name in wanted:
            final = out / f"{name}.parquet"
            tmp = out / f"{name}.parquet.partial"
            con.execute(
                f"COPY views.{quote_ident(name)} TO '{_sql_path(tmp)}' (FORMAT parquet, COMPRESSION zstd)"
            )
            os.replace(tmp, final)
            rows[name] = int(con.execute(f"SELECT count(*) FROM views.{quote_ident(name)}").fetchall()[0][0])
        record_access(
            con,
            "views export",
            "read",
            {f"views.{n}": c for n, c in rows.items()},
            detail="exported views as Parquet files",
        )
    return rows


def _sql_path(path: Path) -> str:
    return str(path.resolve()).replace("'", "''")


def run_query(warehouse: Path, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """One statement on a read-only connection: (column names, rows). Writes are refused by DuckDB."""
    con = open_warehouse(warehouse, read_only=True)
    try:
        return execute(con, sql)
    finally:
        con.close()


def execute(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    try:
        cursor = con.execute(sql)
    except duckdb.Error as exc:
        raise QueryError(str(exc).splitlines()[0]) from None
    if cursor.description is None:
        return [], []
    return [d[0] for d in cursor.description], cursor.fetchall()


class QueryError(EhrliftError):
    """The query was refused (syntax, an unknown name, or a write on the read-only warehouse)."""

    exit_code = ExitCode.USAGE


def statements(lines: Iterable[str]) -> Iterator[str]:
    """Statements from shell input: each ends with ';' at the end of a line (or at end of input)."""
    buffer: list[str] = []
    for line in lines:
        if not buffer and line.strip() in (".quit", ".exit", "\\q"):
            return
        buffer.append(line)
        if line.rstrip().endswith(";"):
            text = "\n".join(buffer).strip()
            buffer = []
            if text.rstrip(";").strip():
                yield text
    rest = "\n".join(buffer).strip()
    if rest:
        yield rest

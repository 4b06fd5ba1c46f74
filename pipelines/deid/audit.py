"""The PHI access audit (ops.phi_access): who ran which command on which PHI tables, and row counts."""

from __future__ import annotations

import getpass
import os

import duckdb
import orjson


def os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers): the uid still names the account
        return f"uid:{os.getuid()}"


def record_access(
    con: duckdb.DuckDBPyConnection,
    command: str,
    access: str,
    tables: dict[str, int],
    run_id: str | None = None,
    detail: str | None = None,
) -> None:
    """Append one audit row; tables maps 'schema.table' to the number of rows read or written."""
    con.execute(
        "INSERT INTO ops.phi_access VALUES (now(), ?, ?, ?, ?, ?, ?)",
        [
            os_user(),
            command,
            access,
            run_id,
            orjson.dumps([{"table": t, "rows": n} for t, n in sorted(tables.items())]).decode(),
            detail,
        ],
    )

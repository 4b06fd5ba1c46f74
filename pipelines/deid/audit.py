"""The PHI access audit (ops.phi_access): who ran which command on which PHI tables, and row counts."""

from __future__ import annotations

import getpass
import os
import re
from functools import cache

import duckdb
import orjson

from pipelines.common.paths import shipped


@cache
def _audit_ddl() -> str:
    # The one definition is in the warehouse contract; warehouses created before it get the table here.
    sql = (shipped("schemas") / "warehouse.sql").read_text(encoding="utf-8")
    m = re.search(r"CREATE TABLE IF NOT EXISTS ops\.phi_access \(.*?\n\);", sql, re.S)
    if m is None:
        raise RuntimeError("schemas/warehouse.sql lacks the ops.phi_access table")
    return m.group(0)


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
    con.execute(_audit_ddl())
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

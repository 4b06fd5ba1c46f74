"""Handing a few Python rows to DuckDB as parameterised VALUES rather than as a registered Arrow table."""

from __future__ import annotations

from collections.abc import Sequence

import duckdb

# Building an Arrow table from Python lists makes pyarrow import pandas, and registering one makes
# DuckDB import it (~0.25 s of CPU and ~45 MB together with pyarrow): a stage that only records a few
# rows (landing) needs neither.
VALUES_PER_STATEMENT = 200


def insert_values(
    con: duckdb.DuckDBPyConnection, sql: str, columns: Sequence[str], rows: Sequence[tuple]
) -> None:
    """Run `sql`, which reads the relation `{rows}` (with these column names), over Python rows.

    Parameterised VALUES, a bounded number of rows per statement; no rows, no statement.
    """
    one = "(" + ", ".join("?" * len(columns)) + ")"
    names = ", ".join(f'"{c}"' for c in columns)
    for start in range(0, len(rows), VALUES_PER_STATEMENT):
        chunk = rows[start : start + VALUES_PER_STATEMENT]
        values = f"(VALUES {', '.join([one] * len(chunk))}) AS _rows({names})"
        con.execute(sql.format(rows=values), [v for row in chunk for v in row])

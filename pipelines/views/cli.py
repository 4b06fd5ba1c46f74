"""`ehrlift views test|export` and `ehrlift sql`: the views from the shell."""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from pipelines.common.config import RunConfig
from pipelines.common.errors import ExitCode, InputNotFoundError

_WH = {
    "type": Path,
    "default": None,
    "help": "DuckDB warehouse file (default $EHRLIFT_WAREHOUSE or data dir)",
}


def add_commands(sub: argparse._SubParsersAction) -> None:
    views = sub.add_parser("views", help="SQL-on-FHIR ViewDefinitions; export the views as Parquet")
    views_sub = views.add_subparsers(dest="views_command", required=True)
    vtest = views_sub.add_parser("test", help="run a SQL-on-FHIR v2 test suite folder (tests/*.json)")
    vtest.add_argument("dir", type=Path)
    vtest.set_defaults(func=_cmd_test)
    export = views_sub.add_parser(
        "export", help="write the views as Parquet files (one <view>.parquet each) into a folder"
    )
    export.add_argument("--out", type=Path, required=True, help="folder for the Parquet files")
    export.add_argument("--format", choices=("parquet",), default="parquet", help="file format (parquet)")
    export.add_argument("--view", action="append", default=[], help="only this view (repeatable)")
    export.add_argument("--warehouse", **_WH)
    export.set_defaults(func=_cmd_export)

    sql = sub.add_parser(
        "sql", help="query the warehouse read-only: one statement, or an interactive shell without one"
    )
    sql.add_argument("query", nargs="?", default=None, help="SQL statement; omit for a shell (end with ;)")
    sql.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    sql.add_argument("--warehouse", **_WH)
    sql.set_defaults(func=_cmd_sql)


def _warehouse(path: Path | None) -> Path:
    return RunConfig.from_env((), warehouse=path).warehouse


def _cmd_test(args: argparse.Namespace) -> int:
    from pipelines.common.console import out
    from pipelines.views.suite import run_suite

    if not args.dir.is_dir():
        raise InputNotFoundError(f"test folder not found: {args.dir}")
    result = run_suite(args.dir)
    for failure in result.failures:
        out.print(f"FAIL {failure}")
    out.print(f"{result.passed} passed, {result.failed} failed")
    return int(ExitCode.OK if result.failed == 0 else ExitCode.TESTS_FAILED)


def _cmd_export(args: argparse.Namespace) -> int:
    from pipelines.common.console import out
    from pipelines.views.access import export_parquet

    rows = export_parquet(_warehouse(args.warehouse), args.out, args.view)
    for name, n in rows.items():
        out.print(f"{name}.parquet: {n} rows", soft_wrap=True)
    out.print(f"{len(rows)} views written to {args.out.resolve()}", soft_wrap=True)
    return int(ExitCode.OK)


def _cmd_sql(args: argparse.Namespace) -> int:
    from pipelines.common.warehouse import open_warehouse
    from pipelines.views.access import QueryError, execute, statements

    con = open_warehouse(_warehouse(args.warehouse), read_only=True)
    try:
        if args.query is not None:
            _show(*execute(con, args.query), as_csv=args.csv)
            return int(ExitCode.OK)
        interactive = sys.stdin.isatty()
        if interactive:
            print("ehrlift sql (read-only): end statements with ';', .quit to leave", file=sys.stderr)
        failed = False
        for statement in statements(_lines(interactive)):
            try:
                _show(*execute(con, statement), as_csv=args.csv)
            except QueryError as exc:
                failed = True
                print(f"error: {exc}", file=sys.stderr)
        return int(ExitCode.USAGE if failed and not interactive else ExitCode.OK)
    finally:
        con.close()


def _lines(interactive: bool):
    if not interactive:
        yield from (line.rstrip("\n") for line in sys.stdin)
        return
    while True:
        try:
            yield input("sql> ")
        except EOFError:
            return


def _show(columns: list[str], rows: list[tuple], *, as_csv: bool) -> None:
    from rich.table import Table

    from pipelines.common.console import out

    if not columns:
        return
    if as_csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(["" if v is None else v for v in row] for row in rows)
        return
    table = Table(*columns, show_lines=False)
    for row in rows:
        table.add_row(*("NULL" if v is None else str(v) for v in row))
    out.print(table)
    out.print(f"({len(rows)} rows)")

"""`ehrlift retract --run ID | --file SHA256 --reason TEXT`."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.common.config import RunConfig
from pipelines.common.errors import ExitCode


def add_commands(sub: argparse._SubParsersAction) -> None:
    retract = sub.add_parser(
        "retract",
        help="take a run's or a file's resources out of the warehouse (the ledger keeps the history)",
    )
    which = retract.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", dest="run_id", metavar="ID", help="every resource this run wrote")
    which.add_argument("--file", dest="file_sha256", metavar="SHA256", help="every resource from this file")
    retract.add_argument("--reason", required=True, help="why (recorded in ops.retractions)")
    retract.add_argument(
        "--warehouse",
        type=Path,
        default=None,
        help="DuckDB warehouse file (default $EHRLIFT_WAREHOUSE or data dir)",
    )
    retract.set_defaults(func=_cmd_retract)


def _cmd_retract(args: argparse.Namespace) -> int:
    from pipelines.common.console import out
    from pipelines.retract import retract

    warehouse = RunConfig.from_env((), warehouse=args.warehouse).warehouse
    result = retract(warehouse, reason=args.reason, run_id=args.run_id, file_sha256=args.file_sha256)
    removed = ", ".join(f"{t} {n}" for t, n in sorted(result.resources.items())) or "none"
    out.print(f"{result.retraction_id}: {result.files} file(s); resources removed: {removed}", soft_wrap=True)
    if result.replaced_units:
        out.print(
            f"{result.replaced_units} unit(s) of it had replaced an earlier version of a resource: those "
            "earlier versions are not restored (load their source again to bring them back)",
            soft_wrap=True,
        )
    out.print("views rebuilt; the next run is validated without them", soft_wrap=True)
    return int(ExitCode.OK)

"""The `ehrlift normalize` command."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.common.errors import ExitCode


def add_commands(sub) -> None:
    p = sub.add_parser(
        "normalize",
        help="re-apply the current mappings (crosswalks, releases) to the whole warehouse, as a run",
    )
    p.add_argument("--warehouse", type=Path, default=None, help="DuckDB warehouse file")
    p.set_defaults(func=_cmd_normalize)


def _cmd_normalize(args: argparse.Namespace) -> int:
    from pipelines.common.console import out
    from pipelines.common.console import warehouse_arg as _warehouse_arg
    from pipelines.common.progress import Bars
    from pipelines.remap import normalize_warehouse

    with Bars(True).running():  # normalize, load and validate bars, on a terminal only
        result = normalize_warehouse(_warehouse_arg(args.warehouse))
    out.print(
        f"normalize run {result['run_id']}: {result['resources']} resources read, {result['rewritten']} "
        f"rewritten, {result['decisions']} mapping decisions ({result['crosswalk_changes']} crosswalk "
        "entries changed since the last sync)",
        soft_wrap=True,
    )
    if result["blocked"]:
        out.print("a critical expectation failed: back-load is blocked (see `ehrlift report`)")
        return int(ExitCode.GATE_BLOCKED)
    out.print(f"report: ehrlift report --run {result['run_id']}", soft_wrap=True)
    return int(ExitCode.OK)

"""`ehrlift report sign`: a reviewer's sign-off of a run's compliance report."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.common.errors import ExitCode
from pipelines.report.signoff import DECISIONS


def add_commands(report: argparse.ArgumentParser) -> None:
    """Add `sign` under `report`; `ehrlift report` alone still writes the report."""
    sub = report.add_subparsers(dest="report_command", required=False, metavar="{sign}")
    sign = sub.add_parser(
        "sign",
        help="sign off a run's report: reviewer, role, decision (recorded in ops.report_signoffs)",
    )
    sign.add_argument("--warehouse", type=Path, default=None, help="DuckDB warehouse file")
    sign.add_argument("--run", dest="run_id", default=None, help="run id (default: the latest run)")
    sign.add_argument("--out", type=Path, default=None, help="the report's folder (default as `report`)")
    sign.add_argument("--reviewer", required=True, help="who signs (a staff name, never a patient's)")
    sign.add_argument("--role", required=True, help="the reviewer's role, e.g. 'compliance officer'")
    sign.add_argument("--decision", required=True, choices=DECISIONS)
    sign.add_argument("--note", default=None, help="conditions or reasons (no patient values)")
    sign.add_argument(
        "--digest",
        default=None,
        help="the data sha256 of the report you read; nothing is signed if the data changed since",
    )
    sign.set_defaults(func=_cmd_sign)


def _cmd_sign(args: argparse.Namespace) -> int:
    from pipelines.common.console import out
    from pipelines.common.console import warehouse_arg as _warehouse_arg
    from pipelines.report.sign import sign_report

    result = sign_report(
        _warehouse_arg(args.warehouse),
        reviewer=args.reviewer,
        role=args.role,
        decision=args.decision,
        note=args.note,
        run_id=args.run_id,
        digest=args.digest,
        out_dir=args.out,
    )
    out.print(f"signed {result['run_id']}: {args.decision}", soft_wrap=True)
    out.print(f"sha256 of the data: {result['data_sha256']}", soft_wrap=True)
    out.print(f"sha256 of the signed copy: {result['signoff_sha256']}", soft_wrap=True)
    out.print(f"report: {result['html'].resolve()}", soft_wrap=True)
    return int(ExitCode.OK)

"""`ehrlift backload plan|send|status`: argparse construction and handlers (exit statuses in the README)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from pipelines.backload.hl7 import cli as hl7_cli
from pipelines.common.config import DEFAULT_DATA_DIR
from pipelines.common.errors import ConfigError

out = Console(highlight=False, markup=False)
err = Console(stderr=True, highlight=False, markup=False)


def add_commands(sub: Any) -> None:
    bl = sub.add_parser("backload", help="plan, send and reconcile FHIR R4 writes into a target EHR")
    bsub = bl.add_subparsers(dest="backload_command", required=True)
    warehouse = argparse.ArgumentParser(add_help=False)
    warehouse.add_argument("--warehouse", type=Path, default=DEFAULT_DATA_DIR / "warehouse.duckdb")
    warehouse.add_argument("--profile", default="millennium-r4", help="terminology/targets/<name>.json")

    plan = bsub.add_parser(
        "plan", parents=[warehouse], help="decide send / not_sendable / unchanged per resource"
    )
    plan.add_argument(
        "--out", type=Path, default=None, help="plan files (default <data dir>/backload/<profile>)"
    )
    plan.add_argument(
        "--override-gate", action="store_true", help="plan a run the gate blocked (needs --reason)"
    )
    plan.add_argument("--reason", default=None, help="why the gate is overridden (recorded with the plan)")
    plan.add_argument(
        "--site",
        type=Path,
        default=None,
        help="site profile (JSON): elements to drop, defaults, Location map; none by default",
    )
    plan.set_defaults(func=_cmd_plan)

    send = bsub.add_parser("send", parents=[warehouse], help="write the latest plan to a FHIR R4 server")
    send.add_argument("--server", required=True, help="the target's FHIR base URL")
    send.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    send.add_argument("--dry-run", action="store_true", help="check capabilities and count; write nothing")
    send.add_argument("--failed", action="store_true", help="re-send only the writes that failed")
    send.add_argument("--no-progress", action="store_true")
    auth = send.add_argument_group("SMART Backend Services auth, as for export")
    auth.add_argument("--client-id", default=os.environ.get("EHRLIFT_BACKLOAD_CLIENT_ID"))
    auth.add_argument("--key", type=Path, default=os.environ.get("EHRLIFT_BACKLOAD_KEY") or None)
    auth.add_argument("--kid", default=None)
    auth.add_argument("--alg", choices=("RS384", "ES384"), default=None)
    auth.add_argument("--token-url", default=None, help="default: from .well-known/smart-configuration")
    auth.add_argument("--scope", default="system/*.write system/*.read")
    auth.add_argument("--no-auth", action="store_true", help="only for a server on loopback that needs none")
    send.set_defaults(func=_cmd_send)

    status = bsub.add_parser("status", parents=[warehouse], help="planned = created + updated + ... per type")
    status.set_defaults(func=_cmd_status)
    hl7_cli.add_commands(bsub)


def _cmd_plan(args: argparse.Namespace) -> int:
    from pipelines.backload.runner import plan_backload

    if args.override_gate and not (args.reason or "").strip():
        raise ConfigError("--override-gate needs --reason TEXT (it is recorded with the plan)")
    if args.reason and not args.override_gate:
        raise ConfigError("--reason goes with --override-gate")
    result = plan_backload(
        args.warehouse, args.profile, args.out, args.reason if args.override_gate else None, args.site
    )
    table = Table("type", "status", "reason", "count", title=f"plan {result.plan_id} (run {result.run_id})")
    for row in result.summary["rows"]:
        table.add_row(row["resource_type"], row["status"], row["reason"] or "", str(row["count"]))
    out.print(table)
    changes = result.summary.get("site_changes") or []
    if changes:
        site = Table("type", "site change", "element", "count", title="site profile opt-ins")
        for row in changes:
            site.add_row(row["resource_type"], row["change"], row["element"], str(row["count"]))
        out.print(site)
    out.print(f"plan files: {result.folder}")
    return 0


def _cmd_send(args: argparse.Namespace) -> int:
    from pipelines.backload.runner import AuthOptions, send_backload
    from pipelines.backload.send import CapabilityMismatch, SendOptions

    if args.concurrency < 1 or args.concurrency > 64:
        raise ConfigError("--concurrency must be between 1 and 64")
    auth = AuthOptions(args.client_id, args.key, args.kid, args.alg, args.token_url, args.scope, args.no_auth)
    bar = _Bar(enabled=not args.no_progress)
    options = SendOptions(args.concurrency, args.dry_run, args.failed, bar.update)
    try:
        with bar:
            result = send_backload(args.warehouse, args.profile, args.server, auth, options)
    except CapabilityMismatch as exc:
        table = Table("resource type", "interaction the plan needs", title="not declared by the server")
        for rtype, interaction in exc.missing:
            table.add_row(rtype, interaction)
        err.print(table)
        raise
    counts = ", ".join(f"{k} {v}" for k, v in sorted(result.counts.items())) or "nothing to send"
    out.print(f"plan {result.plan_id}: {counts}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from pipelines.backload.runner import STATUS_COLUMNS, backload_status

    status = backload_status(args.warehouse, args.profile)
    table = Table("type", *STATUS_COLUMNS, title=f"plan {status['plan_id']} ({status['target']})")
    for row in [*status["types"], {"resource_type": "total", **status["totals"]}]:
        table.add_row(row["resource_type"], *(str(row[k]) for k in STATUS_COLUMNS))
    out.print(table)
    if status["site_changes"]:
        site = Table("type", "site change", "element", "count", title="site profile opt-ins")
        for row in status["site_changes"]:
            site.add_row(row["resource_type"], row["change"], row["element"], str(row["count"]))
        out.print(site)
    pending = status["totals"]["pending"]
    tail = f"; {pending} write(s) pending: run `ehrlift backload send` again" if pending else ""
    out.print("reconciles: " + ("yes" if status["reconciles"] else "NO") + tail)
    return 0


class _Bar:
    """Writes done of planned, requests/s and ETA on stderr; silent when stderr is not a terminal."""

    def __init__(self, enabled: bool) -> None:
        console = Console(stderr=True)
        self.progress = (
            Progress(
                TextColumn("back-load"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                console=console,
            )
            if enabled and console.is_terminal
            else None
        )
        self.task: Any = None

    def __enter__(self) -> _Bar:
        if self.progress:
            self.progress.__enter__()
            self.task = self.progress.add_task("send", total=None, rate="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress:
            self.progress.__exit__(*exc)

    def update(self, done: int, total: int) -> None:
        if self.progress is None:
            return
        self.progress.update(self.task, completed=done, total=total)
        speed = self.progress.tasks[0].speed
        self.progress.update(self.task, rate=f"{speed:.1f} req/s" if speed else "")

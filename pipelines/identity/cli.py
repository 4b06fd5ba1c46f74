"""`ehrlift identity link|review|import|status`: the identity stage and its clerical review from the shell."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.common.config import RunConfig, new_run_id
from pipelines.common.errors import ExitCode


def add_commands(sub: argparse._SubParsersAction) -> None:
    identity = sub.add_parser("identity", help="link source patients into persons; review; duplicate facts")
    isub = identity.add_subparsers(dest="identity_command", required=True)
    wh = {
        "type": Path,
        "default": None,
        "help": "DuckDB warehouse file (default $EHRLIFT_WAREHOUSE or data dir)",
    }

    link = isub.add_parser(
        "link", help="link patients, build person records, mark duplicate facts, refresh views"
    )
    link.add_argument("--warehouse", **wh)
    link.add_argument(
        "--rules", type=Path, default=None, help="folder of identity data files (default shipped)"
    )
    link.add_argument(
        "--force",
        action="store_true",
        help="run the model even when no source patient or decision changed since the last linking",
    )
    link.set_defaults(func=_cmd_link)

    review = isub.add_parser("review", help="write the pairs awaiting clerical review (.csv or .xlsx)")
    review.add_argument("out", type=Path)
    review.add_argument("--warehouse", **wh)
    review.set_defaults(func=_cmd_review)

    imp = isub.add_parser("import", help="record reviewers' decisions from a filled-in review file")
    imp.add_argument("file", type=Path)
    imp.add_argument("--reviewer", default=None, help="reviewer for rows whose reviewer column is empty")
    imp.add_argument("--warehouse", **wh)
    imp.set_defaults(func=_cmd_import)

    status = isub.add_parser("status", help="counts of links, reviews, persons and duplicate facts")
    status.add_argument("--warehouse", **wh)
    status.set_defaults(func=_cmd_status)


def _warehouse(path: Path | None) -> Path:
    return RunConfig.from_env((), warehouse=path).warehouse


def _print(text: str) -> None:
    from pipelines.common.console import out

    out.print(text, soft_wrap=True)


def _cmd_link(args: argparse.Namespace) -> int:
    from pipelines.common.warehouse import open_warehouse
    from pipelines.identity.stage import audit_link, identify, refresh_views

    run_id = new_run_id()
    with open_warehouse(_warehouse(args.warehouse)) as con:
        result = identify(con, run_id, args.rules, force=args.force)
        audit_link(con, run_id, result)
        views = refresh_views(con)
    link = result["link"]
    _print(f"identity {run_id}: {link['source_patients']} source patients -> {link['persons']} persons")
    _print("pairs: " + ", ".join(f"{k} {v}" for k, v in link["pairs"].items()))
    if link["decided_by"] != run_id:
        _print(
            f"nothing changed since {link['decided_by']}: its decisions stand (--force to re-run the model)"
        )
    dupes = {t: c["duplicates"] for t, c in result["facts"].items() if c["duplicates"]}
    _print("duplicate facts: " + (", ".join(f"{t} {n}" for t, n in dupes.items()) or "none"))
    if views:
        _print(f"views.patient: {views.get('patient', 0)} persons")
    return int(ExitCode.OK)


def _cmd_review(args: argparse.Namespace) -> int:
    from pipelines.common.warehouse import open_warehouse
    from pipelines.identity.review import export_review

    with open_warehouse(_warehouse(args.warehouse)) as con:
        n = export_review(con, args.out)
    _print(f"{n} pairs awaiting review written to {args.out}")
    _print("fill in decision (link or no_link) and reviewer, then `ehrlift identity import FILE`")
    return int(ExitCode.OK)


def _cmd_import(args: argparse.Namespace) -> int:
    from pipelines.common.warehouse import open_warehouse
    from pipelines.identity.review import import_decisions

    with open_warehouse(_warehouse(args.warehouse)) as con:
        result = import_decisions(con, args.file, args.reviewer)
    _print(f"decisions recorded: {result.accepted}; rows left undecided: {result.undecided}")
    if result.rejected:
        rows = ", ".join(map(str, result.rejected[:20])) + (" ..." if len(result.rejected) > 20 else "")
        _print(f"rows rejected (decision not link/no_link, unknown patient id or no reviewer): {rows}")
    _print("run `ehrlift identity link` to apply them")
    return int(ExitCode.OK if not result.rejected else ExitCode.CONFIG)


def _cmd_status(args: argparse.Namespace) -> int:
    from pipelines.common.warehouse import open_warehouse
    from pipelines.identity.status import identity_status

    with open_warehouse(_warehouse(args.warehouse), read_only=True) as con:
        status = identity_status(con)
    for key, value in status.items():
        _print(f"{key}: {value}")
    return int(ExitCode.OK)

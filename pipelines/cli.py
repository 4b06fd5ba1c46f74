"""The `ehrlift` command line: run, demo-data, views test; coded exit statuses (see README)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pipelines.common.config import DEFAULT_DATA_DIR, DEFAULT_SOURCE_SYSTEM, RunConfig, ehrlift_version
from pipelines.common.errors import EhrliftError, ExitCode, InputNotFoundError
from pipelines.summary import RunSummary

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args))
    except EhrliftError as exc:
        err.print(f"[bold red]error:[/] {exc}", markup=True, soft_wrap=True)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted: re-run the same command to resume; nothing is duplicated")
        return int(ExitCode.INTERRUPTED)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ehrlift",
        description="Move legacy clinical data into FHIR R4, "
        "a DuckDB warehouse and Oracle Health Millennium.",
    )
    parser.add_argument("--version", action="version", version=f"ehrlift {ehrlift_version()}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log stage progress (never record values)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="land, convert and load source files and folders")
    run.add_argument("sources", nargs="+", metavar="SOURCE", help="files or folders to migrate")
    run.add_argument(
        "--warehouse",
        type=Path,
        default=None,
        help=f"DuckDB warehouse file (default {DEFAULT_DATA_DIR / 'warehouse.duckdb'})",
    )
    run.add_argument(
        "--source-system",
        default=None,
        help=f"name of the legacy system these files come from (default {DEFAULT_SOURCE_SYSTEM!r})",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.set_defaults(func=_cmd_run)

    demo = sub.add_parser("demo-data", help="write synthetic legacy source data (no real patients)")
    demo.add_argument("dir", type=Path)
    demo.add_argument("--patients", type=int, default=200)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument(
        "--no-hl7v2", action="store_true", help="write only the FHIR sources, no HL7 v2 archives"
    )
    demo.add_argument(
        "--corrupt",
        action="store_true",
        help="also write a deliberately corrupted batch (sources/corrupt/) that the data-quality gate blocks",
    )
    demo.set_defaults(func=_cmd_demo)

    listen = sub.add_parser(
        "listen", help="accept HL7 v2 over MLLP into a feed folder (AA only once on disk)"
    )
    listen.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    listen.add_argument("--port", type=int, default=2575, help="TCP port (default 2575)")
    listen.add_argument(
        "--feed-dir",
        type=Path,
        default=DEFAULT_DATA_DIR / "feeds",
        help=f"where accepted messages are written (default {DEFAULT_DATA_DIR / 'feeds'}); "
        "migrate them with `ehrlift run DIR`",
    )
    listen.set_defaults(func=_cmd_listen)

    views = sub.add_parser("views", help="SQL-on-FHIR ViewDefinitions")
    views_sub = views.add_subparsers(dest="views_command", required=True)
    vtest = views_sub.add_parser("test", help="run a SQL-on-FHIR v2 test suite folder (tests/*.json)")
    vtest.add_argument("dir", type=Path)
    vtest.set_defaults(func=_cmd_views_test)
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    from pipelines.run import run_pipeline

    config = RunConfig.from_env(
        tuple(args.sources),
        warehouse=args.warehouse,
        source_system=args.source_system,
        progress=not args.no_progress,
    )
    summary = run_pipeline(config)
    print_summary(summary, config)
    if summary.validation.get("blocked"):
        from pipelines.validate import gate_for

        err.print(f"[bold red]blocked:[/] {gate_for(config).error()}", markup=True, soft_wrap=True)
        return int(ExitCode.GATE_BLOCKED)
    return int(ExitCode.OK)


def _cmd_demo(args: argparse.Namespace) -> int:
    from pipelines.demo import generate_demo_data

    if args.patients < 1:
        raise EhrliftError("--patients must be at least 1")
    summary = generate_demo_data(args.dir, patients=args.patients, seed=args.seed, hl7v2=not args.no_hl7v2)
    data = summary.to_dict()
    out.print(f"wrote synthetic demo data for {args.patients} patients (seed {args.seed}) to {args.dir}")
    out.print(
        f"  {len(data.get('files', []))} files, {len(data.get('defects', []))} deliberate defects; "
        f"details in {args.dir / 'demo-summary.json'}"
    )
    if args.corrupt:
        from pipelines.demo.corrupt import CORRUPT_DIR, write_corrupt_sources

        write_corrupt_sources(args.dir)
        out.print(
            f"  plus a corrupted batch in {args.dir / CORRUPT_DIR}: `ehrlift run` on it exits 7 (blocked)"
        )
    return int(ExitCode.OK)


def _cmd_listen(args: argparse.Namespace) -> int:
    from pipelines.listen import listen

    if not 0 < args.port < 65536:
        raise EhrliftError(f"--port must be 1-65535, not {args.port}")
    err.print(
        f"listening for MLLP on {args.host}:{args.port}; accepted messages go to {args.feed_dir} "
        "(Ctrl-C stops after in-flight messages are written)"
    )
    listen(args.feed_dir, args.host, args.port)
    return int(ExitCode.OK)


def _cmd_views_test(args: argparse.Namespace) -> int:
    from pipelines.views.suite import run_suite

    if not args.dir.is_dir():
        raise InputNotFoundError(f"test folder not found: {args.dir}")
    result = run_suite(args.dir)
    for failure in result.failures:
        out.print(f"FAIL {failure}")
    out.print(f"{result.passed} passed, {result.failed} failed")
    return int(ExitCode.OK if result.failed == 0 else ExitCode.TESTS_FAILED)


def print_summary(summary: RunSummary, config: RunConfig) -> None:
    from pipelines.run import run_report_path

    table = Table(title=f"run {summary.run_id}", title_justify="left")
    for col in ("format", "files", "units in", "converted", "quarantined", "skipped"):
        table.add_column(col, justify="left" if col == "format" else "right")
    for fmt, c in summary.by_format.items():
        table.add_row(fmt, str(c.files), str(c.units), str(c.converted), str(c.quarantined), str(c.skipped))
    t = summary.totals
    table.add_row(
        "total",
        str(t.files),
        str(t.units),
        str(t.converted),
        str(t.quarantined),
        str(t.skipped),
        style="bold",
    )
    out.print(table)
    if summary.files_already_processed:
        out.print(
            f"{summary.files_already_processed} file(s) were already processed by an earlier run: "
            "nothing added for them"
        )
    if summary.resources_by_type:
        rtable = Table(title="resources loaded by this run", title_justify="left")
        rtable.add_column("resource type")
        rtable.add_column("count", justify="right")
        for rtype, n in summary.resources_by_type.items():
            rtable.add_row(rtype, str(n))
        out.print(rtable)
    for label, reasons in (("quarantined", summary.quarantine_reasons), ("skipped", summary.skip_reasons)):
        if reasons:
            out.print(f"{label}: " + ", ".join(f"{r} {n}" for r, n in reasons.items()))
    for container, items in summary.unconsumed.items():
        out.print(f"not consumed in {container}: " + ", ".join(f"{i} {n}" for i, n in items.items()))
    if summary.validation:
        v = summary.validation
        out.print(
            f"data quality: {v['evaluated']} expectations, {len(v['critical_failed'])} critical and "
            f"{len(v['warnings_failed'])} warning failures"
        )
        if v["warnings_failed"]:
            out.print("warnings (reported, not blocking): " + ", ".join(v["warnings_failed"]), soft_wrap=True)
    out.print(
        f"ledger reconciles (units = converted + quarantined + skipped): "
        f"{'yes' if summary.reconciles else 'NO'}"
    )
    out.print(f"warehouse: {config.warehouse.resolve()}", soft_wrap=True)
    out.print(f"landing zone: {config.landing_dir.resolve()}", soft_wrap=True)
    out.print(f"run report: {run_report_path(config).resolve()}", soft_wrap=True)


if __name__ == "__main__":
    raise SystemExit(main())

"""The `ehrlift` command line (run, export, report, deidentify, ...); coded exit statuses (see README)."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
from collections.abc import Sequence
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from pipelines.backload import cli as backload_cli
from pipelines.cds import cli as cds_cli
from pipelines.common import interrupt
from pipelines.common.config import (
    DEFAULT_DATA_DIR,
    DEFAULT_SOURCE_SYSTEM,
    FHIR_RELEASES,
    RunConfig,
    ehrlift_version,
)
from pipelines.common.console import err, out
from pipelines.common.console import warehouse_arg as _warehouse_arg
from pipelines.common.errors import ConfigError, EhrliftError, ExitCode
from pipelines.identity import cli as identity_cli
from pipelines.remap import cli as remap_cli
from pipelines.report import cli as report_cli
from pipelines.retract import cli as retract_cli
from pipelines.summary import RunSummary
from pipelines.views import cli as views_cli


def main(argv: Sequence[str] | None = None) -> int:
    interrupt.install()
    parser = _parser()
    _add_global_options(parser)
    args = parser.parse_args(argv)
    handler = _ConsoleHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_own_records)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, handlers=[handler])
    try:
        return int(args.func(args))
    except EhrliftError as exc:
        if interrupt.interrupted(exc):
            err.print(interrupt.MESSAGE)
            return int(ExitCode.INTERRUPTED)
        err.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, soft_wrap=True)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        err.print(interrupt.MESSAGE)
        return int(ExitCode.INTERRUPTED)
    except Exception as exc:  # a bug: exit 70 as ops.runs records it; the traceback only with -v
        if interrupt.interrupted(exc):  # Ctrl-C that native code (DuckDB) surfaced as an ordinary error
            err.print(interrupt.MESSAGE)
            return int(ExitCode.INTERRUPTED)
        logging.getLogger("pipelines").debug("internal error", exc_info=True)
        err.print(f"internal error ({type(exc).__name__}); re-run with -v for details and report it")
        return int(ExitCode.INTERNAL)


OWN_LOGGERS = frozenset({"pipelines", "terminology", "dags"})


class _ConsoleHandler(logging.Handler):
    """Log lines through the stderr console at the time of writing, so live progress bars stay intact."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            err.print(self.format(record), soft_wrap=True)
        except Exception:  # a log line must never end a run
            self.handleError(record)


def _own_records(record: logging.LogRecord) -> bool:
    """ehrlift's own lines; another library's only when it is an error (Great Expectations, for one,
    logs its internals at INFO, which drowned the stages' lines)."""
    return record.name.partition(".")[0] in OWN_LOGGERS or record.levelno >= logging.ERROR


def _add_global_options(parser: argparse.ArgumentParser) -> None:
    """-v works after any subcommand too (`ehrlift run SRC -v`), not only before it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                # SUPPRESS: a subcommand that was not given -v leaves the top-level value as it is.
                sub.add_argument(
                    "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
                )
                _add_global_options(sub)


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
    backload_cli.add_commands(sub)

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
    run.add_argument(
        "--fhir-release",
        choices=FHIR_RELEASES,
        default=None,
        help="the FHIR release the sources speak (default auto: told per file from its content); "
        "a .fhir-release.csv in a source folder declares it per file",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument(
        "--override-gate",
        action="store_true",
        help="finish as succeeded even if a critical expectation fails (needs --reason; recorded)",
    )
    run.add_argument("--reason", default=None, help="why the gate is overridden (ops.gate_overrides)")
    run.set_defaults(func=_cmd_run)

    demo = sub.add_parser("demo-data", help="write synthetic legacy source data (no real patients)")
    demo.add_argument("dir", type=Path)
    demo.add_argument("--patients", type=int, default=200)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument(
        "--no-hl7v2", action="store_true", help="write only the FHIR sources, no HL7 v2 archives"
    )
    demo.add_argument("--no-ccda", action="store_true", help="write no C-CDA documents")
    demo.add_argument("--no-dstu2", action="store_true", help="no DSTU2 export of extra patients")
    demo.add_argument(
        "--corrupt",
        action="store_true",
        help="also write a deliberately corrupted batch (sources/corrupt/) that the data-quality gate blocks",
    )
    demo.add_argument(
        "--identity-noise",
        action="store_true",
        help="record people differently per source, add look-alikes, write identity-truth.csv",
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

    report = sub.add_parser("report", help="write the compliance report (static HTML, no PHI)")
    report.add_argument("--warehouse", type=Path, default=None, help="DuckDB warehouse file")
    report.add_argument(
        "--out", type=Path, default=None, help="folder for the report (default <data dir>/reports/<run id>)"
    )
    report.add_argument("--run", dest="run_id", default=None, help="run id (default: the latest run)")
    report.set_defaults(func=_cmd_report)
    report_cli.add_commands(report)

    deid = sub.add_parser("deidentify", help="write de-identified analyst views to a separate DuckDB file")
    deid.add_argument("--warehouse", type=Path, default=None, help="DuckDB warehouse file")
    deid.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"analyst DuckDB file to write (default {DEFAULT_DATA_DIR / 'analyst' / 'deidentified.duckdb'})",
    )
    deid.add_argument(
        "--dates", choices=("year", "shift"), default=None, help="date rule (default from rules)"
    )
    deid.set_defaults(func=_cmd_deidentify)

    runs = sub.add_parser("runs", help="list the latest runs: id, status, exit status and ledger counts")
    runs.add_argument("--warehouse", type=Path, default=None, help="DuckDB warehouse file")
    runs.add_argument("--limit", type=int, default=20, help="how many runs, newest first (default 20)")
    runs.set_defaults(func=_cmd_runs)
    _export_parser(sub)
    _add_terminology(sub)
    cds_cli.add_commands(sub)
    _mapping_parsers(sub)
    remap_cli.add_commands(sub)
    identity_cli.add_commands(sub)
    views_cli.add_commands(sub)
    retract_cli.add_commands(sub)
    return parser


def _export_parser(sub: argparse._SubParsersAction) -> None:
    export = sub.add_parser(
        "export",
        help="download a FHIR Bulk Data export ($export) and run it; resumable, incremental with _since",
    )
    export.add_argument("--server", required=True, help="FHIR base URL (https, or http on loopback)")
    which = export.add_mutually_exclusive_group(required=True)
    which.add_argument("--group", metavar="ID", help="Group/ID/$export: the patients of one group")
    which.add_argument("--patient", action="store_true", help="Patient/$export: all patients")
    which.add_argument("--system", action="store_true", help="$export: the whole system")
    export.add_argument(
        "--since", help="FHIR instant for _since (default: the last export's transactionTime, if any)"
    )
    export.add_argument("--full", action="store_true", help="ignore the remembered _since")
    export.add_argument(
        "--type", action="append", default=[], help="resource type(s) for _type (repeat or comma-separate)"
    )
    export.add_argument(
        "--type-filter",
        action="append",
        default=[],
        help="a _typeFilter query, e.g. 'Observation?status=final'",
    )
    export.add_argument(
        "--patient-id",
        action="append",
        default=[],
        metavar="ID",
        help="limit a --patient or --group export to these patients (repeat or comma-separate; POST)",
    )
    export.add_argument(
        "--method",
        choices=("get", "post"),
        default=None,
        help="kick-off method (default: post with --patient-id, which GET cannot carry; else get)",
    )
    export.add_argument(
        "--include-associated-data",
        action="append",
        default=[],
        metavar="CODE",
        help="includeAssociatedData, e.g. LatestProvenanceResources (repeat or comma-separate)",
    )
    export.add_argument(
        "--partial-manifests",
        action="store_true",
        help="allowPartialManifests: download files the server lists while the job still runs",
    )
    export.add_argument("--warehouse", type=Path, default=None, help="DuckDB warehouse file")
    export.add_argument(
        "--out", type=Path, default=None, help="download folder (default under the warehouse)"
    )
    export.add_argument("--source-system", default=None, help="source system name for the landed files")
    export.add_argument(
        "--fhir-release",
        choices=FHIR_RELEASES,
        default="auto",
        help="the release the server's files are in (default auto: its CapabilityStatement's fhirVersion)",
    )
    export.add_argument("--no-run", action="store_true", help="download only; do not land, convert and load")
    export.add_argument("--no-progress", action="store_true", help="no progress bars")
    export.add_argument("--workers", type=int, default=4, help="parallel downloads (default 4)")
    export.add_argument(
        "--restart", action="store_true", help="drop an unfinished job of this server and scope, start anew"
    )
    export.add_argument(
        "--max-wait", type=float, default=None, help="seconds to wait for the job (default 24h)"
    )
    auth = export.add_argument_group("SMART Backend Services auth (omit for an open server)")
    auth.add_argument("--client-id", default=os.environ.get("EHRLIFT_EXPORT_CLIENT_ID"))
    auth.add_argument(
        "--key",
        type=Path,
        default=os.environ.get("EHRLIFT_EXPORT_KEY") or None,
        help="private key: JWKS (JSON) or PEM file",
    )
    auth.add_argument("--kid", default=None, help="key id registered with the server (needed for PEM)")
    auth.add_argument("--alg", choices=("RS384", "ES384"), default=None)
    auth.add_argument("--token-url", default=None, help="default: from .well-known/smart-configuration")
    auth.add_argument("--scope", default="system/*.read", help="e.g. system/*.read or system/*.rs")
    export.set_defaults(func=_cmd_export)


def _split_values(values: list[str]) -> tuple[str, ...]:
    return tuple(v.strip() for value in values for v in value.split(",") if v.strip())


def _cmd_export(args: argparse.Namespace) -> int:
    from pipelines.export.client import Timing
    from pipelines.export.options import ExportOptions
    from pipelines.export.runner import run_export

    scope = "group" if args.group else "patient" if args.patient else "system"
    types = tuple(t.strip() for value in args.type for t in value.split(",") if t.strip())
    timing = Timing(max_wait=args.max_wait) if args.max_wait else Timing()
    warehouse = args.warehouse or RunConfig.from_env(()).warehouse
    result = run_export(
        ExportOptions(
            server=args.server,
            scope=scope,
            group=args.group,
            since=args.since,
            full=args.full,
            types=types,
            type_filters=tuple(args.type_filter),
            warehouse=warehouse,
            out=args.out,
            source_system=args.source_system,
            run=not args.no_run,
            progress=not args.no_progress,
            workers=args.workers,
            restart=args.restart,
            client_id=args.client_id,
            key_file=Path(args.key) if args.key else None,
            kid=args.kid,
            alg=args.alg,
            token_url=args.token_url,
            auth_scope=args.scope,
            timing=timing,
            method=args.method,
            patients=_split_values(args.patient_id),
            include_associated=_split_values(args.include_associated_data),
            partial_manifests=args.partial_manifests,
            fhir_release=args.fhir_release,
        )
    )
    files = result.files
    out.print(
        f"export {'resumed' if result.resumed else 'done'}: transactionTime {result.transaction_time}, "
        f"since {result.since_used or '(full export)'}"
    )
    out.print(
        f"  files: {files['output']} output, {files['error']} error, {files['deleted']} deleted "
        f"({result.fetched_now} fetched now, {result.bytes:,} bytes); "
        f"job deleted on server: {'yes' if result.deleted_on_server else 'no'}"
    )
    if result.resources:
        out.print("  resources: " + ", ".join(f"{t} {n}" for t, n in sorted(result.resources.items())))
    if result.error_issues:
        out.print(
            "  server error issues: " + ", ".join(f"{c} {n}" for c, n in sorted(result.error_issues.items()))
        )
    out.print(
        f"  FHIR release: {result.fhir_release}"
        + (" (told from each file's content)" if result.fhir_release == "unknown" else "")
    )
    out.print(f"  downloaded to: {result.out_dir}", soft_wrap=True)
    if result.run_summary is not None:
        print_summary(
            result.run_summary, RunConfig((), warehouse=warehouse, run_id=result.run_summary.run_id)
        )
    else:
        out.print(f"not run (--no-run): migrate with `ehrlift run {result.manifest_path}`", soft_wrap=True)
    return int(ExitCode.OK)


def _add_terminology(sub) -> None:
    from terminology.loaders import KINDS

    term = sub.add_parser("terminology", help="code-system releases in the warehouse")
    term_sub = term.add_subparsers(dest="terminology_command", required=True)
    warehouse_help = f"DuckDB warehouse file (default {DEFAULT_DATA_DIR / 'warehouse.duckdb'})"
    load = term_sub.add_parser(
        "load", help="load a licensed release (LOINC, SNOMED CT RF2, RxNorm RRF, CVX, FHIR JSON)"
    )
    load.add_argument("kind", choices=KINDS)
    load.add_argument("path", type=Path, help="the release file or folder, as distributed")
    load.add_argument("--warehouse", type=Path, default=None, help=warehouse_help)
    load.add_argument(
        "--release-version", default=None, help="record this version instead of the detected one"
    )
    load.set_defaults(func=_cmd_terminology_load)
    status = term_sub.add_parser("status", help="systems in force: versions, counts, sources")
    status.add_argument("--warehouse", type=Path, default=None, help=warehouse_help)
    status.set_defaults(func=_cmd_terminology_status)
    cov = term_sub.add_parser(
        "coverage", help="share of codings standard after normalization, whole warehouse"
    )
    cov.add_argument("--warehouse", type=Path, default=None, help=warehouse_help)
    cov.set_defaults(func=_cmd_terminology_coverage)


def _cmd_terminology_load(args: argparse.Namespace) -> int:
    from pipelines.common.warehouse import open_warehouse
    from pipelines.normalize import renormalize
    from terminology.loaders import read_release
    from terminology.store import changed_in_warehouse, ensure_default, install

    release = read_release(args.kind, args.path, version=args.release_version)  # parse before locking
    con = open_warehouse(args.warehouse or DEFAULT_DATA_DIR / "warehouse.duckdb")
    try:
        ensure_default(con)
        report = install(con, release)
        seen, pointers = changed_in_warehouse(con, report.changed)
        # Records holding a code whose status or replacement changed are normalized again, now.
        redone = renormalize(con, [(c.system, c.code) for c in report.changed], warehouse=args.warehouse)
    finally:
        con.close()
    if report.already_loaded:
        out.print(
            f"{report.kind} {report.version} ({report.system}) is already the release in force: nothing done"
        )
        return int(ExitCode.OK)
    before = f", replacing {report.previous_version}" if report.previous_version else ""
    out.print(f"loaded {report.kind} {report.version} for {report.system}{before}", soft_wrap=True)
    out.print("  " + ", ".join(f"{name} {n}" for name, n in report.counts.items()))
    out.print(f"  {len(report.changed)} code(s) changed status or replacement since the previous release")
    out.print(f"  {seen} of them appear in the warehouse's mapping log" + (":" if pointers else ""))
    for pointer in pointers:
        out.print(f"    {pointer}", soft_wrap=True)
    if redone["resources"]:
        out.print(
            f"  re-normalized {redone['resources']} resource(s) holding them "
            f"({redone['rewritten']} rewritten, {redone['decisions']} decisions "
            f"logged under {redone['run_id']})"
        )
    return int(ExitCode.OK)


def _cmd_terminology_status(args: argparse.Namespace) -> int:
    from pipelines.common.warehouse import open_warehouse
    from terminology.store import default_sources, has_terminology, status

    # Read-only: looking must not change the warehouse (nor wait for a running migration's lock).
    con = open_warehouse(args.warehouse or DEFAULT_DATA_DIR / "warehouse.duckdb", read_only=True)
    try:
        info = status(con) if has_terminology(con) else None
    finally:
        con.close()
    meta = default_sources()
    if info is None:
        out.print(
            f"no terminology in this warehouse yet: the shipped default {meta['default_version']} is loaded "
            "by the first `ehrlift terminology load` or normalization run"
        )
        return int(ExitCode.OK)
    _print_standard_systems(info["systems"])
    # Plain lines, not a table: URIs and sources are long, and operators grep this output.
    shown = [s for s in info["systems"] if s["kind"] != "default" or s["concepts"] >= 1000]
    for s in shown:
        out.print(
            f"{s['system']}  {s['kind']} {s['version']} ({s['content'] or 'complete'}): "
            f"{s['concepts']} concepts, {s['inactive']} inactive, {s['replacements']} replacements",
            soft_wrap=True,
        )
        out.print(f"    source: {s['source']}; loaded {s['loaded_at']}", soft_wrap=True)
    small = len(info["systems"]) - len(shown)
    out.print(
        f"default terminology {meta['default_version']}: {small} more HL7 code systems in force, not listed; "
        f"{info['superseded_releases']} superseded release row(s) kept for audit"
    )
    for m in info["maps"]:
        out.print(f"map {m['map']} version {m['map_version']}: {m['rows']} rows", soft_wrap=True)
    return int(ExitCode.OK)


# The systems normalization maps to, with the `terminology load` kind that brings each in full.
STANDARD_SYSTEMS = (
    ("LOINC", "http://loinc.org", "loinc"),
    ("RxNorm", "http://www.nlm.nih.gov/research/umls/rxnorm", "rxnorm"),
    ("SNOMED CT", "http://snomed.info/sct", "snomed"),
    ("CVX", "http://hl7.org/fhir/sid/cvx", "cvx"),
)


def _print_standard_systems(systems: list[dict]) -> None:
    """The first answer: is each standard system loaded, which release, complete or only a fragment."""
    by_system = {s["system"]: s for s in systems}
    out.print("standard code systems:")
    for name, uri, kind in STANDARD_SYSTEMS:
        s = by_system.get(uri)
        if s is None:
            out.print(f"  {name:<10} not loaded: `ehrlift terminology load {kind} <release>`", soft_wrap=True)
            continue
        content = s["content"] or "complete"
        line = f"  {name:<10} {content}: {s['concepts']:,} concepts, release {s['version']} ({s['kind']})"
        if content != "complete":
            line += f"; for the full release: `ehrlift terminology load {kind} <release>`"
        out.print(line, soft_wrap=True)
    out.print("")


def _mapping_parsers(sub) -> None:
    wh = {
        "type": Path,
        "default": None,
        "help": "DuckDB warehouse file (default: $EHRLIFT_WAREHOUSE or "
        f"{DEFAULT_DATA_DIR / 'warehouse.duckdb'})",
    }
    mappings = sub.add_parser("mappings", help="review unmapped local codes; Millennium code values")
    msub = mappings.add_subparsers(dest="mappings_command", required=True)
    suggest = msub.add_parser("suggest", help="write ranked candidates for unmapped codes (CSV, or .xlsx)")
    suggest.add_argument("--warehouse", **wh)
    suggest.add_argument("--out", type=Path, required=True, help="review file to write (.csv or .xlsx)")
    suggest.add_argument("--top", type=int, default=5, help="candidates per code (default 5)")
    suggest.set_defaults(func=_cmd_mappings_suggest)
    imp = msub.add_parser("import", help="approved review rows -> a new crosswalk version for the next run")
    imp.add_argument("file", type=Path)
    imp.add_argument("--warehouse", **wh)
    imp.set_defaults(func=_cmd_mappings_import)
    mcv = msub.add_parser("millennium-codes", help="load a Millennium CODE_VALUE extract (CSV)")
    mcv.add_argument("file", type=Path)
    mcv.add_argument("--warehouse", **wh)
    mcv.set_defaults(func=_cmd_mappings_millennium)


def _warehouse(path: Path | None) -> Path:
    return RunConfig.from_env((), warehouse=path).warehouse


def _cmd_mappings_suggest(args: argparse.Namespace) -> int:
    from terminology.commands import suggest_command

    return suggest_command(_warehouse(args.warehouse), args.out, args.top, out)


def _cmd_mappings_import(args: argparse.Namespace) -> int:
    from terminology.commands import import_command

    return import_command(_warehouse(args.warehouse), args.file, out, err)


def _cmd_mappings_millennium(args: argparse.Namespace) -> int:
    from terminology.commands import millennium_command

    return millennium_command(_warehouse(args.warehouse), args.file, out)


def _cmd_terminology_coverage(args: argparse.Namespace) -> int:
    from terminology.commands import coverage_command

    return coverage_command(_warehouse(args.warehouse), out)


def _cmd_run(args: argparse.Namespace) -> int:
    from pipelines.run import run_pipeline

    # The same rule as `ehrlift backload plan --override-gate --reason TEXT`.
    if args.override_gate and not (args.reason or "").strip():
        raise ConfigError("--override-gate needs --reason TEXT (it is recorded with the run)")
    if args.reason and not args.override_gate:
        raise ConfigError("--reason goes with --override-gate")
    config = RunConfig.from_env(
        tuple(args.sources),
        warehouse=args.warehouse,
        source_system=args.source_system,
        fhir_release=args.fhir_release,
        progress=not args.no_progress,
        gate_override=args.reason if args.override_gate else None,
    )
    summary = run_pipeline(config)
    print_summary(summary, config)
    if summary.validation.get("blocked"):
        from pipelines.validate import gate_for

        err.print(
            f"[bold red]blocked:[/] {escape(str(gate_for(config).error()))}", markup=True, soft_wrap=True
        )
        return int(ExitCode.GATE_BLOCKED)
    return int(ExitCode.OK)


def _cmd_demo(args: argparse.Namespace) -> int:
    from pipelines.demo import generate_demo_data

    if args.patients < 1:
        raise EhrliftError("--patients must be at least 1")
    summary = generate_demo_data(
        args.dir,
        patients=args.patients,
        seed=args.seed,
        hl7v2=not args.no_hl7v2,
        ccda=not args.no_ccda,
        dstu2=not args.no_dstu2,
        identity=args.identity_noise,
    )
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
    if not _is_loopback(args.host):
        err.print(
            f"warning: --host {args.host} accepts connections from other machines; MLLP has no "
            "encryption or authentication, so bind to loopback behind a VPN or TLS tunnel where you can"
        )

    def ready(port: int) -> None:  # said once the port is bound: a busy port is an error, not a claim
        err.print(
            f"listening for MLLP on {args.host}:{port}; accepted messages go to {args.feed_dir} "
            "(Ctrl-C stops after in-flight messages are written)"
        )

    listen(args.feed_dir, args.host, args.port, ready=ready)
    return int(ExitCode.OK)


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _cmd_report(args: argparse.Namespace) -> int:
    from pipelines.common.progress import Bars
    from pipelines.report import write_report

    with Bars(True).running():  # a bar on a terminal only
        files = write_report(_warehouse_arg(args.warehouse), args.out, args.run_id)
    out.print(f"compliance report for {files.run_id}: {files.html.resolve()}", soft_wrap=True)
    out.print(f"data: {files.data.resolve()}", soft_wrap=True)
    out.print(f"sha256 of the data: {files.digest}", soft_wrap=True)
    out.print(f"verdict: {files.verdict}", soft_wrap=True)
    out.print(
        f"sign it: ehrlift report sign --run {files.run_id} --digest {files.digest} "
        "--reviewer NAME --role ROLE --decision approved|approved-with-conditions|rejected",
        soft_wrap=True,
    )
    return int(ExitCode.OK)


def _cmd_runs(args: argparse.Namespace) -> int:
    from pipelines.common.warehouse import open_warehouse
    from pipelines.summary import list_runs

    if args.limit < 1:
        raise EhrliftError("--limit must be at least 1")
    with open_warehouse(_warehouse_arg(args.warehouse), read_only=True) as con:
        runs = list_runs(con, args.limit)
    if not runs:
        out.print("no run is recorded in this warehouse yet: `ehrlift run SOURCE...` starts one")
        return int(ExitCode.OK)
    # Plain columns, never truncated: run ids are copied from here into `ehrlift report --run`.
    header = ("run", "started (UTC)", "status", "exit", "files", "units in", "converted", "quarantined",
              "skipped", "resources")  # fmt: skip
    counts = ("files", "units", "converted", "quarantined", "skipped", "resources")
    rows = [
        (r["run_id"], r["started_at"], r["status"], _text(r["exit_code"]), *(str(r[k]) for k in counts))
        for r in runs
    ]
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        line = "  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True))
        out.print(line.rstrip(), soft_wrap=True)
    return int(ExitCode.OK)


def _text(value: object) -> str:
    return "" if value is None else str(value)


def _cmd_deidentify(args: argparse.Namespace) -> int:
    from pipelines.deid import deidentify

    result = deidentify(_warehouse_arg(args.warehouse), args.out, dates=args.dates)
    out.print(
        f"de-identified analyst views ({result.date_mode} dates): {result.out.resolve()}", soft_wrap=True
    )
    for table, n in result.tables.items():
        out.print(f"  {table}: {n} rows")
    if result.excluded:
        out.print("not exported (no de-identification rule): " + ", ".join(result.excluded))
    return int(ExitCode.OK)


def print_summary(summary: RunSummary, config: RunConfig) -> None:
    from pipelines.common.runrecord import run_report_path

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
        if v.get("gate_override"):
            out.print(
                "gate overridden (recorded in ops.gate_overrides): " + ", ".join(v["critical_failed"]),
                soft_wrap=True,
            )
    if summary.stages:
        out.print(
            "stage seconds: "
            + ", ".join(f"{s} {t['seconds']:.2f}" for s, t in summary.stages.items())
            + f" (peak RSS {max(t['peak_rss_mb'] for t in summary.stages.values()):.0f} MB)",
            soft_wrap=True,
        )
    out.print(
        f"ledger reconciles (units = converted + quarantined + skipped): "
        f"{'yes' if summary.reconciles else 'NO'}"
    )
    out.print(f"warehouse: {config.warehouse.resolve()}", soft_wrap=True)
    out.print(f"landing zone: {config.landing_dir.resolve()}", soft_wrap=True)
    out.print(f"run report: {run_report_path(config).resolve()}", soft_wrap=True)
    _print_next_steps(summary, config)


def _print_next_steps(summary: RunSummary, config: RunConfig) -> None:
    """What to do next: the compliance report, then what needs a person (quarantine, the gate)."""
    warehouse = shlex.quote(str(config.warehouse.resolve()))
    out.print("next:")
    out.print(
        f"  compliance report: ehrlift report --warehouse {warehouse} --run {summary.run_id}", soft_wrap=True
    )
    if summary.totals.quarantined:
        out.print(
            f"  review the quarantine: SELECT reason_code, pointer, message FROM ops.quarantine "
            f"WHERE run_id = '{summary.run_id}' (in the warehouse, e.g. with the duckdb CLI)",
            soft_wrap=True,
        )
    if summary.validation.get("blocked"):
        out.print("  the run is blocked: fix the data behind the failed critical expectations and re-run")


if __name__ == "__main__":
    raise SystemExit(main())

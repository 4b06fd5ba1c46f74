"""`ehrlift cds-hooks serve | merge-audit`: the command-line side of the CDS Hooks service."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipelines.common.errors import ConfigError, ExitCode


def add_commands(sub: argparse._SubParsersAction) -> None:
    cds = sub.add_parser("cds-hooks", help="CDS Hooks 2.0 service: migrated-record review in the chart")
    cds_sub = cds.add_subparsers(dest="cds_command", required=True)
    serve = cds_sub.add_parser("serve", help="serve discovery, patient-view and order hooks over HTTP")
    serve.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="TCP port (default 8090)")
    serve.add_argument("--warehouse", type=Path, default=None, help="DuckDB warehouse file")
    serve.add_argument(
        "--config",
        type=Path,
        default=None,
        help="JSON settings: base_url, trusted issuers with their jku allow-list or JWK Set, timeouts",
    )
    serve.set_defaults(func=_cmd_serve)
    merge = cds_sub.add_parser("merge-audit", help="move the service's queued audit and feedback rows in")
    merge.add_argument("--warehouse", type=Path, default=None, help="DuckDB warehouse file")
    merge.add_argument("--config", type=Path, default=None, help="the service's JSON settings")
    merge.set_defaults(func=_cmd_merge)


def _cmd_serve(args: argparse.Namespace) -> int:
    from pipelines.cds.service import serve

    if args.port is not None and not 0 < args.port < 65536:
        raise ConfigError(f"--port must be 1-65535, not {args.port}")
    serve(args.config, warehouse=args.warehouse, host=args.host, port=args.port)
    return int(ExitCode.OK)


def _cmd_merge(args: argparse.Namespace) -> int:
    from pipelines.cds import config as cds_config
    from pipelines.cds.audit import merge

    cfg = cds_config.load(args.config, warehouse=args.warehouse, host=None, port=None)
    n = merge(cfg.spool_path, cfg.warehouse)
    print(f"merged {n} queued CDS Hooks events", file=sys.stderr)
    return int(ExitCode.OK)

"""`ehrlift backload hl7`: plan and send ORU/VXU/MDM/ADT messages over MLLP (argparse and handler)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from pipelines.common.config import DEFAULT_DATA_DIR
from pipelines.common.errors import ConfigError

out = Console(highlight=False, markup=False)


def add_commands(bsub: Any) -> None:
    p = bsub.add_parser(
        "hl7", help="send historical results, immunizations, documents, registrations as HL7 v2"
    )
    p.add_argument("--warehouse", type=Path, default=DEFAULT_DATA_DIR / "warehouse.duckdb")
    p.add_argument("--profile", default="millennium-r4", help="target name (codes as its coding rules ask)")
    p.add_argument("--to", default=None, help="the interface's HOST:PORT (without it: plan only)")
    p.add_argument("--messages", default="adt,oru,vxu,mdm", help="any of adt,oru,vxu,mdm (default all)")
    p.add_argument("--version", dest="hl7_version", default="2.5.1", choices=("2.3.1", "2.5.1"))
    p.add_argument(
        "--batch",
        type=int,
        default=500,
        help="ACK outcomes unrecorded at most (a kill resends at most about this many)",
    )
    p.add_argument("--rate", type=float, default=None, help="messages per second at most")
    p.add_argument("--connections", type=int, default=1, help="MLLP connections (a patient stays on one)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for an ACK")
    p.add_argument("--attempts", type=int, default=3, help="tries per message (timeouts, retryable NAKs)")
    p.add_argument(
        "--reconnect-after", type=int, default=None, help="messages per connection (default: keep it)"
    )
    p.add_argument("--validate", choices=("structure", "full"), default="structure",
                   help="full: hl7apy parses and validates every message as well")  # fmt: skip
    p.add_argument(
        "--part-size",
        type=int,
        default=None,
        help="a larger plan goes in parts of whole patients of about this many messages, one at a time "
        "(default 20000): memory follows the part, not the plan",
    )
    p.add_argument("--override-gate", action="store_true", help="send from a run the gate blocked")
    p.add_argument("--reason", default=None, help="why the gate is overridden")
    p.set_defaults(func=_cmd_hl7)


def _cmd_hl7(args: argparse.Namespace) -> int:
    from pipelines.backload.hl7.mllp import SendPolicy
    from pipelines.backload.hl7.runner import Hl7Options, backload_hl7, parse_kinds, refused
    from pipelines.common.progress import Bars

    if not 1 <= args.connections <= 16:
        raise ConfigError("--connections must be between 1 and 16")
    if args.batch < 1 or args.attempts < 1 or args.timeout <= 0 or (args.rate is not None and args.rate <= 0):
        raise ConfigError("--batch, --attempts, --timeout and --rate must be positive")
    if args.part_size is not None and args.part_size < 1:
        raise ConfigError("--part-size must be positive")
    if args.override_gate and not (args.reason or "").strip():
        raise ConfigError("--override-gate needs --reason TEXT")
    options = Hl7Options(
        to=args.to,
        kinds=parse_kinds(args.messages),
        version=args.hl7_version,
        profile=args.profile,
        batch=args.batch,
        validate=args.validate,
        policy=SendPolicy(
            args.connections, args.rate, args.timeout, args.attempts, reconnect_after=args.reconnect_after
        ),
        override_reason=args.reason if args.override_gate else None,
        **({"part_size": args.part_size} if args.part_size is not None else {}),
    )
    with Bars(True).running():  # a bar on a terminal only
        result = backload_hl7(args.warehouse, options)
    table = Table("outcome", "messages", title=f"HL7 back-load plan {result['plan_id']}")
    for key, value in result.items():
        if key != "plan_id":
            table.add_row(key, str(value))
    out.print(table)
    if result.get("failed"):
        raise refused(result)
    return 0

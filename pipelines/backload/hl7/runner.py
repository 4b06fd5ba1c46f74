"""`backload_hl7`, the entry point the CLI and the DAG call: plan the messages, then send what is pending."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from pipelines.backload.hl7.messages import KINDS
from pipelines.backload.hl7.mllp import Item, Outcome, SendPolicy, send_all
from pipelines.backload.hl7.plan import Planned, build_plan
from pipelines.backload.hl7.segments import Header
from pipelines.backload.hl7.structure import VERSIONS
from pipelines.backload.store import source_run
from pipelines.common.errors import ConfigError, EhrliftError, ExitCode
from pipelines.common.warehouse import open_warehouse, transaction

log = logging.getLogger(__name__)


class InterfaceRefused(EhrliftError):
    """Some messages were not acknowledged (AE/AR after the bounded retries, or no ACK): exit status 9."""

    exit_code = ExitCode.REMOTE


def refused(result: dict[str, Any]) -> InterfaceRefused:
    return InterfaceRefused(
        f"{result['failed']} HL7 message(s) were not accepted by the interface",
        hint="`ehrlift report` shows the ACK codes; a re-run sends only what was not acknowledged",
    )


@dataclass(frozen=True)
class Hl7Options:
    to: str | None  # HOST:PORT; None plans only
    kinds: tuple[str, ...] = KINDS
    version: str = "2.5.1"
    profile: str = "millennium-r4"
    batch: int = 50  # outcomes recorded per transaction (a kill loses at most this many, which are resent)
    validate: str = "structure"  # structure, full (hl7apy parses every message as well)
    policy: SendPolicy = field(default_factory=SendPolicy)
    override_reason: str | None = None


def parse_kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip().lower() for k in text.split(",") if k.strip())
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ConfigError(f"--messages takes a list of {', '.join(KINDS)}")
    return kinds


def parse_target(to: str) -> tuple[str, int]:
    host, _, port = to.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError("--to must be HOST:PORT")
    return host, int(port)


def backload_hl7(warehouse: Path, options: Hl7Options) -> dict[str, Any]:
    """Plan (stored before anything is sent), then send the messages not yet acknowledged; counts out."""
    if options.version not in VERSIONS:
        raise ConfigError(f"--version must be one of {', '.join(VERSIONS)}")
    address = parse_target(options.to) if options.to else None
    with open_warehouse(warehouse) as con:
        run_id = source_run(con, options.override_reason)
        started = con.execute(
            "SELECT strftime(timezone('UTC', started_at), '%Y%m%d%H%M%S') FROM ops.runs WHERE run_id = ?",
            [run_id],
        ).fetchone()[0]
        when = f"{started}+0000"  # MSH-7: the run's start, so the same warehouse gives the same plan
        acked = acknowledged(con, options.profile)
        planned = build_plan(
            con, options.profile, list(options.kinds), Header(version=options.version), when, acked,
            Path(warehouse).parent,
        )  # fmt: skip
        if options.validate == "full":
            _hl7apy(planned, options.version)
        plan_id = save(con, options.profile, planned, run_id)
        counts = Counter(p.status for p in planned)
        pending = [p for p in planned if p.status == "send" and p.control_id not in acked]
        result: dict[str, Any] = {
            "plan_id": plan_id,
            **{k: counts.get(k, 0) for k in ("send", "not_sendable", "unchanged")},
        }
        if address is None:
            return {**result, "pending": len(pending)}
        sent = _send(con, plan_id, options, address, pending)
        return {**result, **sent}


def acknowledged(con: duckdb.DuckDBPyConnection, target: str) -> dict[str, str]:
    """control id -> "kind:Type/id" of every message a receiver answered AA (or CA)."""
    rows = con.execute(
        "SELECT DISTINCT r.control_id, m.kind || ':' || m.resource_type || '/' || m.warehouse_id "
        "FROM ops.backload_hl7_results r JOIN ops.backload_hl7_messages m "
        "ON m.control_id = r.control_id AND m.target = r.target WHERE r.target = ? AND r.state = 'done'",
        [target],
    ).fetchall()
    return dict(rows)


def save(con: duckdb.DuckDBPyConnection, target: str, planned: list[Planned], run_id: str) -> str:
    h = hashlib.sha256(target.encode())
    for p in planned:
        h.update(f"{p.seq}|{p.kind}|{p.warehouse_id}|{p.status}|{p.reason}|{p.control_id}\n".encode())
    plan_id = h.hexdigest()[:16]
    now = datetime.now(UTC)
    with transaction(con):
        con.execute("DELETE FROM ops.backload_hl7_messages WHERE plan_id = ?", [plan_id])
        con.executemany(
            "INSERT INTO ops.backload_hl7_messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (plan_id, p.seq, target, p.kind, p.message_type, p.resource_type, p.warehouse_id,
                 p.patient_id, p.status, p.reason, p.detail, p.control_id, p.content_sha256, p.text,
                 now, run_id)
                for p in planned
            ],
        )  # fmt: skip
    log.info("HL7 back-load plan %s: %s", plan_id, dict(Counter(p.status for p in planned)))
    return plan_id


def _hl7apy(planned: list[Planned], version: str) -> None:
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message

    for p in planned:
        if p.text is None:
            continue
        try:
            parse_message(p.text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True).validate()
        except Exception as exc:  # any hl7apy finding makes the message not sendable
            # The exception's class only: hl7apy's texts quote the values they refuse.
            p.refuse("hl7_structure", f"hl7apy: {type(exc).__name__}")


def _send(
    con: duckdb.DuckDBPyConnection,
    plan_id: str,
    options: Hl7Options,
    address: tuple[str, int],
    pending: list[Planned],
) -> dict[str, Any]:
    items = [
        Item(p.seq, p.control_id or "", p.patient_id or "", (p.text or "").encode("utf-8")) for p in pending
    ]
    buffer: list[Outcome] = []
    tally: Counter[str] = Counter()

    def flush() -> None:
        if not buffer:
            return
        now = datetime.now(UTC)
        with transaction(con):
            con.executemany(
                "INSERT INTO ops.backload_hl7_results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (plan_id, o.item.seq, options.profile, o.item.control_id, o.state, o.ack_code,
                     ",".join(o.error_codes) or None, o.attempts, now)
                    for o in buffer
                ],
            )  # fmt: skip
        buffer.clear()

    def record(o: Outcome) -> None:
        tally[o.state] += 1
        buffer.append(o)
        if len(buffer) >= max(1, options.batch):
            flush()

    try:
        asyncio.run(send_all(address[0], address[1], items, options.policy, record))
    finally:
        flush()
    return {"sent": len(items), "done": tally["done"], "failed": tally["failed"]}


STATUS_COLUMNS = ("planned", "done", "failed", "not_sendable", "unchanged", "pending")


def report_rows(con: duckdb.DuckDBPyConnection, run_id: str) -> list[dict[str, Any]]:
    """The report's HL7 back-load section: per target, the latest plan from this run (counts only)."""
    out = []
    for plan_id, target in con.execute(
        "SELECT plan_id, target FROM (SELECT DISTINCT plan_id, target, planned_at "
        "FROM ops.backload_hl7_messages WHERE run_id = ?) "
        "QUALIFY row_number() OVER (PARTITION BY target ORDER BY planned_at DESC, plan_id) = 1 "
        "ORDER BY target",
        [run_id],
    ).fetchall():
        reasons = con.execute(
            "SELECT kind, reason, count(*) FROM ops.backload_hl7_messages "
            "WHERE plan_id = ? AND reason IS NOT NULL GROUP BY ALL ORDER BY ALL",
            [plan_id],
        ).fetchall()
        kinds = hl7_status(con, target, plan_id)
        out.append(
            {
                "target": target,
                "plan_id": plan_id,
                "kinds": kinds,
                "reasons": [{"kind": k, "reason": r, "count": n} for k, r, n in reasons],
                "reconciles": all(k["planned"] == sum(k[c] for c in STATUS_COLUMNS[1:]) for k in kinds),
            }
        )
    return out


def hl7_status(
    con: duckdb.DuckDBPyConnection, target: str, plan_id: str | None = None
) -> list[dict[str, Any]]:
    """Per message kind of a plan (default: the latest), planned = done + failed + not_sendable + unchanged
    + pending."""
    row = (
        (plan_id,)
        if plan_id
        else con.execute(
            "SELECT plan_id FROM ops.backload_hl7_messages WHERE target = ? ORDER BY planned_at DESC LIMIT 1",
            [target],
        ).fetchone()
    )
    if row is None:
        return []
    rows = con.execute(
        """
        WITH last AS (
            SELECT control_id, state FROM ops.backload_hl7_results WHERE target = $t
            QUALIFY row_number() OVER (PARTITION BY control_id
                ORDER BY CASE state WHEN 'done' THEN 0 ELSE 1 END, recorded_at DESC) = 1
        )
        SELECT m.kind, m.status, l.state, count(*) FROM ops.backload_hl7_messages m
        LEFT JOIN last l USING (control_id) WHERE m.plan_id = $p GROUP BY ALL ORDER BY ALL
        """,
        {"t": target, "p": row[0]},
    ).fetchall()
    per: dict[str, Counter[str]] = {}
    for kind, status, state, n in rows:
        c = per.setdefault(kind, Counter())
        c["planned"] += n
        if status != "send":
            c[status] += n
        elif state in ("done", "failed"):
            c[state] += n
        else:
            c["pending"] += n
    return [{"kind": k, **{c: per[k][c] for c in STATUS_COLUMNS}} for k in sorted(per)]


def hl7_from_params(params: dict[str, Any] | None) -> dict[str, Any]:
    """The DAG's HL7 stage: nothing to do without params hl7_to (or EHRLIFT_BACKLOAD_HL7_TO)."""
    import os

    from pipelines.common.config import DEFAULT_DATA_DIR

    p = params or {}
    to = p.get("hl7_to") or os.environ.get("EHRLIFT_BACKLOAD_HL7_TO")
    if not to:
        return {"skipped": "no hl7_to"}
    warehouse = Path(
        p.get("warehouse") or os.environ.get("EHRLIFT_WAREHOUSE") or DEFAULT_DATA_DIR / "warehouse.duckdb"
    )
    options = Hl7Options(
        to=to,
        kinds=parse_kinds(p.get("hl7_messages") or ",".join(KINDS)),
        version=p.get("hl7_version") or "2.5.1",
        profile=p.get("profile") or "millennium-r4",
        policy=SendPolicy(connections=int(p.get("hl7_connections") or 1), rate=p.get("hl7_rate") or None),
    )
    result = backload_hl7(warehouse, options)
    if result.get("failed"):
        raise refused(result)
    return result

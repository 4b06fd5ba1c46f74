"""`backload_hl7`, the entry point the CLI and the DAG call: plan the messages, then send what is pending."""

from __future__ import annotations

import gc
import hashlib
import logging
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import duckdb

from pipelines.backload.hl7.journal import folder, recover
from pipelines.backload.hl7.messages import KINDS, SOURCE_TYPE
from pipelines.backload.hl7.mllp import SendPolicy
from pipelines.backload.hl7.parts import PART_MESSAGES, Part, cut
from pipelines.backload.hl7.plan import Planned, Prepared, build, coder_for, prepare
from pipelines.backload.hl7.segments import Header
from pipelines.backload.hl7.stream import PLAN_TYPES, build_and_send, insert, plan_row
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
    batch: int = 500  # ACK outcomes unrecorded at most (a kill resends at most about this many)
    validate: str = "structure"  # structure, full (hl7apy parses every message as well)
    policy: SendPolicy = field(default_factory=SendPolicy)
    override_reason: str | None = None
    builders: int | None = None  # builder processes; None: one per core the sender leaves free
    part_size: int = PART_MESSAGES  # messages per part of a larger plan (parts of whole patients)


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
    """Plan, then send what is not yet acknowledged (each message journaled before it goes); counts out. A
    plan larger than `options.part_size` messages goes in parts of whole patients (parts.cut), each read,
    built and sent in turn: what is held at once is one part's."""
    if options.version not in VERSIONS:
        raise ConfigError(f"--version must be one of {', '.join(VERSIONS)}")
    if options.part_size < 1:
        raise ConfigError("--part-size must be positive")
    address = parse_target(options.to) if options.to else None
    with open_warehouse(warehouse) as con:
        run_id = source_run(con, options.override_reason)
        started = con.execute(
            "SELECT strftime(timezone('UTC', started_at), '%Y%m%d%H%M%S') FROM ops.runs WHERE run_id = ?",
            [run_id],
        ).fetchone()[0]
        when = f"{started}+0000"  # MSH-7: the run's start, so the same warehouse gives the same plan
        recover(con, warehouse)  # what a killed send left in its journal, before anything is decided
        acked = acknowledged(con, options.profile)
        check = partial(_hl7apy, version=options.version) if options.validate == "full" else None
        coder = coder_for(con, options.profile)  # its memo of concepts serves every part
        parts: list[Part | None] = [*cut(con, [SOURCE_TYPE[k] for k in options.kinds], options.part_size)]
        header = Header(version=options.version)

        def prepared(part: Part | None, first: int) -> Prepared:
            return prepare(
                con, options.profile, list(options.kinds), header, when, acked, Path(warehouse).parent,
                part=part, first=first, coder=coder,
            )  # fmt: skip

        if address is None:  # plan only: build here, store, count
            return _plan_only(con, options.profile, run_id, parts or [None], prepared, check, acked)
        # Sending: a plan of its own per invocation, its rows stored as they are built, each before it goes.
        plan_id = hashlib.sha256(f"{options.profile}\0{run_id}\0{datetime.now(UTC).isoformat()}".encode())
        plan_id_text = plan_id.hexdigest()[:16]
        totals: Counter[str] = Counter()
        first = 1
        for part in parts or [None]:
            prep = prepared(part, first)
            first += len(prep.work)
            try:
                result = build_and_send(
                    con,
                    prep,
                    plan_id_text,
                    run_id,
                    address,
                    options.policy,
                    options.batch,
                    folder(warehouse),
                    check,
                    options.builders,
                    part=(part.number, part.of) if part else None,
                )
            finally:
                # build_and_send froze the collector over the plan's objects: they go first, by their
                # reference counts, so that unfreezing hands the collector nothing of theirs to walk.
                del prep
                gc.unfreeze()
            totals.update(result)
        counts = {
            k: totals.get(k, 0) for k in ("send", "not_sendable", "unchanged", "sent", "done", "failed")
        }
        log.info("HL7 back-load plan %s sent (%d part(s)): %s", plan_id_text, max(1, len(parts)), counts)
        return {"plan_id": plan_id_text, **counts}


def acknowledged(con: duckdb.DuckDBPyConnection, target: str) -> dict[str, str]:
    """control id -> "kind:Type/id" of every message a receiver answered AA (or CA)."""
    rows = con.execute(
        "SELECT DISTINCT r.control_id, m.kind || ':' || m.resource_type || '/' || m.warehouse_id "
        "FROM ops.backload_hl7_results r JOIN ops.backload_hl7_messages m "
        "ON m.control_id = r.control_id AND m.target = r.target WHERE r.target = ? AND r.state = 'done'",
        [target],
    ).fetchall()
    return dict(rows)


def _plan_only(
    con: duckdb.DuckDBPyConnection,
    target: str,
    run_id: str,
    parts: list[Part | None],
    prepared: Callable[[Part | None, int], Prepared],
    check: Callable[[list[Planned]], None] | None,
    acked: dict[str, str],
) -> dict[str, Any]:
    """Build every part here and store the plan in one transaction, named by its content (the same plan
    again replaces the one stored before); counts out."""
    h = hashlib.sha256(target.encode())
    counts: Counter[str] = Counter()
    pending = 0
    now = datetime.now(UTC)
    provisional = f"~{uuid.uuid4().hex[:15]}"  # until the content is known (the transaction hides it)
    with transaction(con):
        first = 1
        for part in parts:
            prep = prepared(part, first)
            first += len(prep.work)
            planned = [build(prep, *w) for w in prep.work]
            del prep
            if check is not None:
                check(planned)
            for p in planned:
                h.update(f"{p.seq}|{p.kind}|{p.warehouse_id}|{p.status}|{p.reason}|{p.control_id}\n".encode())
            counts.update(p.status for p in planned)
            pending += sum(1 for p in planned if p.status == "send" and p.control_id not in acked)
            rows = [plan_row(provisional, target, run_id, p, now) for p in planned]
            insert(con, "ops.backload_hl7_messages", PLAN_TYPES, rows)
        plan_id = h.hexdigest()[:16]
        con.execute("DELETE FROM ops.backload_hl7_messages WHERE plan_id = ?", [plan_id])
        con.execute(
            "UPDATE ops.backload_hl7_messages SET plan_id = ? WHERE plan_id = ?", [plan_id, provisional]
        )
    log.info("HL7 back-load plan %s: %s", plan_id, dict(counts))
    return {
        "plan_id": plan_id,
        **{k: counts.get(k, 0) for k in ("send", "not_sendable", "unchanged")},
        "pending": pending,
    }


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
        part_size=int(p.get("hl7_part_size") or PART_MESSAGES),
    )
    result = backload_hl7(warehouse, options)
    if result.get("failed"):
        raise refused(result)
    return result

"""Audit and feedback rows queued in a spool file, merged into the warehouse when it is free.

The service never holds the warehouse open (see snapshot.py) and a migration run may hold the only write
lock for an hour, so an invocation cannot insert its ops.phi_access row directly without either failing
or making the clinician wait. Each row is instead appended (one JSON line, flushed and fsynced) to a spool
file beside the warehouse; the service merges the spool with a short write connection at each refresh and
at shutdown, and `ehrlift cds-hooks merge-audit` does it on demand. Every row carries an event id and the
merge inserts only ids the warehouse lacks, so a merge interrupted after its commit repeats harmlessly.
The spool holds no record values: issuer, hook, service, whether a patient was resolved, card types.
"""

from __future__ import annotations

import os
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from pipelines.common.warehouse import open_warehouse, transaction
from pipelines.deid.audit import os_user

COMMAND = "cds-hooks"


class Spool:
    """Append-only JSON lines; one lock per process, one write + fsync per event."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def append(self, kind: str, **fields: Any) -> str:
        event = str(uuid.uuid4())
        line = orjson.dumps({"event": event, "kind": kind, "at": datetime.now(UTC).isoformat(), **fields})
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("ab") as fh:
                fh.write(line + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
        return event


def merge(spool: Path, warehouse: Path) -> int:
    """Move queued rows into ops.phi_access, ops.cds_cards and ops.cds_feedback; returns events merged.

    Raises WarehouseError when the warehouse is busy: the spool then stays, for the next attempt.
    """
    pending = spool.with_name(spool.name + ".merging")
    if not warehouse.exists():
        return 0  # nothing to audit into yet; never create a warehouse from here
    if not pending.exists():
        if not spool.exists():
            return 0
        os.replace(spool, pending)  # new events go to a fresh spool while this one is merged
    events = [orjson.loads(line) for line in pending.read_bytes().splitlines() if line.strip()]
    with open_warehouse(warehouse) as con, transaction(con):
        known = {
            r[0]
            for r in con.execute(
                "SELECT detail->>'$.event' FROM ops.phi_access WHERE command = ? "
                "UNION ALL SELECT event_id FROM ops.cds_feedback",
                [COMMAND],
            ).fetchall()
        }
        user = os_user()
        for ev in events:
            if ev["event"] in known:
                continue
            if ev["kind"] == "feedback":
                con.execute(
                    "INSERT INTO ops.cds_feedback "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, TRY_CAST(? AS TIMESTAMPTZ), ?)",
                    [
                        ev["event"],
                        ev["service"],
                        ev["card"],
                        ev["outcome"],
                        ev["accepted"],
                        ev.get("reason_system"),
                        ev.get("reason_code"),
                        ev.get("outcome_at"),
                        ev["at"],
                    ],
                )
                continue
            detail = {
                k: ev.get(k)
                for k in (
                    "event",
                    "kind",
                    "issuer",
                    "hook",
                    "service",
                    "hook_instance",
                    "patient_resolved",
                    "resolved_by",
                    "cards",
                )
            }
            con.execute(
                "INSERT INTO ops.phi_access VALUES (?, ?, ?, 'read', ?, ?, ?)",
                [
                    ev["at"],
                    user,
                    COMMAND,
                    ev.get("run_id"),
                    orjson.dumps(ev.get("tables", [])).decode(),
                    orjson.dumps(detail).decode(),
                ],
            )
            for card in ev.get("issued", []):
                con.execute(
                    "INSERT INTO ops.cds_cards VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        ev["event"],
                        card["uuid"],
                        ev["service"],
                        ev["hook"],
                        card["type"],
                        card["indicator"],
                        ev["at"],
                    ],
                )
    pending.unlink()
    return len(events)

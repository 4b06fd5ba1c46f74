"""Audit and feedback rows queued in a spool file, merged into the warehouse when it is free.

The service never holds the warehouse open (see snapshot.py) and a migration run may hold the only write
lock for an hour, so an invocation cannot insert its ops.phi_access row directly without either failing
or making the clinician wait. Each row is instead appended (one JSON line, flushed, fsynced within a
second) to a spool file beside the warehouse; the service merges the spool with a short write connection
at each refresh and at shutdown, and `ehrlift cds-hooks merge-audit` does it on demand. Every row carries
an event id and the merge inserts only ids the warehouse lacks, so a merge interrupted after its commit
repeats harmlessly.
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
_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT


class Spool:
    """Append-only JSON lines. Each event is written and flushed to the OS before the response (so a
    crash of the service loses none); `sync` (every second, off the request path) fsyncs them to disk,
    so a power loss can lose at most the last second of audit rows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._dirty = False

    def append(self, kind: str, **fields: Any) -> str:
        event = str(uuid.uuid4())
        line = orjson.dumps(
            {"event": event, "kind": kind, "at": datetime.now(UTC).isoformat(), **fields},
            option=orjson.OPT_APPEND_NEWLINE,
        )
        # Opened per event (three system calls, no buffered file object): a merge in another process may
        # have renamed the spool away, and a handle kept open would write into the file being merged.
        with self._lock:
            try:
                fd = os.open(self.path, _FLAGS, 0o600)
            except FileNotFoundError:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, _FLAGS, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
            self._dirty = True
        return event

    def sync(self) -> None:
        # The lock only guards the flag: an fsync can take long on a busy disk, and appends (made on the
        # service's event loop) must not wait for it.
        with self._lock:
            if not self._dirty:
                return
            self._dirty = False
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return  # merged away meanwhile: the warehouse holds the rows
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def merge(spool: Path, warehouse: Path) -> int:
    """Move queued rows into ops.phi_access, ops.cds_cards and ops.cds_feedback; returns events merged.

    Raises WarehouseError when the warehouse is busy: the spool then stays, for the next attempt.
    """
    pending = spool.with_name(spool.name + ".merging")
    if not warehouse.exists() or not (pending.exists() or spool.exists()):
        return 0  # nothing queued, or nothing to audit into yet: never create a warehouse from here
    with open_warehouse(warehouse) as con:  # raises while a run holds the warehouse: the spool stays
        if not pending.exists():
            os.replace(spool, pending)  # new events go to a fresh spool while this one is merged
        events = [orjson.loads(line) for line in pending.read_bytes().splitlines() if line.strip()]
        user = os_user()
        access, cards, feedback = [], [], []
        for ev in events:
            if ev["kind"] == "feedback":
                feedback.append(
                    (
                        ev["event"],
                        ev["service"],
                        ev["card"],
                        ev["outcome"],
                        ev["accepted"],
                        ev.get("reason_system"),
                        ev.get("reason_code"),
                        ev.get("outcome_at"),
                        ev["at"],
                    )
                )
                continue
            detail = {k: ev.get(k) for k in _DETAIL}
            access.append(
                (
                    ev["event"],
                    ev["at"],
                    user,
                    ev.get("run_id"),
                    orjson.dumps(ev.get("tables", [])).decode(),
                    orjson.dumps(detail).decode(),
                )
            )
            cards += [
                (ev["event"], c["uuid"], ev["service"], ev["hook"], c["type"], c["indicator"], ev["at"])
                for c in ev.get("issued", [])
            ]
        with transaction(con):
            _insert(con, access, cards, feedback)
    pending.unlink()
    return len(events)


_DETAIL = (
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


def _insert(con: Any, access: list[tuple], cards: list[tuple], feedback: list[tuple]) -> None:
    """Stage the queued rows, then insert only events the warehouse does not hold yet."""
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _cds_access (event VARCHAR, accessed_at TIMESTAMPTZ, os_user VARCHAR, "
        "run_id VARCHAR, tables VARCHAR, detail VARCHAR)"
    )
    con.execute("CREATE OR REPLACE TEMP TABLE _cds_cards AS SELECT * FROM ops.cds_cards LIMIT 0")
    con.execute("CREATE OR REPLACE TEMP TABLE _cds_feedback AS SELECT * FROM ops.cds_feedback LIMIT 0")
    if access:
        con.executemany("INSERT INTO _cds_access VALUES (?, ?, ?, ?, ?, ?)", access)
    if cards:
        con.executemany("INSERT INTO _cds_cards VALUES (?, ?, ?, ?, ?, ?, ?)", cards)
    if feedback:
        con.executemany(
            "INSERT INTO _cds_feedback VALUES (?, ?, ?, ?, ?, ?, ?, TRY_CAST(? AS TIMESTAMPTZ), ?)", feedback
        )
    con.execute(f"""
        INSERT INTO ops.phi_access
        SELECT a.accessed_at, a.os_user, '{COMMAND}', 'read', a.run_id, a.tables, a.detail FROM _cds_access a
        WHERE a.event NOT IN (SELECT detail->>'$.event' FROM ops.phi_access
                              WHERE command = '{COMMAND}' AND detail IS NOT NULL)
    """)
    con.execute("""
        INSERT INTO ops.cds_cards SELECT * FROM _cds_cards n
        WHERE NOT EXISTS (SELECT 1 FROM ops.cds_cards c
                          WHERE c.event_id = n.event_id AND c.card_uuid = n.card_uuid)
    """)
    con.execute("""
        INSERT INTO ops.cds_feedback SELECT * FROM _cds_feedback n
        WHERE n.event_id NOT IN (SELECT event_id FROM ops.cds_feedback)
    """)

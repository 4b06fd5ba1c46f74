"""The send journal: an append-only file beside the warehouse that records, with one write and one fsync per
group, each planned message's control id before it is sent and each ACK outcome; folded into
ops.backload_hl7_messages/results in one set-based statement each at the end of a send, or, after a kill, at
the start of the next run. It holds codes only (control ids, statuses, reason codes, field names, content
hashes), never message content or record ids: those are in the plan rows, committed before sending starts."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from pipelines.common.errors import EhrliftError
from pipelines.common.warehouse import transaction

log = logging.getLogger(__name__)

MAGIC = "ehrlift-hl7-journal"
VERSION = "1"
# Fields per line kind: H(eader), P(lan: what building decided), R(esult: one ACK outcome).
FIELDS = {"H": 6, "P": 7, "R": 7}


def folder(warehouse: Path | str) -> Path:
    return Path(f"{warehouse}.hl7-journal")


def _clean(value: object) -> str:
    """One field: None as empty; tabs and line ends cannot occur in codes, but never split a line."""
    if value is None:
        return ""
    return str(value).replace("\t", " ").replace("\n", " ").replace("\r", " ")


def line(kind: str, *values: object) -> str:
    return "\t".join((kind, *(_clean(v) for v in values))) + "\n"


class Journal:
    """One plan's journal, open for appending. write() returns once the lines are on disk (fsync)."""

    def __init__(self, path: Path, plan_id: str, target: str, run_id: str, planned_at: datetime) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.write([line("H", MAGIC, VERSION, plan_id, target, run_id, planned_at.isoformat())])
        # The file's name must survive a crash too, or the next run would not find what it holds.
        with contextlib.suppress(OSError):
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def write(self, lines: list[str]) -> None:
        data = "".join(lines).encode()
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass
class Read:
    """What a journal file holds: its header and its complete lines (a torn last line is left out)."""

    plan_id: str
    target: str
    run_id: str
    plans: list[list[str]] = field(default_factory=list)
    results: list[list[str]] = field(default_factory=list)
    torn: bool = False


def read(path: Path) -> Read | None:
    """None when the header itself never reached the disk whole (nothing was sent under it)."""
    data = path.read_bytes()
    complete, _, tail = data.rpartition(b"\n")
    lines = complete.decode("utf-8", errors="replace").split("\n") if complete else []
    torn = bool(tail)  # a kill mid-write leaves a last line without its end: never acted upon
    if not lines:
        return None
    head = lines[0].split("\t")
    if len(head) != FIELDS["H"] + 1 or head[0] != "H" or head[1] != MAGIC:
        raise EhrliftError(f"the HL7 send journal {path.name} is not one this version writes")
    out = Read(plan_id=head[3], target=head[4], run_id=head[5], torn=torn)
    for n, text in enumerate(lines[1:], start=2):
        parts = text.split("\t")
        kind = parts[0]
        if kind not in ("P", "R") or len(parts) != FIELDS[kind] + 1 or not parts[1].isdigit():
            raise EhrliftError(
                f"the HL7 send journal {path.name} is damaged at line {n}",
                hint="it is kept as it is; the messages it lists can be checked against the receiver's log",
            )
        (out.plans if kind == "P" else out.results).append(parts[1:])
    return out


def _null(v: str) -> str | None:
    return v or None


def fold(con: duckdb.DuckDBPyConnection, j: Read, texts: dict[int, str] | None = None) -> None:
    """Apply a journal to the tables: plan rows get what building decided (and the sent text, when this
    process still has it); outcomes are inserted once (a plan whose outcomes are already in is not folded
    again); rows never built are removed (nothing was sent for them)."""
    texts = texts or {}
    plans = j.plans
    seqs = [int(p[0]) for p in plans]
    with transaction(con):
        if plans:
            con.execute(
                """
                UPDATE ops.backload_hl7_messages m SET status = j.status, reason = j.reason,
                    detail = j.detail, control_id = j.control_id, message_type = j.message_type,
                    content_sha256 = j.sha, message = coalesce(j.message, m.message)
                FROM (SELECT unnest($1::INTEGER[]) AS seq, unnest($2::VARCHAR[]) AS status,
                    unnest($3::VARCHAR[]) AS reason, unnest($4::VARCHAR[]) AS detail,
                    unnest($5::VARCHAR[]) AS control_id, unnest($6::VARCHAR[]) AS message_type,
                    unnest($7::VARCHAR[]) AS sha, unnest($8::VARCHAR[]) AS message) j
                WHERE m.plan_id = $9 AND m.seq = j.seq
                """,
                [
                    seqs,
                    *([_null(p[i]) for p in plans] for i in range(1, 7)),
                    [texts.get(s) for s in seqs],
                    j.plan_id,
                ],
            )
        con.execute(
            "DELETE FROM ops.backload_hl7_messages "
            "WHERE plan_id = ? AND status = 'send' AND control_id IS NULL",
            [j.plan_id],
        )
        already = con.execute(
            "SELECT count(*) FROM ops.backload_hl7_results WHERE plan_id = ?", [j.plan_id]
        ).fetchone()[0]
        if j.results and not already:
            r = j.results
            con.execute(
                """
                INSERT INTO ops.backload_hl7_results SELECT $1, unnest($2::INTEGER[]), $3,
                    unnest($4::VARCHAR[]), unnest($5::VARCHAR[]), unnest($6::VARCHAR[]),
                    unnest($7::VARCHAR[]), unnest($8::INTEGER[]), unnest($9::TIMESTAMPTZ[])
                """,
                [
                    j.plan_id,
                    [int(x[0]) for x in r],
                    j.target,
                    [x[1] for x in r],
                    [x[2] for x in r],
                    [_null(x[3]) for x in r],
                    [_null(x[4]) for x in r],
                    [int(x[5]) for x in r],
                    [datetime.fromtimestamp(float(x[6]), UTC) for x in r],
                ],
            )


def apply(con: duckdb.DuckDBPyConnection, path: Path, texts: dict[int, str] | None = None) -> Read | None:
    """Fold one journal file, then remove it (a crash in between folds it again, harmlessly)."""
    j = read(path)
    if j is not None:
        fold(con, j, texts)
        if j.torn:
            log.warning("HL7 send journal of plan %s: a torn last line was ignored", j.plan_id)
    path.unlink()
    return j


def recover(con: duckdb.DuckDBPyConnection, warehouse: Path | str) -> int:
    """At the start of a run: fold whatever an interrupted send left, oldest first; then drop plan rows
    that were never built (a kill before their journal lines: nothing of theirs was sent). Journals folded."""
    found = sorted(folder(warehouse).glob("*.jnl"), key=lambda p: (p.stat().st_mtime_ns, p.name))
    for path in found:
        j = apply(con, path)
        if j is not None:
            log.info("HL7 back-load: the journal of interrupted plan %s was applied", j.plan_id)
    con.execute("DELETE FROM ops.backload_hl7_messages WHERE status = 'send' AND control_id IS NULL")
    return len(found)

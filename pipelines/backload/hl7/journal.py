"""The send journal: an append-only file beside the warehouse that records, with one write and one fsync per
group, each planned message's control id before it is sent and each ACK outcome; folded into
ops.backload_hl7_messages/results in one set-based statement each at the end of a send, or, after a kill, at
the start of the next run. It holds codes only (control ids, statuses, reason codes, field names, content
hashes), never message content or record ids: those are in the plan rows, committed before sending starts."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from pipelines.backload.appendfile import clean, open_append, write_all
from pipelines.common import arrow
from pipelines.common.errors import EhrliftError
from pipelines.common.warehouse import transaction

log = logging.getLogger(__name__)

MAGIC = "ehrlift-hl7-journal"
VERSION = "1"
# Fields per line kind: H(eader), P(lan: what building decided), R(esult: one ACK outcome).
FIELDS = {"H": 6, "P": 7, "R": 7}


def folder(warehouse: Path | str) -> Path:
    return Path(f"{warehouse}.hl7-journal")


def line(kind: str, *values: object) -> str:
    return "\t".join((kind, *(clean(v) for v in values))) + "\n"


class Journal:
    """One plan's journal, open for appending. write() returns once the lines are on disk (fsync); threads may
    write at once (plan lines on one, outcomes on another): each write's lines go in whole."""

    def __init__(self, path: Path, plan_id: str, target: str, run_id: str, planned_at: datetime) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.fd = open_append(path)
        # On disk with the first lines (their fsync covers it): a header alone records nothing, and a kill
        # before those lines leaves nothing sent (read() takes a file without a whole header as empty).
        header = line("H", MAGIC, VERSION, plan_id, target, run_id, planned_at.isoformat())
        write_all(self.fd, header.encode(), sync=False)

    def write(self, lines: list[str]) -> None:
        data = "".join(lines).encode()
        with self.lock:  # one writer at a time (no line split by another's), never after close
            if self.fd < 0:
                raise EhrliftError("the HL7 send journal was closed before all its lines were written")
            write_all(self.fd, data, sync=True)

    def close(self) -> None:
        with self.lock:
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


# What building decided per message, in the order of a P line's fields after its seq, then the sent bytes.
BUILT_COLUMNS = ("seq", "status", "reason", "detail", "control_id", "message_type", "sha", "message")


def built_table(columns: tuple[Any, ...] | list[Any]) -> pa.Table:
    """What building decided (BUILT_COLUMNS, one list each, None for empty; the sent bytes as a list or as an
    Arrow array already) as the Arrow table fold reads."""
    seqs, *codes, messages = columns
    if not isinstance(messages, pa.Array):
        messages = arrow.array(messages, pa.large_binary())
    return arrow.table(
        {
            "seq": arrow.array(seqs, pa.int32()),
            **{name: arrow.array(c, pa.string()) for name, c in zip(BUILT_COLUMNS[1:-1], codes, strict=True)},
            # The sent bytes as they went (UTF-8), decoded by DuckDB: no Python string per message.
            "message": messages,
        }
    )


def fold(
    con: duckdb.DuckDBPyConnection,
    j: Read,
    texts: dict[int, str | bytes] | None = None,
    built: pa.Table | None = None,
) -> None:
    """Apply a journal to the tables: plan rows get what building decided (and the sent text, when this
    process still has it); outcomes are inserted once (one already in, from a fold before, is not inserted
    again); rows never built are removed (nothing was sent for them).

    `built` (built_table) is what the sending process journaled, as it still holds it: used when it has
    as many rows as the journal has plan lines (else the lines are read, as after a kill, with the texts
    it holds)."""
    plans, r = j.plans, j.results
    if built is None or built.num_rows != len(plans):
        if built is not None and texts is None:
            texts = dict(
                zip(built.column("seq").to_pylist(), built.column("message").to_pylist(), strict=True)
            )
        texts = texts or {}
        seqs = [int(p[0]) for p in plans]
        columns = [[p[i] or None for p in plans] for i in range(1, len(BUILT_COLUMNS) - 1)]
        built = built_table((seqs, *columns, [_utf8(texts.get(s)) for s in seqs]))
    store(con, j.plan_id, j.target, built, outcomes_of(r))


# An ACK outcome, in the order of an R line's fields.
OUTCOME_COLUMNS = ("seq", "control_id", "state", "ack_code", "error_codes", "attempts", "recorded")
_OUTCOME_TYPES = (pa.int32(), pa.string(), pa.string(), pa.string(), pa.string(), pa.int32(), pa.float64())


def outcome_table(columns: tuple[list, ...] | list[list]) -> pa.Table:
    """ACK outcomes (OUTCOME_COLUMNS, one list each, None for empty; `recorded` in epoch seconds)."""
    return arrow.table(
        {n: arrow.array(c, t) for n, c, t in zip(OUTCOME_COLUMNS, columns, _OUTCOME_TYPES, strict=True)}
    )


def outcomes_of(results: list[list[str]]) -> pa.Table:
    """The outcome_table of a journal's R lines (Read.results)."""
    r = results
    return outcome_table(
        (
            [int(x[0]) for x in r],
            [x[1] for x in r],
            [x[2] for x in r],
            [x[3] or None for x in r],
            [x[4] or None for x in r],
            [int(x[5]) for x in r],
            [float(x[6]) for x in r],
        )
    )


def update_plan_rows(
    con: duckdb.DuckDBPyConnection, plan_id: str, built: pa.Table, keep_texts: bool = True
) -> None:
    """The plan rows get what building decided (built_table). `keep_texts`: a row's sent text, once in, is
    kept where `built` has none (a fold from the journal's lines alone); without it the statement reads no
    stored text, so that putting a plan in part by part costs each part alone."""
    message = "coalesce(decode(j.message), m.message)" if keep_texts else "decode(j.message)"
    con.execute(
        f"""
        UPDATE ops.backload_hl7_messages m SET status = j.status, reason = j.reason, detail = j.detail,
            control_id = j.control_id, message_type = j.message_type, content_sha256 = j.sha,
            message = {message}
        FROM built j WHERE m.plan_id = $1 AND m.seq = j.seq
        """,
        [plan_id],
    )


def store(
    con: duckdb.DuckDBPyConnection, plan_id: str, target: str, built: pa.Table | None, outcomes: pa.Table
) -> None:
    """One transaction: the plan rows get what building decided (None: it is all in already), rows never
    built go, outcomes go in once (a message's outcome already in was folded before)."""
    # Arrow tables the statements read by name (DuckDB's replacement scans): set-based, no per-row cost.
    with transaction(con):
        if built is not None:
            update_plan_rows(con, plan_id, built)
        con.execute(
            "DELETE FROM ops.backload_hl7_messages "
            "WHERE plan_id = ? AND status = 'send' AND control_id IS NULL",
            [plan_id],
        )
        # Outcomes once: a message sent once per plan has one, and one already in was folded (a crash before
        # the file went; or a part folded before, when a plan goes in parts).
        con.execute(
            """
            INSERT INTO ops.backload_hl7_results
            SELECT $1, o.seq, $2, o.control_id, o.state, o.ack_code, o.error_codes, o.attempts,
                to_timestamp(o.recorded)
            FROM outcomes o
            WHERE NOT EXISTS (SELECT 1 FROM ops.backload_hl7_results r WHERE r.plan_id = $1 AND r.seq = o.seq)
            """,
            [plan_id, target],
        )


def _utf8(text: str | bytes | None) -> bytes | None:
    return text.encode() if isinstance(text, str) else text


def apply(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    texts: dict[int, str | bytes] | None = None,
    built: pa.Table | None = None,
) -> Read | None:
    """Fold one journal file, then remove it (a crash in between folds it again, harmlessly)."""
    j = read(path)
    if j is not None:
        fold(con, j, texts, built)
        if j.torn:
            log.warning("HL7 send journal of plan %s: a torn last line was ignored", j.plan_id)
    path.unlink()
    return j


def apply_held(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    plan_id: str,
    target: str,
    built: pa.Table | None,
    outcomes: pa.Table,
) -> None:
    """Fold what the sending process journaled, as it still holds it (every write of the journal having
    succeeded), without reading the file back; then remove it. `built`: what building decided that is not
    in the plan rows yet (None: nothing)."""
    store(con, plan_id, target, built, outcomes)
    path.unlink()


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

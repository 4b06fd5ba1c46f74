"""Building and sending at once: a forked builder process streams checked messages in plan order while this
process journals them (each control id on disk before its message goes) and sends them; ACK outcomes are
journaled in groups on one writer thread, and what the journal lists goes into the warehouse at the end (a
large plan's built rows in parts while sending)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import signal
import threading
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from pipelines.backload.appendfile import clean
from pipelines.backload.hl7 import journal
from pipelines.backload.hl7.journal import OUTCOME_COLUMNS, Journal
from pipelines.backload.hl7.mllp import Item, Lanes, Outcome, SendPolicy
from pipelines.backload.hl7.plan import LOOKED_UP_ONCE, Planned, Prepared, build
from pipelines.common import arrow
from pipelines.common.errors import EhrliftError
from pipelines.common.progress import StageBar, stage_bar
from pipelines.common.warehouse import transaction

log = logging.getLogger(__name__)

# Messages per hand-over from the builder, and so per journal flush of plan lines: small at first so sending
# starts soon, then doubling to a bound, and halving again towards the end: the last chunk is sent after it
# is all built, and its sending is the part of the stage that overlaps no building. A flush costs mostly
# its fsync, on the thread that reads the chunks, while the lanes still send the previous one.
FIRST_CHUNK, MAX_CHUNK = 16, 256
LINGER = 0.1  # seconds an ACK outcome may wait for others to share its fsync
# Built rows that wait before they go into the plan rows while sending (a smaller plan's go in at the end:
# an update costs milliseconds whatever its size, and each one shares the cores with sending).
INFOLD_ROWS = 8192

PLAN_TYPES = (
    "VARCHAR", "INTEGER", "VARCHAR", "VARCHAR", "VARCHAR", "VARCHAR", "VARCHAR", "VARCHAR", "VARCHAR",
    "VARCHAR", "VARCHAR", "VARCHAR", "VARCHAR", "VARCHAR", "TIMESTAMPTZ", "VARCHAR",
)  # fmt: skip  # ops.backload_hl7_messages, in column order


ARROW = {"VARCHAR": pa.string(), "INTEGER": pa.int32(), "TIMESTAMPTZ": pa.timestamp("us", tz="UTC")}


def insert(con: duckdb.DuckDBPyConnection, table: str, types: tuple[str, ...], rows: list[tuple]) -> None:
    """Many rows in one statement, handed over as an Arrow table (Python lists as parameters cost about
    a tenth of a millisecond a row to convert)."""
    if not rows:
        return
    columns = [arrow.array(c, ARROW[t]) for c, t in zip(zip(*rows, strict=True), types, strict=True)]
    rows_in = pa.Table.from_arrays(columns, names=[f"c{i}" for i in range(len(types))])  # noqa: F841
    con.execute(f"INSERT INTO {table} SELECT * FROM rows_in")


def plan_row(plan_id: str, target: str, run_id: str, p: Planned, now: datetime) -> tuple:
    return (
        plan_id, p.seq, target, p.kind, p.message_type, p.resource_type, p.warehouse_id, p.patient_id,
        p.status, p.reason, p.detail, p.control_id, p.content_sha256, p.text, now, run_id,
    )  # fmt: skip


def plan_table(work: list[Planned]) -> pa.Table:
    """The plan's rows before building (what is to be sent, per record; refusals known at planning), as an
    Arrow table: made before the builders fork, so that storing it after touches no object the builders
    share (a touched page is copied, and the Planned objects lie one to a page among the resources)."""
    return arrow.table(
        {
            "seq": arrow.array([p.seq for p in work], pa.int32()),
            **{c: arrow.array([getattr(p, c) for p in work], pa.string()) for c in _SKELETON},
        }
    )


def store_plan(
    con: duckdb.DuckDBPyConnection, plan_id: str, target: str, run_id: str, now: datetime, planned: pa.Table
) -> None:
    """The plan's rows (plan_table): the journal's lines name them by seq. Only the columns that vary are
    handed over."""
    con.execute(
        "INSERT INTO ops.backload_hl7_messages SELECT $1, seq, $2, kind, NULL, resource_type, warehouse_id, "
        "patient_id, status, reason, detail, NULL, NULL, NULL, $3, $4 FROM planned",
        [plan_id, target, now, run_id],
    )


_SKELETON = ("kind", "resource_type", "warehouse_id", "patient_id", "status", "reason", "detail")


def plan_line(p: Planned) -> str:
    """What building decided, for the journal: codes and hashes only, never the message or record ids."""
    # Only the finding's text (field and segment names) could hold a separator; the rest are codes and hashes.
    detail = clean(p.detail) if p.detail else ""
    return (
        f"P\t{p.seq}\t{p.status}\t{p.reason or ''}\t{detail}\t{p.control_id or ''}\t{p.message_type or ''}"
        f"\t{p.content_sha256 or ''}\n"
    )


class Recorder:
    """The thread that writes ACK outcomes while messages go out: in group writes (whatever came in while the
    last fsync ran); a sender waits once `bound` outcomes are unrecorded, so a kill leaves at most about that
    many ACKs to be sent again. (Plan lines are written by the thread that reads the chunks: _receive.)"""

    def __init__(self, journal: Journal, bound: int) -> None:
        self.journal, self.bound = journal, max(1, bound)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="hl7-recorder")
        self.outcomes: list[Outcome] = []
        self.inflight = 0
        self.task: asyncio.Task | None = None
        self.enough = asyncio.Event()  # set when a commit should not wait for more outcomes
        self.closing = False
        self.tally: Counter[str] = Counter()
        # Every outcome written, a journal.outcome_table per write (packed: a large send keeps millions):
        # the fold at the end reads no line back.
        self.written: list[pa.Table] = []

    def _kick(self) -> asyncio.Task:
        if self.task is None or self.task.done():
            if self.task is not None:
                self.task.result()  # a failed write stops the run
            self.task = asyncio.create_task(self._drain())
        return self.task

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self.outcomes:
            if len(self.outcomes) < self.bound // 2 and not self.closing:
                # Let more ACKs join this commit (a commit costs milliseconds whatever its size), until half
                # the bound is reached or LINGER has passed.
                self.enough.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.enough.wait(), LINGER)
            outcomes = self.outcomes
            self.outcomes, self.inflight = [], len(outcomes)
            await loop.run_in_executor(self.pool, self._write, outcomes)
            self.inflight = 0

    def _write(self, outcomes: list[Outcome]) -> None:
        now = f"{datetime.now(UTC).timestamp():.6f}"
        stamp = float(now)  # as the line reads back
        # Every field is a code: a control id (hex), a state, an ACK code and ERR codes (letters and digits
        # only, see read_ack), a count: none can hold a tab or a line end, so no field needs cleaning.
        errors = [",".join(o.error_codes) for o in outcomes]
        self.journal.write(
            [
                f"R\t{o.item.seq}\t{o.item.control_id}\t{o.state}\t{o.ack_code or ''}\t{e}\t"
                f"{o.attempts}\t{now}\n"
                for o, e in zip(outcomes, errors, strict=True)
            ]
        )
        self.written.append(
            journal.outcome_table(  # as the lines read back
                (
                    [o.item.seq for o in outcomes],
                    [o.item.control_id for o in outcomes],
                    [o.state for o in outcomes],
                    [o.ack_code or None for o in outcomes],
                    [e or None for e in errors],
                    [o.attempts for o in outcomes],
                    [stamp] * len(outcomes),
                )
            )
        )

    def written_table(self) -> pa.Table:
        """Every outcome written, as one journal.outcome_table."""
        if not self.written:
            return journal.outcome_table(tuple([] for _ in OUTCOME_COLUMNS))
        return pa.concat_tables(self.written)

    def note(self, o: Outcome) -> Awaitable[None] | None:
        """Take one outcome; None, or (once `bound` outcomes are unrecorded) what the sender must await."""
        self.tally[o.state] += 1
        outcomes = self.outcomes
        outcomes.append(o)
        if len(outcomes) >= self.bound // 2:
            self.enough.set()
        if self.task is None or self.task.done():
            self._kick()
        if len(outcomes) + self.inflight >= self.bound:
            return self._below_bound()
        return None

    async def _below_bound(self) -> None:
        task = self._kick()
        while len(self.outcomes) + self.inflight >= self.bound:
            await task
            task = self._kick() if self.outcomes else task

    async def outcome(self, o: Outcome) -> None:
        waiting = self.note(o)
        if waiting is not None:
            await waiting

    async def close(self) -> None:
        try:
            self.closing = True
            self.enough.set()
            while self.outcomes or (self.task is not None and not self.task.done()):
                await self._kick()
            if self.task is not None:
                self.task.result()
        finally:
            self.pool.shutdown(wait=True)


class Infold:
    """Puts what building decided (the sent texts among them) into the plan rows while later messages go,
    once at least `least` rows wait, on a thread and a cursor of its own: a large plan's texts are then
    written (and their log synced) while sending, not all at the end. Tables go in after their journal lines
    are on disk. A failed update stops these: the end then puts everything in."""

    def __init__(self, con: duckdb.DuckDBPyConnection, plan_id: str, least: int | None = None) -> None:
        self.con, self.plan_id, self.least = con, plan_id, least or INFOLD_ROWS
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="hl7-infold")
        self.waiting: list[pa.Table] = []
        self.rows = 0
        self.sent: list[tuple[pa.Table, Future[None]]] = []

    def add(self, table: pa.Table) -> None:
        self.waiting.append(table)
        self.rows += table.num_rows
        if self.rows >= self.least:
            self.flush()

    def _update(self, part: pa.Table) -> None:
        with self.con.cursor() as cursor:
            journal.update_plan_rows(cursor, self.plan_id, part, keep_texts=False)

    def flush(self) -> None:
        """The rows waiting go in now, whatever their number (once building has ended, the last of them)."""
        if self.waiting:
            part = pa.concat_tables(self.waiting)
            self.waiting, self.rows = [], 0
            self.sent.append((part, self.pool.submit(self._update, part)))

    def rest(self) -> pa.Table | None:
        """Once every update has ended: what the end must still put in (everything, when one failed)."""
        self.pool.shutdown(wait=True)
        failed = [f for _t, f in self.sent if f.exception() is not None]
        if failed:  # the class only: a database error may quote a value
            log.warning(
                "HL7 back-load: the sent texts go in at the end (%s)", type(failed[0].exception()).__name__
            )
            left = [t for t, _f in self.sent] + self.waiting
        else:
            left = self.waiting
        return pa.concat_tables(left) if left else None


def chunk_columns(chunk: list[Planned]) -> tuple[list, ...]:
    """What building decided for a chunk, one list per journal.BUILT_COLUMNS (as the journal's P lines
    hold it: the finding's text cleaned the same way), the sent bytes last."""
    return (
        [p.seq for p in chunk],
        [p.status for p in chunk],
        [p.reason for p in chunk],
        [clean(p.detail) if p.detail else None for p in chunk],
        [p.control_id for p in chunk],
        [p.message_type for p in chunk],
        [p.content_sha256 for p in chunk],
        [p.data if p.data is not None or p.text is None else p.text.encode() for p in chunk],
    )


def chunks(n: int) -> list[tuple[int, int]]:
    """The hand-over schedule: (start, end) of each chunk of a plan of n messages. Sizes go 16, 32, ... up to
    MAX_CHUNK and, mirrored, back down to 16 at the end (taken from both ends in turn)."""
    head: list[int] = []
    tail: list[int] = []
    left, size = n, FIRST_CHUNK
    while left > 0:
        for side in (head, tail):
            take = min(size, left)
            if take:
                side.append(take)
                left -= take
        size = min(size * 2, MAX_CHUNK)
    out, start = [], 0
    for take in head + tail[::-1]:
        out.append((start, start + take))
        start += take
    return out


def default_builders() -> int:
    """Builder processes: one per core the sender leaves free (at least one, at most four)."""
    return max(1, min(4, (os.cpu_count() or 1) - 1))


def _builder(
    prep: Prepared,
    check: Callable[[list[Planned]], None] | None,
    out: Connection,
    forked: bool = True,
    part: int = 0,
    parts: int = 1,
) -> None:
    """A builder: its share of the chunks (every parts-th from part), each in plan order; stops when the
    reader goes away."""
    if forked:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the sender handles Ctrl-C and closes the pipe
        # What was read before the fork lives as long as this process, and what it builds is freed by
        # reference counts: the collector would only walk them again and again (a sixth of the building
        # time). The process ends with the plan, so a rare cycle lives until then at most.
        gc.freeze()
        gc.disable()
        # Nothing this process builds is needed once handed over: what it does not keep, the allocator
        # reuses, where fresh memory would cost a page fault a page (a plan's texts run to hundreds of MB).
        if prep.store is not None:
            prep.store.once = LOOKED_UP_ONCE
    try:
        for start, end in chunks(len(prep.work))[part::parts]:
            chunk = [build(prep, *w) for w in prep.work[start:end]]
            if check is not None:
                check(chunk)
            # What the sender needs and nothing more, ready to use: the chunk's journal lines as one text
            # (written as they are), its messages' patients (their lanes), what building decided as columns
            # (journal.BUILT_COLUMNS but the bytes) and the bytes that go as one blob with each message's
            # end in it (pack): the sender sends slices of it and folds it as it is, with no object per
            # message. The sender reads none of the plan's objects it shares with this process.
            *codes, payloads = chunk_columns(chunk)
            lines = "".join([plan_line(p) for p in chunk])
            out.send(("chunk", lines, [p.patient_id or "" for p in chunk], codes, *pack(payloads)))
            if forked:
                for p in chunk:
                    p.text = p.data = None
        out.send(None)
    except (BrokenPipeError, ConnectionResetError, EOFError):
        pass  # the sender stopped (killed or interrupted): nothing more to do
    except Exception as exc:  # the class only: an exception's text may quote a record's values
        with contextlib.suppress(OSError):
            out.send(("error", type(exc).__name__))
    finally:
        with contextlib.suppress(OSError):
            out.close()


async def _pipeline(
    n: int,
    sources: list[Connection],
    rec: Recorder,
    address: tuple[str, int],
    policy: SendPolicy,
    acked: dict[str, str],
    decided: list[pa.Table],
    infold: Infold,
    stored: Future[None],
    label: str = "hl7 send",
) -> Counter[str]:
    """Chunks in, messages out: per message a status count and, when it goes, one Item on a lane; what
    building decided (the bytes that go included) is kept in `decided`, a journal.built_table per chunk,
    for the fold. `stored` is done once the plan's rows are committed: no chunk's lines are written, and so
    none of its messages goes, before."""
    loop = asyncio.get_running_loop()
    reader = ThreadPoolExecutor(1, thread_name_prefix="hl7-plan-reader")
    bar = stage_bar(label, "messages")  # acknowledged of those known to go, on a terminal
    lanes = Lanes(address[0], address[1], policy, _counted(rec.note, bar) if bar.watched else rec.note)
    put = lanes.put
    statuses: Counter[str] = Counter()
    schedule = chunks(n)

    def receive(j: int) -> asyncio.Future[tuple[Any, pa.Table | None]]:
        # Chunk j comes from builder j % len(sources): read in turn, they come in plan order.
        start, end = schedule[j]
        source = sources[j % len(sources)]
        return loop.run_in_executor(reader, _receive, source, end - start, stored, rec.journal)

    try:
        coming = receive(0) if schedule else None
        for j in range(len(schedule)):
            assert coming is not None
            try:
                built, table = await coming
            except EOFError:
                built, table = None, None
            if isinstance(built, tuple) and built[0] == "error":
                raise EhrliftError(f"building the HL7 messages failed ({built[1]})")
            if table is None:
                raise EhrliftError("the HL7 message builder stopped before the plan was complete")
            # The next chunk is read (and its lines written) while this one's messages go on their lanes.
            coming = receive(j + 1) if j + 1 < len(schedule) else None
            patients, columns, payloads = built
            decided.append(table)  # as journaled: into the plan rows while later chunks go, or at the end
            infold.add(table)
            seqs, states, cids = columns[0], columns[1], columns[4]
            statuses.update(states)
            going = 0
            for seq, cid, patient, payload in zip(seqs, cids, patients, payloads, strict=True):
                if payload is not None and cid not in acked:
                    going += 1
                    put(Item(seq, cid, patient, payload))
            statuses["sent"] += going
            bar.total(statuses["sent"])
        # Built in full: what waits goes into the plan rows while the last messages are sent.
        infold.flush()
        await lanes.close()
    finally:
        for t in lanes.tasks:
            t.cancel()
        reader.shutdown(wait=False, cancel_futures=True)
        await rec.close()
    return statuses


def _receive(
    source: Connection, size: int, stored: Future[None], jnl: Journal
) -> tuple[Any, pa.Table | None]:
    """One hand-over from a builder and, for a whole chunk of `size` messages, its lines journaled (on disk
    before any of its messages goes; the first chunk's once the plan's rows are committed), its columns as
    the table the fold reads (the sent bytes not copied) and each message's bytes as a slice of the chunk's
    blob: (patients, columns, payloads). On the reader's thread while earlier messages go, so the lanes
    never wait for an fsync. Anything else comes back as it came, with no table."""
    built = source.recv()
    if not (isinstance(built, tuple) and built[0] == "chunk" and len(built) == 6 and len(built[2]) == size):
        return built, None
    _, lines, patients, codes, blob, ends = built
    messages, payloads = unpack(blob, ends)
    table = journal.built_table((*codes, messages))
    stored.result()  # raises what storing raised
    jnl.write([lines])
    return (patients, codes, payloads), table


def pack(payloads: list[bytes | None]) -> tuple[bytes, list[int | None]]:
    """A chunk's sent bytes as one blob, and each message's end in it (None: nothing goes for it)."""
    ends: list[int | None] = []
    end = 0
    for data in payloads:
        if data is None:
            ends.append(None)
        else:
            end += len(data)
            ends.append(end)
    return b"".join([d for d in payloads if d is not None]), ends


def unpack(blob: bytes, ends: list[int | None]) -> tuple[pa.Array, list[memoryview | None]]:
    """pack's blob as the fold's column (an Arrow array over the blob itself) and as each message's slice."""
    view = memoryview(blob)
    offsets, payloads, start = [0], [], 0
    for end in ends:
        if end is None:
            payloads.append(None)
        else:
            payloads.append(view[start:end])
            start = end
        offsets.append(start)
    nulls = ends.count(None)
    validity = arrow.bits(e is not None for e in ends) if nulls else None
    column = pa.Array.from_buffers(
        pa.large_binary(), len(ends), [validity, pa.py_buffer(array("q", offsets)), pa.py_buffer(blob)], nulls
    )
    return column, payloads


def _counted(record: Any, bar: StageBar) -> Any:
    """The recorder's outcome callback, advancing the bar by each message's final outcome."""

    def outcome(o: Outcome) -> Awaitable[None] | None:
        bar.advance()
        return record(o)

    return outcome


def _store_plan(
    cursor: duckdb.DuckDBPyConnection,
    plan_id: str,
    target: str,
    run_id: str,
    now: datetime,
    planned: pa.Table,
) -> None:
    """store_plan in a transaction of its own, on a cursor of its own (on the thread that stores it)."""
    with cursor, transaction(cursor):
        store_plan(cursor, plan_id, target, run_id, now, planned)


def can_fork() -> bool:
    """A forked builder where the platform forks and this process may have children (a daemonic worker
    process may not)."""
    return "fork" in multiprocessing.get_all_start_methods() and not multiprocessing.current_process().daemon


def build_and_send(
    con: duckdb.DuckDBPyConnection,
    prep: Prepared,
    plan_id: str,
    run_id: str,
    address: tuple[str, int],
    policy: SendPolicy,
    batch: int,
    journal_dir: Path,
    check: Callable[[list[Planned]], None] | None = None,
    builders: int | None = None,
    part: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Build (in forked processes, which read nothing from the warehouse; `builders` of them, by default
    one per free core) while sending; counts out.

    The plan's rows (what is to be sent, before building) are committed first, in one insert; while sending,
    the journal is written (and a large plan's built rows go in, in parts: Infold); the rest is folded into
    the tables in one transaction at the end (or, after a kill, by the next run)."""
    now = datetime.now(UTC)
    # A part's journal of its own (part k of n): each is folded when its part ends, or by the next run.
    path = journal_dir / (f"{plan_id}.{part[0]}.jnl" if part else f"{plan_id}.jnl")
    planned = plan_table([w[0] for w in prep.work])
    # The plan's resources, read before, live until the send ends: keep the collector from walking them at
    # every few hundred allocations (it cost the sender more than its sending did). Left frozen: the caller
    # unfreezes once it has let them go (runner.backload_hl7).
    gc.freeze()
    forked = can_fork()
    parts = max(1, builders or default_builders()) if forked else 1
    sources: list[Connection] = []
    children: list[multiprocessing.process.BaseProcess | threading.Thread] = []
    setup: ThreadPoolExecutor | None = None
    stored: Future[None] | None = None
    jnl: Journal | None = None
    decided: list[pa.Table] = []  # what is journaled, a table per chunk
    infold: Infold | None = None
    rec: Recorder | None = None
    whole = False
    try:
        # Forked builders start first, so building overlaps storing the plan's rows (on a thread, while the
        # journal opens and the pipeline starts: no chunk's lines are written, and so nothing is sent, before
        # those rows are committed). A builder thread would share the rows being stored: it starts after.
        for k in range(parts if forked else 0):
            source, sink = multiprocessing.Pipe(duplex=False)
            child = multiprocessing.get_context("fork").Process(
                target=_builder, args=(prep, check, sink, True, k, parts), daemon=True,
                name=f"hl7-builder-{k}",
            )  # fmt: skip
            sources.append(source)
            children.append(child)
            child.start()
            sink.close()
        setup = ThreadPoolExecutor(1, thread_name_prefix="hl7-store-plan")
        stored = setup.submit(_store_plan, con.cursor(), plan_id, prep.target, run_id, now, planned)
        if not forked:  # the same stream from a thread: correct, without the overlap
            stored.result()
            source, sink = multiprocessing.Pipe(duplex=False)
            thread = threading.Thread(target=_builder, args=(prep, check, sink, False), daemon=True)
            sources.append(source)
            children.append(thread)
            thread.start()
        # A journal with its header alone (the plan's rows not yet in, or never) records nothing sent.
        jnl = Journal(path, plan_id, prep.target, run_id, now)
        rec = Recorder(jnl, batch)
        infold = Infold(con, plan_id)
        statuses = asyncio.run(
            _pipeline(
                len(prep.work),
                sources,
                rec,
                address,
                policy,
                prep.acknowledged,
                decided,
                infold,
                stored,
                f"hl7 send {part[0]}/{part[1]}" if part else "hl7 send",
            )
        )
        whole = True  # every journal write succeeded: what this process holds is what the file says
    finally:
        for source in sources:
            source.close()
        if setup is not None:
            setup.shutdown(wait=True)
        if jnl is not None:
            jnl.close()
            # What was journaled and sent, as this process still holds it (a fold after a kill reads the
            # journal's lines, and has codes only).
            rest = infold.rest() if infold is not None else None  # once the updates under way have ended
            if whole and decided and rec is not None:
                journal.apply_held(con, path, plan_id, prep.target, rest, rec.written_table())
            else:
                journal.apply(con, path, None, pa.concat_tables(decided) if decided else None)
        # The builders exit while the journal is folded. The caller unfreezes the collector once it has let
        # the plan's objects go: unfrozen while still held, they could cost a full collection's walk.
        for child in children:
            child.join(10)
            if child.is_alive() and not isinstance(child, threading.Thread):
                child.terminate()
                child.join(5)
    assert rec is not None
    return {
        **{k: statuses.get(k, 0) for k in ("send", "not_sendable", "unchanged", "sent")},
        "done": rec.tally["done"],
        "failed": rec.tally["failed"],
    }

"""Sending planned messages over MLLP with the hl7 package's asyncio client: ACKs read and judged, timeouts
answered by reconnecting and sending the same message (same control id) again, a bounded number of times."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from hl7.mllp import open_hl7_connection

from pipelines.backload.hl7.segments import maps

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SendPolicy:
    connections: int = 1
    rate: float | None = None  # messages per second over all connections; None: as fast as ACKs come
    timeout: float = 30.0  # seconds to wait for an ACK
    max_attempts: int = 3
    connect_timeout: float = 10.0
    # Messages per connection before a fresh one (None: keep it). Some receivers handle one message per
    # connection only (node-hl7-server 2.5.0 keeps a connection's earlier messages in its buffer).
    reconnect_after: int | None = None


@dataclass(slots=True)
class Item:
    seq: int
    control_id: str
    patient_id: str
    payload: bytes | memoryview  # a slice of the chunk the builder handed over


@dataclass(slots=True)
class Outcome:
    item: Item
    state: str  # done, failed
    ack_code: str | None
    error_codes: list[str] = field(default_factory=list)
    attempts: int = 0


def read_ack(block: bytes) -> tuple[str | None, str | None, list[str]]:
    """(MSA-1, MSA-2, ERR codes) from an ACK; codes only, texts are never kept."""
    # The usual ACK, one MSA and no ERR: its MSA line alone is read, without decoding the whole block.
    if b"ERR" not in block and block.count(b"MSA|") == 1:
        i = block.find(b"MSA|")
        if i == 0 or block[i - 1] in b"\r\n":
            end = len(block)
            for stop in (block.find(b"\r", i), block.find(b"\n", i)):
                if 0 <= stop < end:
                    end = stop
            parts = block[i:end].decode("utf-8", errors="replace").split("|")
            if len(parts) > 2:
                return parts[1].strip() or None, parts[2].strip() or None, []
    return _read_ack(block)


def _read_ack(block: bytes) -> tuple[str | None, str | None, list[str]]:
    code = ref = None
    errors: list[str] = []
    for line in block.decode("utf-8", errors="replace").replace("\n", "\r").split("\r"):
        parts = line.split("|")
        if parts[0] == "MSA" and len(parts) > 2:
            code, ref = parts[1].strip() or None, parts[2].strip() or None
        elif parts[0] == "ERR":
            # 2.5: ERR-3 (CWE, table 0357); 2.3.1: ERR-1 (ELD) component 4.
            if len(parts) > 3 and parts[3]:
                errors.append(parts[3].split("^")[0])
            elif len(parts) > 1 and parts[1]:
                comps = parts[1].split("^")
                if len(comps) > 3 and comps[3]:
                    errors.append(comps[3].split("&")[0])
    return code, ref, [e[:10] for e in errors if e.isalnum()]


def retryable(code: str, errors: list[str]) -> bool:
    rule = maps()["ack_retry"].get(code)
    if rule is None:
        return False
    if rule["retry"]:
        return not any(e in rule.get("except_errors", ()) for e in errors)
    return any(e in rule.get("retry_errors", ()) for e in errors)


class _Pace:
    """At most rate messages per second across the workers that share it."""

    def __init__(self, rate: float | None) -> None:
        self.gap = 1.0 / rate if rate else 0.0
        self.next = 0.0

    async def wait(self) -> None:
        if not self.gap:
            return
        now = time.monotonic()
        slot = max(self.next, now)
        self.next = slot + self.gap
        if slot > now:
            await asyncio.sleep(slot - now)


Record = Callable[[Outcome], Awaitable[None] | None]


class Lanes:
    """Connections fed as messages become ready: each patient's messages go in order on one connection
    (registration before results). record returns None, or an awaitable the sender waits on (backpressure).

    A lane takes its messages from a plain deque and sleeps on one future only when it has run dry, so a
    message costs no queue machinery; the ACK wait is one timer per connection, re-armed per message."""

    def __init__(self, host: str, port: int, policy: SendPolicy, record: Record) -> None:
        self.host, self.port, self.policy, self.record = host, port, policy, record
        self.pace = _Pace(policy.rate)
        n = max(1, policy.connections)
        self.queues: list[deque[Item]] = [deque() for _ in range(n)]
        self.idle: list[asyncio.Future[None] | None] = [None] * n
        self.closed = False
        self.lane_of: dict[str, int] = {}
        # The ACK timeout: while a lane waits, since[k] is when its message went; a watchdog ticking at an
        # eighth of the timeout aborts a connection that waited longer (readblock then fails, and the same
        # message goes again on a new one). A timer per message would cost more than the rest of its sending.
        self.since: list[float | None] = [None] * n
        self.writers: list[Any] = [None] * n
        self.expired = [False] * n
        self.loop = asyncio.get_running_loop()
        self.tick = max(0.01, policy.timeout / 8)
        self.watchdog = self.loop.call_later(self.tick, self._watch)
        self.tasks = [asyncio.create_task(self._lane(k)) for k in range(n)]

    def _watch(self) -> None:
        now = self.loop.time()
        for k, since in enumerate(self.since):
            if since is not None and now - since >= self.policy.timeout:
                self.since[k], self.expired[k] = None, True
                with contextlib.suppress(Exception):
                    self.writers[k].transport.abort()
        self.watchdog = self.loop.call_later(self.tick, self._watch)

    def put(self, item: Item) -> None:
        lane = self.lane_of.get(item.patient_id)
        if lane is None:
            lane = self.lane_of[item.patient_id] = len(self.lane_of) % len(self.queues)
        self.queues[lane].append(item)
        self._wake(lane)

    def _wake(self, lane: int) -> None:
        idle = self.idle[lane]
        if idle is not None and not idle.done():
            idle.set_result(None)

    async def close(self) -> None:
        """No more messages: wait for every lane to finish what it was given."""
        self.closed = True
        for k in range(len(self.queues)):
            self._wake(k)
        try:
            await asyncio.gather(*self.tasks)
        finally:
            self.watchdog.cancel()
            for t in self.tasks:
                t.cancel()

    async def _lane(self, k: int) -> None:
        queue, record = self.queues[k], self.record
        loop = asyncio.get_running_loop()
        conn: tuple | None = None
        used = 0  # messages answered on this connection
        try:
            while True:
                if not queue:
                    if self.closed:
                        return
                    self.idle[k] = idle = loop.create_future()
                    await idle
                    self.idle[k] = None
                    continue
                outcome, conn, used = await self._one(k, queue.popleft(), conn, used)
                done = record(outcome)
                if done is not None:
                    await done
        finally:
            _close(conn)

    async def _one(
        self, k: int, it: Item, conn: tuple | None, used: int
    ) -> tuple[Outcome, tuple | None, int]:
        policy, since, clock = self.policy, self.since, self.loop.time
        attempts = 0
        while True:
            attempts += 1
            if self.pace.gap:  # no coroutine per message when no rate is set
                await self.pace.wait()
            try:
                if conn is None:
                    conn = await asyncio.wait_for(
                        open_hl7_connection(self.host, self.port), policy.connect_timeout
                    )
                    used = 0
                reader, writer = conn
                self.writers[k] = writer
                since[k] = clock()
                writer.writeblock(it.payload)
                await writer.drain()
                block = await reader.readblock()
                since[k] = None
                if self.expired[k]:  # aborted by the watchdog as the ACK came in: the ACK counts
                    self.expired[k], conn = False, _close(conn)
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
                # No ACK (or a broken connection): reconnect and send the same bytes, same control id.
                since[k] = None
                why = "TimeoutError" if self.expired[k] else type(exc).__name__
                self.expired[k] = False
                log.warning("no ACK for message #%d (%s); reconnecting", it.seq, why)
                conn = _close(conn)
                if attempts >= policy.max_attempts:
                    return Outcome(it, "failed", None, ["timeout"], attempts), conn, used
                continue
            code, ref, errors = read_ack(block)
            if ref != it.control_id or code is None:
                conn = _close(conn)  # an ACK for another message: this stream can no longer be trusted
                if attempts >= policy.max_attempts:
                    return Outcome(it, "failed", code, ["ack-mismatch"], attempts), conn, used
                continue
            used += 1
            if policy.reconnect_after and used >= policy.reconnect_after:
                conn, used = _close(conn), 0
            if code in ("AA", "CA"):
                return Outcome(it, "done", code, errors, attempts), conn, used
            if retryable(code, errors) and attempts < policy.max_attempts:
                continue
            return Outcome(it, "failed", code, errors, attempts), conn, used


async def send_all(host: str, port: int, items: list[Item], policy: SendPolicy, record: Record) -> None:
    """Send a list of ready messages (each patient's in order on one connection)."""
    lanes = Lanes(host, port, policy, record)
    for it in items:
        lanes.put(it)
    await lanes.close()


def _close(conn: tuple | None) -> None:
    if conn is not None:
        with contextlib.suppress(Exception):
            conn[1].close()
    return None

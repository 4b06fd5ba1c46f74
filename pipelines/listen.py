"""Live MLLP intake: each HL7 v2 message is written durably into a feed folder before it is acknowledged."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import inspect
import logging
import os
import signal
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from hl7.mllp import HL7StreamReader, HL7StreamWriter, start_hl7_server

from pipelines.common.config import DEFAULT_DATA_DIR
from pipelines.common.errors import ConfigError
from pipelines.convert.hl7v2.ack import build_ack
from pipelines.convert.hl7v2.tokenizer import Hl7ParseError, Message, parse_message
from pipelines.intake.limits import limit

log = logging.getLogger(__name__)

DEFAULT_MAX_FRAME = 16 * 1024 * 1024
DEFAULT_FEED_DIR = DEFAULT_DATA_DIR / "feeds"
START_BLOCK = b"\x0b"
FRAME_END = b"\x1c\x0d"
TMP_SUFFIX = ".tmp"
LOCK_NAME = ".listen.lock"
# How long a graceful stop waits for in-flight messages (a peer that never reads its ACK would hold it).
SHUTDOWN_GRACE_SECONDS = 30.0
# After rejecting an oversized frame, how long the rest of it is read and dropped before closing; closing
# with unread bytes would make the kernel reset the connection, and the peer could lose the AR.
CLOSE_LINGER_SECONDS = 5.0
HEAD_BYTES = 64 * 1024
READ_BYTES = 64 * 1024  # one read from a connection; the stream's own buffer stays near this
WRITE_THREADS = 16


@dataclass
class ListenStats:
    """Counts for the shutdown line; no control ids, no content."""

    accepted: int = 0
    duplicate: int = 0
    rejected: int = 0
    errors: int = 0
    connections: int = 0
    bytes_received: int = 0
    timed_out: int = 0  # connections closed by the idle or read timeout
    peak_buffered: int = 0  # most bytes of unfinished frames held at once, over all connections

    def line(self) -> str:
        return (
            f"accepted={self.accepted} duplicate={self.duplicate} rejected={self.rejected} "
            f"errors={self.errors} connections={self.connections} bytes={self.bytes_received} "
            f"timed_out={self.timed_out}"
        )


@dataclass(frozen=True)
class Problem:
    """Why a message is not accepted: ACK code, HL7 table 0357 error code, a fixed text with no content."""

    ack_code: str
    error_code: str
    text: str
    location: tuple[str, int, int] | None = None  # (segment, sequence, field)


NOT_MLLP = Problem("AR", "100", "frame has no MLLP start block")
NOT_HL7 = Problem("AR", "100", "message does not start with an MSH segment")
NO_TYPE = Problem("AR", "101", "required field MSH-9 (message type) is missing", ("MSH", 1, 9))
NO_CONTROL_ID = Problem("AR", "101", "required field MSH-10 (message control id) is missing", ("MSH", 1, 10))
NOT_STORED = Problem("AE", "207", "message could not be stored; send it again later")
BUSY = Problem("AE", "207", "listener is holding too many unfinished messages; send it again later")
# By tokenizer reason; the tokenizer's own texts can name the message type, which stays out of logs.
PARSE_PROBLEMS = {
    "hl7_missing_msh": NOT_HL7,
    "hl7_malformed_msh": NO_TYPE,
    "hl7_bad_delimiters": Problem("AR", "102", "MSH-1/MSH-2 do not hold usable delimiters"),
    "hl7_invalid_encoding": Problem("AR", "102", "message is not readable in its declared character set"),
    "hl7_binary_junk": Problem("AR", "102", "message contains NUL or control bytes"),
    "hl7_truncated": Problem("AR", "100", "message is cut off"),
    "hl7_unsupported_charset": Problem("AR", "102", "MSH-18 names a character set ehrlift does not read"),
    "hl7_message_too_large": Problem("AR", "207", "message passes a documented size bound"),
}


def too_large(max_bytes: int) -> Problem:
    return Problem("AR", "207", f"message exceeds the size limit of {max_bytes} bytes")


def check(raw: bytes) -> tuple[Message | None, Problem | None]:
    """The acceptance check: a message the tokenizer reads, with a message type and a control id."""
    try:
        message = parse_message(raw)
    except Hl7ParseError as exc:
        return None, PARSE_PROBLEMS.get(exc.reason, NOT_HL7)
    if not message.message_code.strip():
        return message, NO_TYPE
    if not (message.control_id or "").strip():
        return message, NO_CONTROL_ID
    return message, None


def answer(message: Message | None, raw: bytes, problem: Problem | None = None) -> bytes:
    """The ACK for raw: AA without a problem, else the problem's code, text and ERR.

    Whatever the message declares (an MSH-18 no codec can write, a version or delimiters that trip the
    builder), the sender gets an answer: failing that, one built from the header line alone in ASCII.
    """
    code, text, kwargs = "AA", None, {}
    if problem is not None:
        code, text = problem.ack_code, problem.text
        kwargs = {"error_code": problem.error_code, "location": problem.location}
    try:
        return build_ack(message, raw, code, text, **kwargs)
    except Exception as exc:  # a bug in answering must not leave the sender retrying forever
        log.error("ACK for a %d-byte message built from its header only (%s)", len(raw), type(exc).__name__)
        header = raw.replace(b"\n", b"\r").split(b"\r", 1)[0]  # a lone MSH never parses: salvaged
        return build_ack(None, header, code, text, **kwargs)


def _whole_lines(head: bytes) -> bytes:
    """The complete lines of a frame's head: a cut-off MSH-10 must not be echoed as the control id."""
    start = head.find(START_BLOCK)
    if start < 0:
        return b""
    # The head may hold the frame's end block and the next frame: only this message's bytes are parsed.
    body = head[start + 1 :].split(FRAME_END[:1], 1)[0]
    return body[: max(body.rfind(b"\r"), body.rfind(b"\n")) + 1]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def feed_path(feed_dir: Path, day: date, sha: str) -> Path:
    return feed_dir / day.strftime("%Y%m%d") / f"{sha}.hl7"


def land_message(feed_dir: Path, raw: bytes, sha: str, today: date) -> bool:
    """Write raw durably under feed_dir; True when written now, False when the same bytes were already there.

    Blocking (fsync), so it runs in a worker thread. A crash at any point leaves either no file under the
    final name or a whole, fsynced one; a temp file left behind is hidden and swept at the next start.
    """
    # A client resending after a lost ACK just past midnight (UTC) still finds yesterday's copy.
    for day in (today, today - timedelta(days=1)):
        existing = feed_path(feed_dir, day, sha)
        if existing.is_file():
            # It may be there from a process killed before its fsyncs: make it durable before saying AA.
            _fsync_file(existing)
            _fsync_dir(existing.parent)
            _fsync_dir(feed_dir)
            return False
    target = feed_path(feed_dir, today, sha)
    target.parent.mkdir(exist_ok=True)
    # Every time, not only when created: another thread may have created it and not yet made it durable.
    _fsync_dir(feed_dir)
    fd, tmp = tempfile.mkstemp(prefix=f".{sha}.", suffix=TMP_SUFFIX, dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fchmod(fh.fileno(), 0o440)  # landed messages are never changed
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)
    return True


@dataclass
class _Connection:
    peer: str
    busy: bool = False  # between a complete frame and its ACK written: a graceful stop lets it finish
    frames: int = 0
    bytes: int = 0


@dataclass
class _Intake:
    feed_dir: Path
    max_frame_bytes: int
    stats: ListenStats
    stop: asyncio.Event
    executor: ThreadPoolExecutor
    connections: dict[asyncio.Task, _Connection] = field(default_factory=dict)
    inflight: dict[str, asyncio.Future] = field(default_factory=dict)
    max_buffered: int = 256 << 20
    idle_timeout: float = 600.0
    read_timeout: float = 60.0
    buffered: int = 0  # bytes of unfinished frames held now, over all connections

    async def handle(self, reader: HL7StreamReader, writer: HL7StreamWriter) -> None:
        # start_hl7_server creates this task and keeps no reference to it: hold one, so it is neither
        # collected mid-message nor forgotten by a graceful stop.
        task = asyncio.current_task()
        assert task is not None
        conn = _Connection(_peer(writer))
        self.connections[task] = conn
        self.stats.connections += 1
        log.debug("%s: connected", conn.peer)
        try:
            await self._serve(reader, writer, conn)
        except (ConnectionError, TimeoutError) as exc:
            log.info("%s: connection lost (%s)", conn.peer, type(exc).__name__)
        except Exception as exc:  # a bug must not take the listener down; content never reaches the log
            log.error("%s: connection failed (%s)", conn.peer, type(exc).__name__)
        finally:
            self.connections.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            log.debug("%s: closed after %d frames, %d bytes", conn.peer, conn.frames, conn.bytes)

    async def _serve(self, reader: HL7StreamReader, writer: HL7StreamWriter, conn: _Connection) -> None:
        # Frames are cut here from reads of at most READ_BYTES, not by hl7.mllp's readblock() (it raises
        # on any byte before the start block, throwing away the next message when a sender puts a newline
        # between frames) nor readuntil() (its buffer grows to the frame limit per connection, unseen).
        # Each connection's unfinished bytes count against one budget for the whole listener.
        buf = bytearray()
        scanned = 0  # bytes of buf already searched for the end block: each byte is searched once
        try:
            while not self.stop.is_set():
                conn.busy = False
                end = buf.find(FRAME_END, max(0, scanned - len(FRAME_END) + 1))
                scanned = len(buf) if end < 0 else 0
                if end >= 0:
                    frame = bytes(buf[: end + len(FRAME_END)])
                    del buf[: end + len(FRAME_END)]
                    self._hold(-len(frame))
                    conn.busy = True
                    if len(frame) > self.max_frame_bytes + len(START_BLOCK) + len(FRAME_END):
                        await self._reject_oversized(reader, writer, conn, frame[:HEAD_BYTES])
                        return
                    conn.frames += 1
                    conn.bytes += len(frame)
                    self.stats.bytes_received += len(frame)
                    ack = await self._receive(frame, conn)
                    writer.writeblock(ack)
                    await writer.drain()
                    continue
                if len(buf) > self.max_frame_bytes + len(START_BLOCK) + len(FRAME_END):
                    conn.busy = True
                    head = bytes(buf[:HEAD_BYTES])
                    self._hold(-len(buf))
                    buf = bytearray()
                    await self._reject_oversized(reader, writer, conn, head)
                    return
                inside = bool(buf.strip())
                try:
                    chunk = await asyncio.wait_for(
                        reader.read(READ_BYTES), self.read_timeout if inside else self.idle_timeout
                    )
                except TimeoutError:
                    self.stats.timed_out += 1
                    log.info(
                        "%s: %s for %.0f s; closed",
                        conn.peer,
                        "no bytes inside a frame" if inside else "idle",
                        self.read_timeout if inside else self.idle_timeout,
                    )
                    return
                if not chunk:
                    if inside:
                        log.warning(
                            "%s: closed inside a frame; %d bytes dropped, unanswered", conn.peer, len(buf)
                        )
                    return
                if self.buffered + len(chunk) > self.max_buffered:
                    conn.busy = True
                    await self._refuse_busy(writer, conn, bytes(buf[:HEAD_BYTES]) + chunk[:HEAD_BYTES])
                    return
                buf += chunk
                self._hold(len(chunk))
        finally:
            self._hold(-len(buf))

    def _hold(self, delta: int) -> None:
        self.buffered += delta
        self.stats.peak_buffered = max(self.stats.peak_buffered, self.buffered)

    async def _refuse_busy(self, writer: HL7StreamWriter, conn: _Connection, head: bytes) -> None:
        """Over the listener's memory budget: AE (send again later) for the frame, then close."""
        self.stats.rejected += 1
        log.warning("%s: unfinished frames over %d bytes in all; answered AE", conn.peer, self.max_buffered)
        writer.writeblock(answer(None, _whole_lines(head), BUSY))
        await writer.drain()

    async def _receive(self, frame: bytes, conn: _Connection) -> bytes:
        start = frame.find(START_BLOCK)
        if start < 0:
            return self._reject(None, b"", NOT_MLLP, conn, len(frame))
        if frame[:start].strip():
            log.warning("%s: %d bytes before the start block ignored", conn.peer, start)
        raw = frame[start + 1 : -len(FRAME_END)]  # never over max_frame_bytes: _serve saw to it
        if len(raw) > HEAD_BYTES:
            # Tokenizing a large message would hold up every other connection on the loop.
            loop = asyncio.get_running_loop()
            message, problem = await loop.run_in_executor(self.executor, check, raw)
        else:
            message, problem = check(raw)
        if problem:
            return self._reject(message, raw, problem, conn, len(raw))
        try:
            written = await self._store(raw)
        except OSError as exc:
            self.stats.errors += 1
            log.error(
                "%s: %d bytes not stored (%s); answered AE",
                conn.peer,
                len(raw),
                exc.strerror or type(exc).__name__,
            )
            return answer(message, raw, NOT_STORED)
        except Exception as exc:
            self.stats.errors += 1
            log.error("%s: %d bytes not stored (%s); answered AE", conn.peer, len(raw), type(exc).__name__)
            return answer(message, raw, NOT_STORED)
        if written:
            self.stats.accepted += 1
        else:
            self.stats.duplicate += 1
        log.debug("%s: %d bytes %s", conn.peer, len(raw), "accepted" if written else "duplicate")
        return answer(message, raw)

    def _reject(
        self, message: Message | None, raw: bytes, problem: Problem, conn: _Connection, size: int
    ) -> bytes:
        self.stats.rejected += 1
        log.warning("%s: %d bytes rejected (%s: %s)", conn.peer, size, problem.ack_code, problem.text)
        return answer(message, raw, problem)

    async def _store(self, raw: bytes) -> bool:
        loop = asyncio.get_running_loop()
        if len(raw) > HEAD_BYTES:
            sha = await loop.run_in_executor(self.executor, _sha256, raw)
        else:
            sha = _sha256(raw)
        pending = self.inflight.get(sha)
        if pending is not None:
            # The same bytes on another connection right now: one write, both answered once it is durable.
            await asyncio.shield(pending)
            return False
        today = datetime.now(UTC).date()
        future = loop.run_in_executor(self.executor, land_message, self.feed_dir, raw, sha, today)
        self.inflight[sha] = future
        future.add_done_callback(lambda _f: self.inflight.pop(sha, None))
        # Shielded: a stop that cancels this task must not cancel the write other tasks are waiting on.
        return await asyncio.shield(future)

    async def _reject_oversized(
        self, reader: HL7StreamReader, writer: HL7StreamWriter, conn: _Connection, head: bytes
    ) -> None:
        # The frame's head was kept for its control id; the rest of the frame is read and dropped.
        conn.bytes += len(head)
        self.stats.bytes_received += len(head)
        problem = too_large(self.max_frame_bytes)
        writer.writeblock(self._reject(None, _whole_lines(head), problem, conn, len(head)))
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CLOSE_LINGER_SECONDS
        while (left := deadline - loop.time()) > 0:
            try:
                chunk = await asyncio.wait_for(reader.read(READ_BYTES), left)
            except TimeoutError:
                break
            if not chunk:
                break
            conn.bytes += len(chunk)
            self.stats.bytes_received += len(chunk)

    async def close_connections(self, grace: float) -> None:
        """Stop reading: idle connections close now, each one mid-message finishes it (ACK or nothing)."""
        await asyncio.sleep(0)  # let connections accepted just before the stop see it
        for task, conn in list(self.connections.items()):
            if not conn.busy:
                task.cancel()  # a frame still arriving is not acknowledged, so the sender resends it
        pending = set(self.connections)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("%d connections did not finish within %.0f s and were cut", len(pending), grace)
            await asyncio.wait(pending, timeout=1.0)


def _sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _peer(writer: HL7StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


def _open_feed_dir(feed_dir: Path) -> int:
    """Create feed_dir, take its lock (one listener per folder) and sweep temp files a killed one left."""
    try:
        feed_dir.mkdir(parents=True, exist_ok=True)
        _fsync_dir(feed_dir.parent)
        lock_fd = os.open(feed_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise ConfigError(
            f"feed folder {feed_dir} cannot be used: {exc.strerror}", hint="check the path and permissions"
        ) from None
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(lock_fd)
        raise ConfigError(
            f"feed folder {feed_dir} is in use by another listener", hint="stop it or choose another folder"
        ) from None
    # Only now, under the lock: no other listener can be writing these.
    swept = 0
    for tmp in feed_dir.glob(f"*/.*{TMP_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            swept += 1
    if swept:
        log.info("removed %d unfinished temp files from an earlier stop", swept)
    return lock_fd


async def serve(
    feed_dir: Path,
    host: str = "127.0.0.1",
    port: int = 2575,
    *,
    ready: Callable | None = None,
    stop: asyncio.Event | None = None,
    max_frame_bytes: int = DEFAULT_MAX_FRAME,
    stats: ListenStats | None = None,
    max_buffered_bytes: int | None = None,
    idle_timeout: float | None = None,
    read_timeout: float | None = None,
) -> None:
    """Accept MLLP connections until stop is set, then finish in-flight messages and return.

    ready, if given, is called with the bound port once connections are accepted (port 0 picks a free
    one). stats, if given, is filled in as messages arrive. The memory budget and the idle and read
    timeouts default to the listen_* bounds of schemas/input_limits.json.
    """
    feed_dir = Path(feed_dir)
    stop = stop or asyncio.Event()
    stats = stats if stats is not None else ListenStats()
    lock_fd = _open_feed_dir(feed_dir)
    executor = ThreadPoolExecutor(max_workers=WRITE_THREADS, thread_name_prefix="ehrlift-listen")
    intake = _Intake(
        feed_dir,
        max_frame_bytes,
        stats,
        stop,
        executor,
        max_buffered=max_buffered_bytes or limit("listen_max_buffered_bytes"),
        idle_timeout=idle_timeout or limit("listen_idle_timeout_seconds"),
        read_timeout=read_timeout or limit("listen_read_timeout_seconds"),
    )
    try:
        try:
            # The stream pauses reading past twice its limit: each connection's own buffer stays small.
            server = await start_hl7_server(intake.handle, host, port, limit=READ_BYTES)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port}: {exc.strerror}", hint="choose another port or host"
            ) from None
        try:
            bound = server.sockets[0].getsockname()[1]
            log.info("listening on %s:%d, writing to %s", host, bound, feed_dir)
            if ready is not None:
                result = ready(bound)
                if inspect.isawaitable(result):
                    await result
            await stop.wait()
            log.info("stopping: no new connections; finishing messages in flight")
        finally:
            server.close()
            await intake.close_connections(SHUTDOWN_GRACE_SECONDS)
            await server.wait_closed()
    finally:
        # Writes already started finish (whole file or none) before the lock is let go.
        await asyncio.get_running_loop().run_in_executor(None, executor.shutdown, True)
        os.close(lock_fd)
        log.info("listener stopped: %s", stats.line())


def listen(
    feed_dir: Path | str = DEFAULT_FEED_DIR,
    host: str = "127.0.0.1",
    port: int = 2575,
    *,
    ready: Callable | None = None,
    max_frame_bytes: int = DEFAULT_MAX_FRAME,
) -> int:
    """Run serve() until SIGINT or SIGTERM, then stop gracefully and return 0.

    A second signal during the stop is not caught: SIGINT raises KeyboardInterrupt, SIGTERM ends the
    process. Either way nothing unwritten was acknowledged, and a sender resends what it lacks.
    """

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def on_signal() -> None:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        try:
            await serve(Path(feed_dir), host, port, ready=ready, stop=stop, max_frame_bytes=max_frame_bytes)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    asyncio.run(main())
    return 0

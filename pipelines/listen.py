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
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from hl7.mllp import HL7StreamReader, HL7StreamWriter, start_hl7_server

from pipelines.common.config import DEFAULT_DATA_DIR
from pipelines.common.errors import ConfigError

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
WRITE_THREADS = 16
SEGMENT_ENDS = (b"\r", b"\n")
DEFAULT_ENCODING_CHARS = "^~\\&"

# MSH-18 values (HL7 table 0211) and the Python codecs that read them; anything else falls back to cp1252.
_CHARSETS = {
    "ASCII": "ascii",
    "ISO IR6": "ascii",
    "8859/1": "latin-1",
    "ISO IR100": "latin-1",
    "8859/2": "iso8859-2",
    "ISO IR101": "iso8859-2",
    "8859/3": "iso8859-3",
    "ISO IR109": "iso8859-3",
    "8859/4": "iso8859-4",
    "ISO IR110": "iso8859-4",
    "8859/5": "iso8859-5",
    "ISO IR144": "iso8859-5",
    "8859/6": "iso8859-6",
    "ISO IR127": "iso8859-6",
    "8859/7": "iso8859-7",
    "ISO IR126": "iso8859-7",
    "8859/8": "iso8859-8",
    "ISO IR138": "iso8859-8",
    "8859/9": "iso8859-9",
    "ISO IR148": "iso8859-9",
    "8859/15": "iso8859-15",
    "UNICODE UTF-8": "utf-8",
    "ISO IR192": "utf-8",
    "GB 18030-2000": "gb18030",
    "BIG-5": "big5",
    "KS X 1001": "euc_kr",
}
FALLBACK_CODEC = "cp1252"


@dataclass
class ListenStats:
    """Counts for the shutdown line; no control ids, no content."""

    accepted: int = 0
    duplicate: int = 0
    rejected: int = 0
    errors: int = 0
    connections: int = 0
    bytes_received: int = 0

    def line(self) -> str:
        return (
            f"accepted={self.accepted} duplicate={self.duplicate} rejected={self.rejected} "
            f"errors={self.errors} connections={self.connections} bytes={self.bytes_received}"
        )


@dataclass(frozen=True)
class Header:
    """The MSH segment, decoded only to check the message and to address its ACK."""

    field_sep: str
    encoding_chars: str
    fields: tuple[str, ...]  # fields[0] is "MSH"; fields[n - 1] is MSH-n for n >= 2
    codec: str
    charset: str  # MSH-18 as sent, when this module knows its codec

    def get(self, n: int) -> str:
        if n == 1:
            return self.field_sep
        return self.fields[n - 1] if n - 1 < len(self.fields) else ""

    @property
    def component_sep(self) -> str:
        return self.encoding_chars[:1] or "^"

    @property
    def message_type(self) -> str:
        return self.get(9).split(self.component_sep)[0].strip()

    @property
    def trigger(self) -> str:
        parts = self.get(9).split(self.component_sep)
        return parts[1].strip() if len(parts) > 1 else ""

    @property
    def control_id(self) -> str:
        return self.get(10).strip()


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


def too_large(max_bytes: int) -> Problem:
    return Problem("AR", "207", f"message exceeds the size limit of {max_bytes} bytes")


def read_header(raw: bytes, *, complete: bool = True) -> Header | None:
    """The MSH segment of raw, or None when raw does not start with one.

    With complete=False raw is only the head of a message, so the segment must end inside it (a cut-off
    MSH-10 would be echoed wrongly).
    """
    body = raw.lstrip(b" \t\r\n")
    if not body.startswith(b"MSH") or len(body) < 5:
        return None
    sep = body[3:4]
    if sep.isalnum() or sep.isspace() or sep in SEGMENT_ENDS:
        return None
    ends = [i for i in (body.find(e) for e in SEGMENT_ENDS) if i >= 0]
    if not ends and not complete:
        return None
    segment = body[: min(ends)] if ends else body
    parts = segment.split(sep)
    charset = parts[17] if len(parts) > 17 else b""
    repetition = parts[1][1:2] or b"~"
    charset_name = charset.split(repetition)[0].strip().decode("ascii", "replace").upper()
    codec = _CHARSETS.get(charset_name)
    text: str | None = None
    if codec is not None:
        try:
            text = segment.decode(codec)
        except UnicodeDecodeError:
            codec = None
    if codec is None or text is None:
        # surrogateescape keeps bytes cp1252 leaves undefined, so they go back out unchanged in the ACK.
        codec, charset_name = FALLBACK_CODEC, ""
        text = segment.decode(codec, "surrogateescape")
    field_sep = text[3]
    fields = tuple(text.split(field_sep))
    encoding_chars = fields[1] if len(fields) > 1 and fields[1] else DEFAULT_ENCODING_CHARS
    return Header(field_sep, encoding_chars, fields, codec, charset_name if charset.strip() else "")


def check(raw: bytes) -> tuple[Header | None, Problem | None]:
    """The minimal acceptance check: an MSH segment with a message type and a control id."""
    header = read_header(raw)
    if header is None:
        return None, NOT_HL7
    if not header.message_type:
        return header, NO_TYPE
    if not header.control_id:
        return header, NO_CONTROL_ID
    return header, None


def build_ack(header: Header | None, problem: Problem | None = None, *, now: datetime | None = None) -> bytes:
    """An original-mode ACK: sender and receiver swapped, ACK^<trigger>^ACK, a new control id, MSA (+ ERR)."""
    fs = header.field_sep if header else "|"
    enc = header.encoding_chars if header else DEFAULT_ENCODING_CHARS
    comp = enc[:1] or "^"
    sub = enc[3:4] or "&"

    def original(n: int) -> str:
        return header.get(n) if header else ""

    version = original(12) or "2.5"
    stamp = (now or datetime.now().astimezone()).strftime("%Y%m%d%H%M%S%z")
    msh = [
        "MSH",
        enc,
        original(5),
        original(6),
        original(3),
        original(4),
        stamp,
        "",
        comp.join(["ACK", header.trigger if header else "", "ACK"]),
        uuid.uuid4().hex[:20].upper(),
        original(11) or "P",
        version,
    ]
    if header and header.charset:
        msh += [""] * 5 + [header.get(18)]
    code = problem.ack_code if problem else "AA"
    msa = ["MSA", code, header.control_id if header else ""]
    if problem:
        msa.append(problem.text)
    segments = [fs.join(msh), fs.join(msa)]
    if problem:
        where = comp.join([str(part) for part in problem.location]) if problem.location else ""
        if _version_at_least(version.split(comp)[0], (2, 5)):
            error = comp.join([problem.error_code, problem.text, "HL70357"])
            segments.append(fs.join(["ERR", "", where, error, "E"]))
        else:
            # Before v2.5, ERR-1 carried location and code together (ELD).
            coded = sub.join([problem.error_code, problem.text, "HL70357"])
            eld = comp.join([*(where.split(comp) if where else ["", "", ""]), coded])
            segments.append(fs.join(["ERR", eld]))
    codec = header.codec if header else "ascii"
    return ("\r".join(segments) + "\r").encode(codec, "surrogateescape")


def _version_at_least(version: str, wanted: tuple[int, int]) -> bool:
    try:
        parts = tuple(int(p) for p in version.strip().split(".")[:2])
    except ValueError:
        return True
    return parts >= wanted


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
        # hl7.mllp's readblock() is not used: it raises on any byte before the start block, which throws
        # away the whole next message when a sender puts a newline between frames; and after an oversized
        # frame it has already cleared the buffer, losing the head we read the control id from. The
        # reader's own readuntil() gives the raw bytes and leaves the buffer alone on overrun.
        while not self.stop.is_set():
            conn.busy = False
            try:
                frame = await reader.readuntil(FRAME_END)
            except asyncio.IncompleteReadError as exc:
                if exc.partial.strip():
                    log.warning(
                        "%s: closed inside a frame; %d bytes dropped, not acknowledged",
                        conn.peer,
                        len(exc.partial),
                    )
                return
            except asyncio.LimitOverrunError:
                conn.busy = True
                await self._reject_oversized(reader, writer, conn)
                return
            conn.busy = True
            conn.frames += 1
            conn.bytes += len(frame)
            self.stats.bytes_received += len(frame)
            ack = await self._receive(frame, conn)
            writer.writeblock(ack)
            await writer.drain()

    async def _receive(self, frame: bytes, conn: _Connection) -> bytes:
        start = frame.find(START_BLOCK)
        if start < 0:
            return self._reject(None, NOT_MLLP, conn, len(frame))
        if frame[:start].strip():
            log.warning("%s: %d bytes before the start block ignored", conn.peer, start)
        raw = frame[start + 1 : -len(FRAME_END)]  # never over max_frame_bytes: the reader's limit saw to it
        header, problem = check(raw)
        if problem:
            return self._reject(header, problem, conn, len(raw))
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
            return build_ack(header, NOT_STORED)
        except Exception as exc:
            self.stats.errors += 1
            log.error("%s: %d bytes not stored (%s); answered AE", conn.peer, len(raw), type(exc).__name__)
            return build_ack(header, NOT_STORED)
        if written:
            self.stats.accepted += 1
        else:
            self.stats.duplicate += 1
        log.debug("%s: %d bytes %s", conn.peer, len(raw), "accepted" if written else "duplicate")
        return build_ack(header)

    def _reject(self, header: Header | None, problem: Problem, conn: _Connection, size: int) -> bytes:
        self.stats.rejected += 1
        log.warning("%s: %d bytes rejected (%s: %s)", conn.peer, size, problem.ack_code, problem.text)
        return build_ack(header, problem)

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
        self, reader: HL7StreamReader, writer: HL7StreamWriter, conn: _Connection
    ) -> None:
        # readuntil() left the frame's head in the buffer: read it for the control id, then drop the rest.
        head = await reader.read(HEAD_BYTES)
        start = head.find(START_BLOCK)
        header = read_header(head[start + 1 :], complete=False) if start >= 0 else None
        conn.bytes += len(head)
        self.stats.bytes_received += len(head)
        writer.writeblock(self._reject(header, too_large(self.max_frame_bytes), conn, len(head)))
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CLOSE_LINGER_SECONDS
        while (left := deadline - loop.time()) > 0:
            try:
                chunk = await asyncio.wait_for(reader.read(HEAD_BYTES), left)
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
) -> None:
    """Accept MLLP connections until stop is set, then finish in-flight messages and return.

    ready, if given, is called with the bound port once connections are accepted (port 0 picks a free
    one). stats, if given, is filled in as messages arrive.
    """
    feed_dir = Path(feed_dir)
    stop = stop or asyncio.Event()
    stats = stats if stats is not None else ListenStats()
    lock_fd = _open_feed_dir(feed_dir)
    executor = ThreadPoolExecutor(max_workers=WRITE_THREADS, thread_name_prefix="ehrlift-listen")
    intake = _Intake(feed_dir, max_frame_bytes, stats, stop, executor)
    try:
        try:
            # The limit bounds each connection's buffer; +1 lets a frame of exactly max_frame_bytes through.
            server = await start_hl7_server(intake.handle, host, port, limit=max_frame_bytes + 1)
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

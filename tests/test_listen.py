"""`ehrlift listen`: durable before AA, once per byte string, clear AR and AE, nothing acknowledged lost."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import shutil
import signal
import stat
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import hl7
import pytest
from hl7.mllp import open_hl7_connection

from pipelines import listen as listen_mod
from pipelines.common.errors import ConfigError
from pipelines.listen import ListenStats, serve

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
STEP = 10.0  # seconds any single wait may take before the test fails rather than hangs


async def write_unended_frame(writer: asyncio.StreamWriter, megabytes: int) -> None:
    """A frame's start and one message, then `megabytes` MiB of one OBX never ended; a listener that
    answers and closes mid-way ends the writing."""
    writer.write(b"\x0b" + message(7))
    chunk = b"OBX|1|ED|PDF||" + b"A" * (1 << 20) + b"\r"
    try:
        for _ in range(megabytes):
            writer.write(chunk)
            await asyncio.wait_for(writer.drain(), STEP)
    except ConnectionError:
        pass  # the listener answered, drained a while and closed


def message(i: int, *, control: str | None = None, trigger: str = "A01", charset: str = "") -> bytes:
    """An invented ADT message; each i gives distinct bytes."""
    control = f"CTL{i:06d}" if control is None else control
    msh = f"MSH|^~\\&|SENDAPP|SENDFAC|RECVAPP|RECVFAC|20240102030405||ADT^{trigger}^ADT_A01|{control}|P|2.5.1"
    if charset:
        msh += f"||||||{charset}"
    segments = [
        msh,
        f"EVN|{trigger}|20240102030405",
        f"PID|1||MRN{i:06d}^^^HOSP^MR||Testperson^Alex{i}||19800101|U",
        "PV1|1|O",
    ]
    return ("\r".join(segments) + "\r").encode("ascii")


def run(body: Awaitable, timeout: float = 40.0):
    return asyncio.run(asyncio.wait_for(body, timeout))


@contextlib.asynccontextmanager
async def listener(feed: Path, **kwargs) -> AsyncIterator[tuple[int, ListenStats]]:
    """serve() on a free loopback port in this loop; stopped gracefully on exit."""
    stop = asyncio.Event()
    stats = ListenStats()
    port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(feed, HOST, 0, ready=port.set_result, stop=stop, stats=stats, **kwargs))
    await asyncio.wait({port, task}, timeout=STEP, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    try:
        yield port.result(), stats
    finally:
        stop.set()
        await asyncio.wait_for(task, STEP * 4)


async def exchange(port: int, *frames: bytes) -> list[hl7.Message]:
    """Send each frame on one connection and read its ACK before the next."""
    reader, writer = await open_hl7_connection(HOST, port)
    acks = []
    try:
        for frame in frames:
            writer.writeblock(frame)
            await writer.drain()
            acks.append(await asyncio.wait_for(reader.readmessage(), STEP))
    finally:
        writer.close()
    return acks


def landed(feed: Path) -> dict[str, bytes]:
    """Every landed message file under feed, by path relative to it."""
    return {str(p.relative_to(feed)): p.read_bytes() for p in sorted(feed.glob("*/*.hl7"))}


def temp_files(feed: Path) -> list[Path]:
    return sorted(feed.glob(f"*/.*{listen_mod.TMP_SUFFIX}"))


def msa(ack: hl7.Message) -> tuple[str, str]:
    return str(ack.segment("MSA")[1]), str(ack.segment("MSA")[2])


def test_one_message_is_written_byte_for_byte_then_acknowledged(tmp_path: Path) -> None:
    feed = tmp_path / "feeds"
    # latin-1 bytes declared in MSH-18: stored unchanged, never re-encoded.
    sent = message(1, charset="8859/1").replace(b"Alex1", "Zoë".encode("latin-1"))

    async def body() -> None:
        async with listener(feed) as (port, stats):
            (ack,) = await exchange(port, sent)
        assert msa(ack) == ("AA", "CTL000001")
        msh = ack.segment("MSH")
        assert [str(msh[n]) for n in (3, 4, 5, 6)] == ["RECVAPP", "RECVFAC", "SENDAPP", "SENDFAC"]
        assert str(msh[9]) == "ACK^A01^ACK"
        assert str(msh[10]) and str(msh[10]) != "CTL000001"
        assert str(msh[12]) == "2.5.1"
        assert str(msh[18]) == "8859/1"
        assert (stats.accepted, stats.duplicate, stats.rejected, stats.errors) == (1, 0, 0, 0)

    run(body())
    files = landed(feed)
    assert len(files) == 1
    ((name, data),) = files.items()
    assert data == sent
    day, base = name.split("/")
    assert len(day) == 8 and day.isdigit()
    assert base == hashlib.sha256(sent).hexdigest() + ".hl7"
    assert temp_files(feed) == []


def test_fifty_messages_over_five_concurrent_connections(tmp_path: Path) -> None:
    feed = tmp_path / "feeds"
    batches = [[message(c * 10 + i) for i in range(10)] for c in range(5)]

    async def body() -> list[list[hl7.Message]]:
        async with listener(feed) as (port, stats):
            acks = await asyncio.gather(*(exchange(port, *batch) for batch in batches))
        assert stats.accepted == 50 and stats.connections == 5
        return acks

    acks = run(body())
    assert [msa(a)[0] for conn in acks for a in conn] == ["AA"] * 50
    assert sorted(landed(feed).values()) == sorted(m for batch in batches for m in batch)


def test_same_bytes_twice_land_once_and_are_acknowledged_twice(tmp_path: Path) -> None:
    feed = tmp_path / "feeds"
    sent = message(7)

    async def body() -> None:
        async with listener(feed) as (port, stats):
            first, again = await exchange(port, sent, sent)
            # the same bytes on two connections at once: still one file, both acknowledged
            both = await asyncio.gather(exchange(port, message(8)), exchange(port, message(8)))
        assert [msa(a)[0] for a in (first, again, *both[0], *both[1])] == ["AA"] * 4
        assert (stats.accepted, stats.duplicate) == (2, 2)

    run(body())
    assert sorted(landed(feed).values()) == sorted([sent, message(8)])


@pytest.mark.parametrize(
    ("frame", "control", "location"),
    [
        pytest.param(b"this is not hl7 at all", "", "", id="garbage"),
        pytest.param(b"PID|1||X\r", "", "", id="no-msh"),
        pytest.param(message(3, control=""), "", "MSH^1^10", id="missing-msh-10"),
        pytest.param(message(4).replace(b"ADT^A01^ADT_A01", b""), "CTL000004", "MSH^1^9", id="missing-msh-9"),
    ],
)
def test_what_cannot_be_accepted_is_rejected_with_a_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, frame: bytes, control: str, location: str
) -> None:
    feed = tmp_path / "feeds"
    caplog.set_level(logging.DEBUG, logger="pipelines.listen")

    async def body() -> list[hl7.Message]:
        async with listener(feed) as (port, stats):
            acks = await exchange(port, frame, message(5))
        assert (stats.rejected, stats.accepted) == (1, 1)
        return acks

    rejected, after = run(body())
    assert msa(rejected) == ("AR", control)
    assert str(rejected.segment("MSA")[3])  # a reason in MSA-3
    err = rejected.segment("ERR")
    assert str(err[3]).split("^")[0] in ("100", "101")
    assert str(err[2]) == location
    assert msa(after)[0] == "AA"  # the connection goes on
    assert list(landed(feed).values()) == [message(5)]
    # peer and sizes only: no control id, no name, no content
    for phi in (b"CTL00000", b"MRN", b"Testperson", b"not hl7", b"PID|"):
        assert phi.decode() not in caplog.text


def test_ack_before_v25_carries_its_error_in_err_1() -> None:
    raw = message(1, control="").replace(b"|2.5.1", b"|2.3")
    parsed, problem = listen_mod.check(raw)
    assert problem == listen_mod.NO_CONTROL_ID
    ack = hl7.parse(listen_mod.answer(parsed, raw, problem).decode())
    assert str(ack.segment("MSH")[12]) == "2.3"
    assert str(ack.segment("ERR")[1]).startswith("MSH^1^10^101&")


def _make_feed_a_file(feed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Root ignores permission bits, so a folder that became a file stands in for "cannot write here".
    shutil.rmtree(feed)
    feed.write_bytes(b"")


def _make_disk_full(feed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):  # the message file's fsync fails, as on a full disk
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(listen_mod.os, "fsync", fsync)


def _make_read_only(feed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes through permission bits")
    feed.chmod(0o500)


@pytest.mark.parametrize("break_feed", [_make_feed_a_file, _make_disk_full, _make_read_only])
def test_a_write_failure_answers_ae_and_lands_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, break_feed: Callable
) -> None:
    feed = tmp_path / "feeds"

    async def body() -> hl7.Message:
        async with listener(feed) as (port, stats):
            break_feed(feed, monkeypatch)
            try:
                (ack,) = await exchange(port, message(9))
            finally:
                monkeypatch.undo()
                if feed.is_dir():
                    feed.chmod(0o700)
        assert (stats.errors, stats.accepted) == (1, 0)
        return ack

    ack = run(body())
    assert msa(ack) == ("AE", "CTL000009")
    assert str(ack.segment("ERR")[3]).split("^")[0] == "207"
    if feed.is_dir():
        assert landed(feed) == {}
        assert temp_files(feed) == []


def test_an_oversized_frame_is_rejected_and_its_connection_closed(tmp_path: Path) -> None:
    feed = tmp_path / "feeds"
    limit = 4096
    padding = b"NTE|1||" + b"x" * limit + b"\r"
    big = message(11) + padding
    exact = message(12)
    exact += b"NTE|1||" + b"y" * (limit - len(exact) - 8) + b"\r"
    assert len(exact) == limit

    async def body() -> None:
        async with listener(feed, max_frame_bytes=limit) as (port, stats):
            reader, writer = await open_hl7_connection(HOST, port)
            writer.writeblock(big)
            await writer.drain()
            ack = await asyncio.wait_for(reader.readmessage(), STEP)
            assert msa(ack) == ("AR", "CTL000011")
            assert "size limit" in str(ack.segment("MSA")[3])
            with pytest.raises(asyncio.IncompleteReadError):
                await asyncio.wait_for(reader.readblock(), STEP)  # closed by the listener
            writer.close()
            (at_limit,) = await exchange(port, exact)  # the listener itself carries on
            assert msa(at_limit)[0] == "AA"
            assert (stats.rejected, stats.accepted) == (1, 1)

    run(body())
    assert list(landed(feed).values()) == [exact]


def test_bytes_between_frames_do_not_cost_the_next_message(tmp_path: Path) -> None:
    feed = tmp_path / "feeds"

    async def body() -> None:
        async with listener(feed) as (port, _):
            reader, writer = await open_hl7_connection(HOST, port)
            # some senders put a newline after each frame; hl7.mllp's readblock() would drop the next one
            writer.write(
                b"\r\n" + b"\x0b" + message(21) + b"\x1c\r" + b"\n" + b"\x0b" + message(22) + b"\x1c\r"
            )
            await writer.drain()
            writer.write(b"no start block\x1c\r")
            await writer.drain()
            acks = [await asyncio.wait_for(reader.readmessage(), STEP) for _ in range(3)]
            writer.close()
        assert [msa(a) for a in acks] == [("AA", "CTL000021"), ("AA", "CTL000022"), ("AR", "")]
        assert str(acks[2].segment("ERR")[3]).split("^")[0] == "100"

    run(body())
    assert sorted(landed(feed).values()) == sorted([message(21), message(22)])


def test_one_listener_per_feed_folder_and_stale_temp_files_are_swept(tmp_path: Path) -> None:
    feed = tmp_path / "feeds"
    stale = feed / "20240101" / f".{'0' * 64}.abc{listen_mod.TMP_SUFFIX}"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"MSH|^~\\&|cut off")

    async def body() -> None:
        async with listener(feed):
            assert not stale.exists()
            with pytest.raises(ConfigError, match="in use"):
                await serve(feed, HOST, 0)

    run(body())


# --- a listener in its own process: SIGKILL and SIGTERM mid-stream ---------------------------------------

CHILD = (
    "import logging, sys\n"
    "from pipelines.listen import listen\n"
    "logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)\n"
    "listen(sys.argv[1], '127.0.0.1', 0, ready=lambda port: print(port, flush=True))\n"
)


async def start_child(feed: Path) -> tuple[asyncio.subprocess.Process, int]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        str(feed),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    if not line:
        raise AssertionError((await proc.stderr.read()).decode(errors="replace"))
    return proc, int(line)


async def stream(
    port: int, messages: list[bytes], acked: dict[str, bytes], on_ack: Callable[[], None]
) -> None:
    """Send all messages without waiting (a window of the whole list), recording each AA as it comes."""
    by_control = {str(hl7.parse(m.decode()).segment("MSH")[10]): m for m in messages}
    reader, writer = await open_hl7_connection(HOST, port)

    async def send() -> None:
        for m in messages:
            writer.writeblock(m)
            await writer.drain()

    sender = asyncio.create_task(send())
    try:
        for _ in messages:
            ack = await asyncio.wait_for(reader.readmessage(), STEP)
            code, control = msa(ack)
            assert code == "AA"
            acked[control] = by_control[control]
            on_ack()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass  # the listener went away mid-stream
    finally:
        sender.cancel()
        with contextlib.suppress(BaseException):
            await sender
        writer.close()


def shard(messages: list[bytes], n: int) -> list[list[bytes]]:
    return [messages[i::n] for i in range(n)]


def test_kill_and_restart_loses_no_acknowledged_message(tmp_path: Path) -> None:
    feed = tmp_path / "feeds"
    sent = [message(i) for i in range(200)]
    acked: dict[str, bytes] = {}

    async def body() -> None:
        proc, port = await start_child(feed)

        def kill_after_some() -> None:
            if len(acked) == 60:
                proc.send_signal(signal.SIGKILL)

        await asyncio.gather(*(stream(port, part, acked, kill_after_some) for part in shard(sent, 4)))
        assert await asyncio.wait_for(proc.wait(), STEP) == -signal.SIGKILL
        first = dict(acked)
        assert 60 <= len(first) < len(sent)
        # Whatever got AA before the kill is already on disk, byte for byte.
        assert set(first.values()) <= set(landed(feed).values())

        proc, port = await start_child(feed)
        missing = [m for m in sent if m not in set(first.values())]
        await asyncio.gather(*(stream(port, part, acked, lambda: None) for part in shard(missing, 2)))
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), STEP * 3) == 0

    run(body())
    files = landed(feed)
    assert len(acked) == len(sent)
    assert sorted(files.values()) == sorted(sent)  # all there, none twice
    for name, data in files.items():
        assert name.endswith(hashlib.sha256(data).hexdigest() + ".hl7")
    assert temp_files(feed) == []  # the restart swept what the kill left


def test_sigterm_mid_stream_exits_zero_and_leaves_no_temp_files(tmp_path: Path) -> None:
    feed = tmp_path / "feeds"
    sent = [message(i) for i in range(1000, 1120)]
    acked: dict[str, bytes] = {}

    async def body() -> bytes:
        proc, port = await start_child(feed)

        def stop_after_some() -> None:
            if len(acked) == 30:
                proc.send_signal(signal.SIGTERM)

        await asyncio.gather(*(stream(port, part, acked, stop_after_some) for part in shard(sent, 3)))
        assert await asyncio.wait_for(proc.wait(), STEP * 3) == 0
        return await proc.stderr.read()

    log_text = run(body())
    files = landed(feed)
    assert set(acked.values()) <= set(files.values())
    assert set(files.values()) <= set(sent)
    assert temp_files(feed) == []
    assert b"listener stopped: accepted=" in log_text
    for phi in (b"CTL00", b"MRN", b"Testperson", b"ADT^"):
        assert phi not in log_text

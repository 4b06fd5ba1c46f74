"""`ehrlift listen` under hostile senders: an answer for every MSH-18, a memory budget, idle/read timeouts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hl7.mllp import open_hl7_connection

from pipelines import listen as listen_mod
from tests.test_listen import HOST, STEP, exchange, landed, listener, message, msa, run, write_unended_frame


@pytest.mark.parametrize(
    ("charset", "code"),
    [
        ("hex", "AR"),
        ("rot13", "AR"),
        ("base64", "AR"),
        ("idna", "AR"),
        ("cp500", "AR"),
        ("UTF-7", "AR"),
        ("KLINGON-8", "AA"),  # an unknown name: the documented fallback (UTF-8, then windows-1252)
        ("utf_8_sig", "AA"),
    ],
)
def test_every_msh18_gets_an_answer(tmp_path: Path, charset: str, code: str) -> None:
    feed = tmp_path / "feeds"
    plain = message(1, charset=charset)
    accented = plain.replace(b"Alex1", b"Alex\xe91")  # a non-ASCII byte in the declared charset

    async def body() -> None:
        async with listener(feed) as (port, stats):
            acks = await exchange(port, plain, accented)
            assert [msa(a)[0] for a in acks] == [code, code]
            assert stats.errors == 0

    run(body())
    assert len(landed(feed)) == (2 if code == "AA" else 0)


def test_an_ack_the_builder_cannot_write_is_answered_from_the_header(tmp_path: Path, monkeypatch) -> None:
    real = listen_mod.build_ack

    def failing(msg, raw, *args, **kwargs):
        if msg is not None or raw.count(b"\r") > 1:
            raise UnicodeEncodeError("x", "", 0, 1, "a codec that cannot write the ACK")
        return real(msg, raw, *args, **kwargs)

    monkeypatch.setattr(listen_mod, "build_ack", failing)
    feed = tmp_path / "feeds"

    async def body() -> None:
        async with listener(feed) as (port, _):
            (ack,) = await exchange(port, message(5))
            assert msa(ack) == ("AA", "CTL000005")

    run(body())
    assert len(landed(feed)) == 1


def test_a_100_mb_frame_without_an_end_byte_stays_within_the_frame_bound(tmp_path: Path) -> None:
    feed = tmp_path / "feeds"
    frame_bound = 1 << 20

    async def body() -> None:
        async with listener(feed, max_frame_bytes=frame_bound) as (port, stats):
            reader, writer = await open_hl7_connection(HOST, port)
            await write_unended_frame(writer, 100)
            ack = await asyncio.wait_for(reader.readmessage(), STEP)
            assert msa(ack) == ("AR", "CTL000007")
            writer.close()
            assert stats.peak_buffered <= frame_bound + listen_mod.READ_BYTES + 3
            (after,) = await exchange(port, message(8))  # and it goes on serving
            assert msa(after)[0] == "AA"

    run(body(), timeout=120)


def test_unfinished_frames_share_one_memory_budget(tmp_path: Path) -> None:
    feed = tmp_path / "feeds"
    budget = 256 << 10

    async def body() -> None:
        async with listener(feed, max_buffered_bytes=budget) as (port, stats):
            first_r, first_w = await open_hl7_connection(HOST, port)
            first_w.write(b"\x0b" + message(9) + b"NTE|1||" + b"x" * (200 << 10))
            await first_w.drain()
            for _ in range(100):  # until the listener holds the first sender's bytes
                if stats.peak_buffered >= 200 << 10:
                    break
                await asyncio.sleep(0.05)
            second_r, second_w = await open_hl7_connection(HOST, port)
            second_w.write(b"\x0b" + message(10) + b"NTE|1||" + b"y" * (200 << 10))
            await second_w.drain()
            ack = await asyncio.wait_for(second_r.readmessage(), STEP)
            assert msa(ack) == ("AE", "CTL000010")
            assert "send it again later" in str(ack.segment("MSA")[3])
            first_w.write(b"\x1c\r")  # the first sender finishes: its message is accepted
            await first_w.drain()
            ack = await asyncio.wait_for(first_r.readmessage(), STEP)
            assert msa(ack) == ("AA", "CTL000009")
            assert stats.peak_buffered <= budget
            for w in (first_w, second_w):
                w.close()

    run(body())


@pytest.mark.parametrize("inside_a_frame", [False, True])
def test_idle_and_stalled_connections_are_closed_after_their_timeout(
    tmp_path: Path, inside_a_frame: bool
) -> None:
    feed = tmp_path / "feeds"

    async def body() -> None:
        async with listener(feed, idle_timeout=0.3, read_timeout=0.3) as (port, stats):
            reader, writer = await open_hl7_connection(HOST, port)
            if inside_a_frame:
                writer.write(b"\x0b" + message(11)[:40])
                await writer.drain()
            # The listener closes the connection: the read ends (no ACK) well within the step.
            assert await asyncio.wait_for(reader.read(), STEP) == b""
            writer.close()
            assert stats.timed_out == 1
            (ack,) = await exchange(port, message(12))
            assert msa(ack)[0] == "AA"

    run(body())
    assert len(landed(feed)) == 1

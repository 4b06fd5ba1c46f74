"""`ehrlift listen` in its own process: 200 idle connections held open, normal senders still served, a 100 MB
frame without an end byte within bounded memory, and the idle connections closed after the timeout."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

from tests.test_listen import HOST, STEP, exchange, message, msa, run, write_unended_frame

ROOT = Path(__file__).resolve().parents[1]
IDLE = 4.0  # seconds; the shipped default is listen_idle_timeout_seconds (600) in schemas/input_limits.json

_SERVE = """
import asyncio, sys
from pipelines.listen import serve
asyncio.run(serve(sys.argv[1], "127.0.0.1", 0, ready=lambda port: print(port, flush=True),
                  idle_timeout=float(sys.argv[2]), read_timeout=float(sys.argv[2])))
"""


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


def test_200_idle_connections_a_100_mb_frame_and_normal_senders(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVE, str(tmp_path / "feeds"), str(IDLE)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(proc.stdout.readline())
        run(_traffic(port, proc.pid), timeout=240)
    finally:
        proc.terminate()
        proc.wait(30)
    assert len(list((tmp_path / "feeds").rglob("*.hl7"))) == 21


async def _traffic(port: int, pid: int) -> None:
    idle = [await asyncio.open_connection(HOST, port) for _ in range(200)]
    opened = time.monotonic()
    # Normal senders are served while the 200 idle connections are held.
    for i in range(20):
        (ack,) = await exchange(port, message(100 + i))
        assert msa(ack)[0] == "AA"
    before = _kib(pid, "VmRSS")
    # 100 MB inside one frame, never ended: answered AR at the frame bound, never held whole.
    reader, writer = await asyncio.open_connection(HOST, port)
    await write_unended_frame(writer, 100)
    answer = await asyncio.wait_for(reader.read(4096), STEP)
    assert b"MSA|AR|CTL000007" in answer
    writer.close()
    grown_mb = (_kib(pid, "VmHWM") - before) / 1024
    assert grown_mb < 64, grown_mb  # the 16 MiB frame bound, not the 100 MB sent
    (ack,) = await exchange(port, message(200))
    assert msa(ack)[0] == "AA"
    # The idle connections are closed by the listener once the idle timeout has passed.
    for r, w in idle:
        assert await asyncio.wait_for(r.read(), IDLE + STEP) == b""
        w.close()
    assert time.monotonic() - opened >= IDLE

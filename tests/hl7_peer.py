"""A receiving MLLP peer for the HL7 back-load tests (the hl7 package's server, in a thread on a free port):
answers AA, AE, AR, nothing, or drops the connection mid-message; dedups and counts on MSH-10."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from hl7.mllp import start_hl7_server


@dataclass
class Peer:
    mode: str = "AA"  # AA, AE, AR, silent, drop
    error_code: str = "207"
    fail_times: int = 10**9  # answer mode this many times per control id, then AA
    delay: float = 0.0
    received: Counter = field(default_factory=Counter)  # control id -> messages received
    accepted: list = field(default_factory=list)  # control ids acknowledged AA, once each (deduplicated)
    port: int = 0
    on_receive: Callable[[str], None] | None = None  # called with each control id as it arrives

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Peer:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(start_hl7_server(self._client, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _client(self, reader, writer) -> None:
        try:
            while True:
                block = await reader.readblock()
                fields = block.decode("utf-8").split("\r")[0].split("|")
                cid, version = fields[9], fields[11]
                self.received[cid] += 1
                if self.on_receive is not None:
                    self.on_receive(cid)
                mode = self.mode if self.received[cid] <= self.fail_times else "AA"
                if self.delay:
                    await asyncio.sleep(self.delay)
                if mode == "silent":
                    continue
                if mode == "drop":
                    writer.transport.abort()
                    return
                if mode == "AA" and cid not in self.accepted:
                    self.accepted.append(cid)
                err = f"\rERR|||{self.error_code}^Error^HL70357|E" if mode != "AA" else ""
                head = f"MSH|^~\\&|PEER|PEER|EHRLIFT|EHRLIFT|20250101||ACK|A{cid}|P|{version}"
                ack = f"{head}\rMSA|{mode}|{cid}{err}"
                writer.writeblock(ack.encode())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return

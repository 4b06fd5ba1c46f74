"""The second, independent MLLP peer for the HL7 back-load tests: node-hl7-server (tests/hl7_server) in a
node process on a free loopback port, counting what it receives and accepts per control id."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections import Counter
from pathlib import Path

import pytest

HERE = Path(__file__).parent / "hl7_server"


def unavailable() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not (HERE / "node_modules" / "node-hl7-server").is_dir():
        return "tests/hl7_server has no node_modules: run `make hl7-server` (part of `make test`)"
    return None


class NodePeer:
    def __init__(self, mode: str = "AA", fail_times: int = 10**9) -> None:
        reason = unavailable()
        if reason:
            pytest.skip(reason)
        self.args = ["node", str(HERE / "server.js"), mode, str(fail_times)]
        self.received: Counter[str] = Counter()
        self.accepted: list[str] = []
        self.port = 0
        self._ready = threading.Event()
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> NodePeer:
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=HERE
        )
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(30):
            self.__exit__()
            raise RuntimeError("node-hl7-server did not start")
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.port = json.loads(line)["port"]
                self._ready.set()
            elif line.startswith("RECV "):
                self.received[line.split()[1]] += 1
            elif line.startswith("ACCEPT "):
                self.accepted.append(line.split()[1])

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

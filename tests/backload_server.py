"""The loopback FHIR R4 server for back-load tests (tests/fhir_server: medplum's router, in memory)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

HERE = Path(__file__).parent / "fhir_server"
TARGETS = Path(__file__).parent.parent / "terminology" / "targets"
START_TIMEOUT = 60.0


def server_available() -> str | None:
    """None when the server can start, else why not (the test is skipped with that reason)."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not (HERE / "node_modules" / "@medplum" / "fhir-router").is_dir():
        return "tests/fhir_server has no node_modules: run `make fhir-server` (part of `make test`)"
    return None


class FhirServer:
    """`with FhirServer("millennium") as s:`; s.base is the FHIR base URL, s.faults(...) injects failures."""

    def __init__(self, mode: str = "generic", *, introspect: str | None = None, omit: str = "") -> None:
        reason = server_available()
        if reason:
            pytest.skip(reason)
        self.mode = mode
        self.args = ["node", str(HERE / "server.js"), "--port", "0", "--mode", mode]
        if mode == "millennium":
            self.args += ["--profile", str(TARGETS / "millennium-r4.json")]
            self.args += ["--codings", str(TARGETS / "millennium.json")]
        if introspect:
            self.args += ["--introspect", introspect]
        if omit:
            self.args += ["--omit", omit]
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> FhirServer:
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        line = ""
        while time.monotonic() < deadline and not line.startswith("listening"):
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None:
                raise RuntimeError("the test FHIR server exited at start")
        if not line.startswith("listening"):
            self.stop()
            raise RuntimeError("the test FHIR server did not start in time")
        self.port = int(line.split()[1])
        self.base = f"http://127.0.0.1:{self.port}/fhir"
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)

    def faults(self, **settings: object) -> dict:
        return httpx.post(f"{self.base}/__faults", json=settings).json()

    def writes(self) -> int:
        return self.stats()["writes"]

    def stats(self) -> dict:
        """writes: successful writes; maxInflight: the most write requests in flight at once."""
        return httpx.get(f"{self.base}/__stats").json()

    def seed(self, resources: list[dict]) -> list[str]:
        """Store resources as the tenant's own records (no write rules): their server ids."""
        return httpx.post(f"{self.base}/__seed", json={"resources": resources}).json()["ids"]

    def search(self, path: str) -> list[dict]:
        """Every resource a search finds (following next links)."""
        url: str | None = f"{self.base}/{path}"
        out: list[dict] = []
        while url:
            bundle = httpx.get(url).json()
            out += [e["resource"] for e in bundle.get("entry", [])]
            url = next(
                (link["url"] for link in bundle.get("link", []) if link.get("relation") == "next"), None
            )
        return out

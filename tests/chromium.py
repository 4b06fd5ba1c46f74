"""Headless Chromium over the DevTools protocol: load a page, record requests and errors, screenshot."""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from websockets.sync.client import connect

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def find_browser() -> str | None:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageLoad:
    requests: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    screenshot: bytes = b""
    values: dict[str, object] = field(default_factory=dict)


def load_page(
    browser: str, url: str, profile: Path, expressions: dict[str, str], timeout: float = 20
) -> PageLoad:
    """Open url in a fresh headless profile; every host name resolves to nothing, so any request would fail.

    Returns every request the page made, console and exception errors, a full-page PNG and the values of
    the given JavaScript expressions evaluated after the load event.
    """
    args = [
        browser,
        "--headless=new",
        "--no-sandbox",  # the tests may run as root in a container
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--window-size=1200,900",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        "about:blank",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port = _devtools_port(profile, proc, timeout)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout) as resp:
            pages = [t for t in json.load(resp) if t["type"] == "page"]
        with connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=timeout) as ws:
            return _drive(ws, url, expressions, timeout)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _devtools_port(profile: Path, proc: subprocess.Popen, timeout: float) -> int:
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited with status {proc.returncode} before it was ready")
        if marker.is_file():
            text = marker.read_text().split()
            if text:
                return int(text[0])
        time.sleep(0.05)
    raise TimeoutError("chromium did not open its DevTools port")


def _drive(ws, url: str, expressions: dict[str, str], timeout: float) -> PageLoad:
    ids = itertools.count(1)
    result = PageLoad()
    deadline = time.monotonic() + timeout

    def handle(event: dict) -> None:
        method, params = event.get("method"), event.get("params", {})
        if method == "Network.requestWillBeSent":
            result.requests.append(params["request"]["url"])
        elif method == "Network.loadingFailed":
            result.failed_requests.append(params.get("errorText", ""))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            result.console_errors.append(json.dumps(params.get("args", []))[:300])
        elif method == "Runtime.exceptionThrown":
            result.console_errors.append(json.dumps(params.get("exceptionDetails", {}))[:300])
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            result.console_errors.append(params["entry"].get("text", "")[:300])

    def call(method: str, **params) -> dict:
        msg_id = next(ids)
        ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(ws.recv(timeout=max(deadline - time.monotonic(), 0.1)))
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            handle(msg)

    for domain in ("Network", "Runtime", "Log", "Page"):
        call(f"{domain}.enable")
    call("Page.navigate", url=url)
    while True:  # wait for the load event, recording what happens meanwhile
        msg = json.loads(ws.recv(timeout=max(deadline - time.monotonic(), 0.1)))
        handle(msg)
        if msg.get("method") == "Page.loadEventFired":
            break
    for name, expr in expressions.items():
        result.values[name] = call("Runtime.evaluate", expression=expr, returnByValue=True)["result"].get(
            "value"
        )
    shot = call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
    result.screenshot = base64.b64decode(shot["data"])
    # Anything still queued (late console errors) is read before closing.
    call("Runtime.evaluate", expression="1")
    return result

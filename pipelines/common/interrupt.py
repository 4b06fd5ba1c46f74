"""Ctrl-C, whatever it surfaces as: Python turns SIGINT into KeyboardInterrupt, but native code may turn
it into something else (DuckDB stops the query and raises an ordinary "Query interrupted" error). The
handler installed here notes that the operator asked to stop, so the run is recorded as interrupted
(exit 130), not as a bug (70)."""

from __future__ import annotations

import contextlib
import signal
import sys

_seen = False
INTERRUPTED = 130
MESSAGE = "interrupted: re-run the same command to resume; nothing is duplicated"


def _on_sigint(signum: int, frame: object) -> None:
    global _seen
    _seen = True
    raise KeyboardInterrupt


def install() -> None:
    """Note every SIGINT from now on (then raise KeyboardInterrupt, as Python's own handler does).

    Called at the start of each command, so a process that runs several (a test session) starts each
    one unmarked. Only the main thread may set a handler; elsewhere Python's own stays.
    """
    global _seen
    _seen = False
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        with contextlib.suppress(ValueError):  # not the main thread
            signal.signal(signal.SIGINT, _on_sigint)


def interrupted(exc: BaseException | None = None) -> bool:
    """Did the operator interrupt (this exception, or any SIGINT since install())?"""
    if isinstance(exc, KeyboardInterrupt) or _seen:
        return True
    duckdb = sys.modules.get("duckdb")
    return duckdb is not None and isinstance(exc, duckdb.InterruptException)

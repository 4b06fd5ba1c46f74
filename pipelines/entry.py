"""The `ehrlift` console script: Ctrl-C ends it with 130 and a plain line at any moment, even while loading.

Python turns SIGINT into KeyboardInterrupt, but native code may turn it into something else: DuckDB
stops the query and raises an ordinary error ("Query interrupted"). The handler installed here notes
that the operator asked to stop, so whatever error the interrupt surfaces as, the run is recorded as
interrupted (exit 130), not as a bug (70).
"""

from __future__ import annotations

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
    """Note every SIGINT (then raise KeyboardInterrupt, as Python's own handler does)."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)


def interrupted(exc: BaseException | None = None) -> bool:
    """Did the operator interrupt (this exception, or any SIGINT since install())?"""
    if isinstance(exc, KeyboardInterrupt) or _seen:
        return True
    duckdb = sys.modules.get("duckdb")
    return duckdb is not None and isinstance(exc, duckdb.InterruptException)


def main() -> int:
    install()
    try:
        from pipelines.cli import main as cli_main
    except KeyboardInterrupt:
        # Still loading: nothing was started, so nothing needs resuming.
        sys.stderr.write("interrupted before anything was done\n")
        return INTERRUPTED
    return cli_main()

"""The `ehrlift` console script: Ctrl-C ends it with 130 and a plain line at any moment, even while loading.

Python turns SIGINT into KeyboardInterrupt, but native code may turn it into something else: DuckDB
stops the query and raises an ordinary error ("Query interrupted"). The handler installed here notes
that the operator asked to stop, so whatever error the interrupt surfaces as, the run is recorded as
interrupted (exit 130), not as a bug (70).
"""

from __future__ import annotations

import contextlib
import os
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


def fit_address_space() -> None:
    """Under an address-space cap (`ulimit -v`), keep native allocators' reservations inside it.

    A 50 MB attachment run peaks near 700 MB resident but reserved 4.2 GB of address space: glibc's
    per-thread malloc arenas (64 MB each), Arrow's jemalloc pool and DuckDB's buffer pool. Under a 3 GB
    cap an allocation then failed inside orjson, which does not check for it and crashes (SIGSEGV), so
    no Python error could be raised. With two arenas, Arrow on the system allocator and DuckDB's limit
    at a quarter of the cap the same run reserves 2.2 GB. Only ever applied under a cap, and never over
    an operator's own setting.
    """
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")  # read when Arrow first allocates
    os.environ.setdefault("EHRLIFT_DUCKDB_MEMORY_LIMIT", f"{max(soft // 4 >> 20, 64)}MB")
    try:
        import ctypes

        ctypes.CDLL(None).mallopt(-8, 2)  # M_ARENA_MAX (glibc); other C libraries have no such knob
    except (OSError, AttributeError):
        pass


def main() -> int:
    install()
    fit_address_space()
    try:
        from pipelines.cli import main as cli_main
    except KeyboardInterrupt:
        # Still loading: nothing was started, so nothing needs resuming.
        sys.stderr.write("interrupted before anything was done\n")
        return INTERRUPTED
    return cli_main()

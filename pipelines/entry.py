"""The `ehrlift` console script: Ctrl-C ends it with 130 and a plain line at any moment, even while
loading (see pipelines.common.interrupt), and native allocators fit an address-space cap."""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading

from pipelines.common.interrupt import INTERRUPTED, install


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
    code = cli_main()
    exit_now(code)
    return code


def exit_now(code: int) -> None:
    """End the process without tearing the interpreter down, once the command is done.

    Freeing every object of pandas, pyarrow, the FHIR schema validator and DuckDB one by one cost a
    one-file run 0.2-0.3 s of CPU after its work was done and recorded. Exit handlers still run and
    the output is flushed; every warehouse connection is closed by then (committed work is in DuckDB's
    log in any case). With another thread still running, the ordinary exit waits for it instead.
    """
    if threading.active_count() > 1:
        return
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more can be said
            stream.flush()
    os._exit(code)

"""`ehrlift` with a signal sent to itself at a chosen point: `python -m tests.crash_points POINT SIG -- ARGS`.

POINT is `before:<stage>` (land is done, the stage has not started), `convert:<n>` (while the n-th
batch merges, n-1 committed), `normalize:<n>` (n-1 normalize
chunks of 10 done, the rewritten ones committed), or `duckdb:normalize`
(while a long DuckDB query runs, the signal comes from another thread, as a terminal's Ctrl-C does).
SIG is KILL, INT, or WAIT (touch $CRASH_POINT_DIR/paused, then hold until $CRASH_POINT_DIR/go exists).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path


def _send(sig: signal.Signals | None) -> None:
    if sig is None:  # WAIT: tell the test we are here, then hold until it says go
        folder = Path(os.environ["CRASH_POINT_DIR"])
        (folder / "paused").touch()
        for _ in range(3000):
            if (folder / "go").exists():
                return
            time.sleep(0.1)
        raise SystemExit("never told to go on")
    os.kill(os.getpid(), sig)
    time.sleep(5)  # SIGKILL never returns; SIGINT raises KeyboardInterrupt in the main thread first


def _at_call(module, name: str, n: int, sig: signal.Signals | None) -> None:
    original = getattr(module, name)
    calls = [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            _send(sig)
        return original(*args, **kwargs)

    setattr(module, name, wrapper)


def _arm(point: str, sig: signal.Signals | None) -> None:
    import pipelines.normalize
    import pipelines.run
    import pipelines.scale.writer
    import pipelines.validate

    kind, _, arg = point.partition(":")
    if kind == "none":
        return
    if kind == "before":
        module = pipelines.validate if arg == "validate" else pipelines.run
        _at_call(module, f"{arg}_stage", 1, sig)
    elif kind == "convert":
        import dataclasses

        from pipelines.scale import limits

        shipped = limits.limits()
        limits.limits = lambda: dataclasses.replace(shipped, group_files=1)  # a commit per file
        _at_call(pipelines.scale.writer, "merge_stage", int(arg), sig)
    elif kind == "normalize":
        pipelines.normalize.CHUNK = 10
        original, seen = pipelines.normalize.chunks, [0]

        def chunks(*args, **kwargs):
            for chunk in original(*args, **kwargs):
                seen[0] += 1
                if seen[0] == int(arg):
                    _send(sig)
                yield chunk

        pipelines.normalize.chunks = chunks
    elif kind == "duckdb":
        original = pipelines.run.normalize_stage

        def slow(config):
            import duckdb

            threading.Timer(0.5, os.kill, (os.getpid(), sig)).start()
            duckdb.connect().execute("SELECT count(*) FROM range(10000000000) WHERE random() < 0").fetchall()
            return original(config)

        pipelines.run.normalize_stage = slow
    else:
        raise SystemExit(f"unknown point {point}")


if __name__ == "__main__":
    point, sig_name, sep, *argv = sys.argv[1:]
    assert sep == "--"
    _arm(point, None if sig_name == "WAIT" else getattr(signal, f"SIG{sig_name}"))
    from pipelines.cli import main

    sys.exit(main(argv))

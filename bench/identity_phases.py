"""Peak RSS of the linking phase by phase: a sampler thread reads /proc/self/statm, labelled by phase.

Used by `bench/identity.py --phases`: the linking's functions are wrapped (in this process only) so
that each sets the current phase; a thread reads the process's resident set every 10 ms and keeps the
peak per phase, with DuckDB's buffer pool (duckdb_memory()), pyarrow's pool and glibc's heap at that
peak. Nothing of the linking's results is read, so nothing of a record is printed.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import duckdb
import pyarrow as pa

_PAGE = os.sysconf("SC_PAGE_SIZE")
_MIB = 1024 * 1024


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
            "keepcost",
        )
    ]  # fmt: skip


def _mallinfo() -> Callable[[], tuple[int, int]] | None:
    """glibc's heap: (bytes in use, bytes free but held); None off glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2

    def read() -> tuple[int, int]:
        m = fn()
        return m.uordblks + m.hblkhd, m.fordblks

    return read


def rss() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE


class PhaseSampler:
    """Peak RSS per phase label; phases nest (the innermost is current)."""

    def __init__(self, con: Any, interval: float = 0.01) -> None:
        self.stack: list[str] = ["start"]
        self.peaks: dict[str, dict[str, float]] = {}
        self.order: list[str] = []
        self.tags: dict[str, str] = {}
        self.interval = interval
        self.stop = threading.Event()
        self.pool = con.cursor()  # its own connection: reading duckdb_memory() beside the running query
        self.malloc = _mallinfo()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _duckdb(self) -> tuple[int, str]:
        """The buffer pool's bytes in use, and its three largest uses (tag: MiB)."""
        try:
            rows = self.pool.execute(
                "SELECT tag, memory_usage_bytes FROM duckdb_memory() ORDER BY 2 DESC"
            ).fetchall()
        except duckdb.Error:
            return -1, ""
        top = " ".join(f"{tag.lower()}:{used / _MIB:.0f}" for tag, used in rows[:3] if used)
        return sum(used for _, used in rows), top

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        """The resident set now; at a new peak of the phase, the pools' and heap's sizes with it."""
        label = self.stack[-1]
        now = rss()
        peak = self.peaks.get(label)
        if peak is None:
            peak = self.peaks[label] = {"rss": 0, "enter": now}
            self.order.append(label)
        if now > peak["rss"]:
            peak["rss"] = now
            peak["pool"], self.tags[label] = self._duckdb()
            peak["arrow"] = pa.total_allocated_bytes()
            if self.malloc is not None:
                peak["heap"], peak["heap_free"] = self.malloc()

    @contextlib.contextmanager
    def phase(self, label: str) -> Iterator[None]:
        self.stack.append(label)
        self.sample()
        try:
            yield
        finally:
            self.sample()
            self.stack.pop()
            self.peaks[label]["leave"] = rss()

    def wrap(self, module: Any, name: str, label: str) -> None:
        fn = getattr(module, name)
        sampler = self

        if name.startswith("iter_"):

            @functools.wraps(fn)
            def gen(*args: Any, **kwargs: Any) -> Any:
                with sampler.phase(label):
                    yield from fn(*args, **kwargs)

            setattr(module, name, gen)
            return

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            with sampler.phase(label):
                return fn(*args, **kwargs)

        setattr(module, name, call)

    def __enter__(self) -> PhaseSampler:
        from pipelines.identity import link, model

        for module, name, label in (
            (link, "build_features", "features"),
            (link, "build_rule_pairs", "rules"),
            (link, "score_pairs", "scoring"),
            (model, "train", "EM and u"),
            (model, "_predict_in_chunks", "prediction"),
            (link, "decide_pairs", "deciding"),
            (link, "cluster", "components"),
            (link, "map_persons", "persons"),
            (link, "_store", "storing"),
            (link, "iter_person_records", "person records"),
        ):
            self.wrap(module, name, label)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.pool.close()

    def lines(self) -> list[str]:
        out = [
            "phase | peak RSS | enter | leave | DuckDB pool | arrow | heap used | heap free | "
            "pool's largest (MiB at the peak)"
        ]
        for label in self.order:
            p = self.peaks[label]

            def mib(key: str, p: dict = p) -> str:
                v = p.get(key)
                return "-" if v is None or v < 0 else f"{v / _MIB:.0f}"

            keys = ("rss", "enter", "leave", "pool", "arrow", "heap", "heap_free")
            out.append(" | ".join([label, *(mib(k) for k in keys), self.tags.get(label, "")]))
        return out

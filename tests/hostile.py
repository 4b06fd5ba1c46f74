"""Small generators of hostile inputs, and a runner that converts them in a memory-bounded subprocess."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent


def nested(depth: int, open_: str = "[", close: str = "]") -> str:
    return open_ * depth + close * depth


def deep_resource(depth: int, rtype: str = "Basic") -> bytes:
    return f'{{"resourceType":"{rtype}","x":{nested(depth)}}}'.encode()


def deep_bundle(depth: int, *good: dict) -> bytes:
    entries = [orjson.dumps({"resource": r}).decode() for r in good]
    entries.insert(1 if entries else 0, f'{{"resource":{deep_resource(depth).decode()}}}')
    return ('{"resourceType":"Bundle","type":"collection","entry":[' + ",".join(entries) + "]}").encode()


def bounded_env(limit_bytes: int) -> dict[str, str]:
    """The environment for a process under an address-space limit: DuckDB's memory limit well inside it.

    DuckDB's default (4 GB) at or past the process's address space lets its buffer pool take what other
    native code then fails to allocate, and some of that code crashes instead of raising.
    """
    return {**os.environ, "EHRLIFT_DUCKDB_MEMORY_LIMIT": f"{limit_bytes // 4 >> 20}MB"}


def limit_resources(limit_bytes: int, cpu_seconds: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))


_WRAPPER = (
    "import atexit, resource, sys\n"
    "atexit.register(lambda: sys.stderr.write("
    "'PEAK_RSS_KB %d\\n' % resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))\n"
    "from pipelines.entry import main\n"
    "sys.argv = ['ehrlift', *sys.argv[1:]]\n"
    "raise SystemExit(main())\n"
)


def run_bounded(
    args: list[str], memory: int = 3 << 30, cpu: int = 240, env: dict | None = None
) -> tuple[subprocess.CompletedProcess, int]:
    """`ehrlift ARGS` in a subprocess under an address-space and CPU limit: (result, peak RSS bytes)."""
    proc = subprocess.run(
        [sys.executable, "-c", _WRAPPER, *args],
        capture_output=True,
        cwd=ROOT,
        env={**bounded_env(memory), **(env or {})},
        preexec_fn=lambda: limit_resources(memory, cpu),
        timeout=cpu * 2,
        check=False,
    )
    peaks = [
        int(line.split()[1])
        for line in proc.stderr.decode(errors="replace").splitlines()
        if line.startswith("PEAK_RSS_KB ")
    ]
    return proc, (peaks[-1] * 1024 if peaks else -1)

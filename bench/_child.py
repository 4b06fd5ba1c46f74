"""Running one benchmark measurement in its own process, so its peak RSS is its own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"


def run_child(script: str, mode: str, workdir: Path, args: list[str], label: str) -> dict:
    """Run `python script --child mode workdir *args` and return the JSON dict it prints last."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    proc = subprocess.run(
        [sys.executable, script, "--child", mode, str(workdir), *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    if proc.returncode != 0:
        raise SystemExit(f"{mode} on {label} failed:\n{proc.stderr[-2000:]}")
    shutil.rmtree(workdir, ignore_errors=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])

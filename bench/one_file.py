"""A one-file incremental run on the demo warehouse, start-up included, beside a bare DuckDB insert.

    uv run python bench/one_file.py [--repeats 5] [--patients 200] [--code TREE]

Builds the demo warehouse once (`ehrlift demo-data` + `ehrlift run`), then, on a fresh copy of it each
time, runs `ehrlift run inc --warehouse ... --no-progress` where inc/ holds one NDJSON line: a demo
Observation under a new id. Side by side, on a fresh copy too, the baseline: a bare `python -c` that
opens the same warehouse with duckdb and inserts the same JSON line into a table. Each process is
measured alone (wall seconds, CPU seconds, peak RSS from wait4); the first pair warms the byte-code
cache and is not counted. Prints medians, the ratio ehrlift / baseline, and ehrlift's per-stage
seconds (from the run record). Writes bench/out/one_file.json. --code runs the ehrlift of another
source tree (an export of an earlier commit, with this checkout's schemas/fhir-r4/node_modules and
r4.schema.json linked in) with this checkout's environment, for a before/after.
Quote CPU beside wall: on a loaded machine wall times lie.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _child import OUT, REPO  # bench/ is on sys.path when a benchmark runs as a script

WORK = OUT / "one_file"
CODE = [REPO]  # the source tree whose ehrlift runs (--code)
BASELINE = (
    "import duckdb, sys\n"
    "con = duckdb.connect(sys.argv[1])\n"
    "con.execute('CREATE TABLE IF NOT EXISTS bench_one_line (line JSON)')\n"
    "con.execute('INSERT INTO bench_one_line VALUES (?)', [open(sys.argv[2]).read()])\n"
    "con.close()\n"
)


def _env() -> dict[str, str]:
    # Byte code cached outside the checkout, as an installed package has it; the same for both sides.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(OUT / "pycache")
    env["PYTHONPATH"] = str(CODE[0])
    return env


def _measure(argv: list[str], cwd: Path) -> dict[str, float]:
    """Run argv to its end; wall and CPU seconds and peak RSS of that process alone."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{argv[1:3]} exited {proc.returncode}:\n{err[-2000:]}")
    return {
        "seconds": wall,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,
    }


def _ehrlift() -> list[str]:
    return [sys.executable, "-c", "import sys; from pipelines.entry import main; sys.exit(main())"]


def build_base(patients: int) -> tuple[Path, Path]:
    """The demo warehouse after its first run, and a file with one NDJSON line of a new Observation."""
    base = WORK / "base"
    shutil.rmtree(WORK, ignore_errors=True)
    base.mkdir(parents=True)
    for argv in (
        ["demo-data", "demo", "--patients", str(patients)],
        ["run", "demo", "--warehouse", "wh.duckdb", "--no-progress"],
    ):
        proc = subprocess.run([*_ehrlift(), *argv], cwd=base, env=_env(), capture_output=True)
        if proc.returncode not in (0, 7):
            raise SystemExit(f"{argv[0]} failed:\n{proc.stderr.decode(errors='replace')[-2000:]}")
    first = (base / "demo" / "sources" / "fhir-r4" / "Observation.000.ndjson").read_bytes().splitlines()[0]
    obj = json.loads(first)
    obj["id"] = f"{obj['id']}-bench-one-file"
    line = WORK / "one.ndjson"
    line.write_text(json.dumps(obj) + "\n")
    shutil.rmtree(base / "demo")  # only the warehouse and its folders are copied for each repeat
    return base, line


def one_pair(base: Path, line: Path, n: int) -> tuple[dict, dict]:
    run_dir, bare_dir = WORK / f"run{n}", WORK / f"bare{n}"
    for d in (run_dir, bare_dir):
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(base, d)
    (run_dir / "inc").mkdir()
    shutil.copy(line, run_dir / "inc" / "one.ndjson")
    ehrlift = _measure([*_ehrlift(), "run", "inc", "--warehouse", "wh.duckdb", "--no-progress"], run_dir)
    record = max((run_dir / "runs").glob("run-*.json"), key=lambda p: p.stat().st_mtime)
    ehrlift["stages"] = json.loads(record.read_text())["summary"]["stages"]
    bare = _measure([sys.executable, "-c", BASELINE, "wh.duckdb", str(line)], bare_dir)
    shutil.rmtree(run_dir)
    shutil.rmtree(bare_dir)
    return ehrlift, bare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--patients", type=int, default=200)
    ap.add_argument("--code", type=Path, default=REPO, help="source tree to run (default this checkout)")
    args = ap.parse_args()
    CODE[0] = args.code.resolve()
    for need in ("node_modules", "r4.schema.json"):
        if not (CODE[0] / "schemas" / "fhir-r4" / need).exists():
            # Without them the run validates with the R4B models: another (slower) program.
            raise SystemExit(
                f"{CODE[0]} has no schemas/fhir-r4/{need}: link this checkout's (make setup makes it)"
            )
    base, line = build_base(args.patients)
    one_pair(base, line, 0)  # warms the byte-code cache; not counted
    pairs = [one_pair(base, line, n) for n in range(1, args.repeats + 1)]
    runs, bares = [p[0] for p in pairs], [p[1] for p in pairs]

    def med(rows: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    out = {
        "repeats": args.repeats,
        "load_average": os.getloadavg()[0],
        "ehrlift": {k: med(runs, k) for k in ("seconds", "cpu_seconds")}
        | {"peak_rss_mb": max(r["peak_rss_mb"] for r in runs)},
        "baseline": {k: med(bares, k) for k in ("seconds", "cpu_seconds")}
        | {"peak_rss_mb": max(r["peak_rss_mb"] for r in bares)},
        "stages": {
            s: {k: statistics.median(r["stages"][s][k] for r in runs) for k in ("seconds", "cpu_seconds")}
            for s in runs[0]["stages"]
        },
    }
    out["ratio_wall"] = out["ehrlift"]["seconds"] / out["baseline"]["seconds"]
    out["ratio_cpu"] = out["ehrlift"]["cpu_seconds"] / out["baseline"]["cpu_seconds"]
    e, b = out["ehrlift"], out["baseline"]
    print(f"one-file run, median of {args.repeats} (load average {out['load_average']:.1f}):")
    for label, side in (("ehrlift run", e), ("bare insert", b)):
        print(
            f"  {label:<13} {side['seconds']:.2f} s wall  {side['cpu_seconds']:.2f} s CPU  "
            f"{side['peak_rss_mb']:.0f} MB peak"
        )
    print(f"  ratio         {out['ratio_wall']:.1f}x wall  {out['ratio_cpu']:.1f}x CPU")
    stages = "  ".join(f"{s} {v['seconds']:.2f}/{v['cpu_seconds']:.2f}" for s, v in out["stages"].items())
    print(f"  stages (wall/CPU s): {stages}")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "one_file.json").write_text(json.dumps(out, indent=2))
    shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Scale-out benchmark: the migration DAG under the CeleryExecutor with one, then two workers, same input.

    uv run python bench/scale_out.py [--messages 6000] [--slice-units 250] [--workers 1,2]

Each round starts Debian's redis-server on a free loopback port, an Airflow metadata database, the
API server, scheduler, DAG processor and N Celery workers (concurrency 1 each), triggers ehr_migration
on the same HL7 v2 archive (cut into slices of --slice-units messages, so the convert tasks are many
and equal) and prints the wall time of the convert phase (first convert start to last convert end,
from the metadata database), every other phase's seconds (first start to last end of its tasks), the
whole DAG run, the messages/s, the speed-up over one worker (convert phase and whole DAG), each Celery
worker's peak RSS (its process tree, sampled every 0.2 s) and the CPU seconds its tree spent, and which
workers ran convert tasks. Also: `ehrlift run`'s own process pool (workers=1 vs 2) on the same archive,
in one process each. Writes bench/out/scale_out.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PHASES = ("land", "plan", "convert", "merge", "normalize", "identify", "load", "validate", "report")
_TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, what: str, attempts: int, pause: float = 1.0):
    for _ in range(attempts):
        result = check()
        if result:
            return result
        time.sleep(pause)
    raise SystemExit(f"gave up waiting for {what}")


def write_archive(path: Path, messages: int) -> None:
    """Result-like ADT updates: patients recur, so merging has duplicates to settle.

    Each patient keeps one name, birth date and sex across its updates; with one birth date for every
    patient, the identify stage's linking model refused the data (every pair agreed on it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        for i in range(messages):
            n = i % 500
            when = f"2024{1 + i % 12:02d}{1 + i % 27:02d}0800"
            out.write(
                f"MSH|^~\\&|REG|HOSP|EHR|HOSP|{when}||ADT^A08^ADT_A01|C{i}|P|2.5.1\r"
                f"EVN|A08|{when}\r"
                f"PID|1||MRN{n}^^^HOSP^MR||Person{n}^Given{n % 97}||{_born(n)}|{'FM'[n % 2]}\r"
                f"PV1|1|I|W^{i % 9}^1\r"
                f"NK1|1|Kin^Next|SPO\r\n"
            )


def _tree(pid: int) -> list[int]:
    """pid and its descendants, from /proc (Celery forks a process per task under each worker)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
        except OSError:
            continue
    return out


def _rss_cpu(pid: int) -> tuple[int, float]:
    """Resident KiB and CPU seconds (user + system, its own) of one process; zeros once it is gone."""
    try:
        rss = next(
            int(line.split()[1])
            for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            if line.startswith("VmRSS:")
        )
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return rss, (int(stat[11]) + int(stat[12])) / _TICK
    except (OSError, StopIteration, IndexError, ValueError):
        return 0, 0.0


class TreeSampler(threading.Thread):
    """Peak RSS (the tree's sum, and its largest process) and CPU seconds of named process trees."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.roots: dict[str, int] = {}
        self.peak_tree: dict[str, int] = {}
        self.peak_process: dict[str, int] = {}
        self.cpu: dict[str, dict[int, float]] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.2):
            for name, root in list(self.roots.items()):
                total = 0
                for pid in _tree(root):
                    rss, cpu = _rss_cpu(pid)
                    total += rss
                    self.peak_process[name] = max(self.peak_process.get(name, 0), rss)
                    seen = self.cpu.setdefault(name, {})
                    seen[pid] = max(seen.get(pid, 0.0), cpu)
                self.peak_tree[name] = max(self.peak_tree.get(name, 0), total)

    def report(self) -> dict[str, dict]:
        return {
            name: {
                "peak_rss_mb": round(self.peak_tree.get(name, 0) / 1024, 1),
                "peak_process_rss_mb": round(self.peak_process.get(name, 0) / 1024, 1),
                "cpu_seconds": round(sum(self.cpu.get(name, {}).values()), 1),
            }
            for name in self.roots
        }


def _born(n: int) -> str:
    return f"{1930 + n % 70}{1 + n % 12:02d}{1 + n % 28:02d}"


def limits_file(path: Path, slice_units: int) -> Path:
    limits = json.loads((REPO / "schemas" / "scale_limits.json").read_text())
    limits.update(group_bytes=64 << 10, slice_bytes=64 << 10, slice_units=slice_units, pool_min_bytes=0)
    path.write_text(json.dumps(limits))
    return path


def airflow_round(root: Path, src: Path, limits: Path, workers: int) -> dict:
    """One DAG run with `workers` Celery workers; returns its timings."""
    started: list[subprocess.Popen] = []
    redis_port, api_port = free_port(), free_port()
    home = root / f"airflow-{workers}"
    home.mkdir()
    env = dict(os.environ) | {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
        "AIRFLOW__CELERY__RESULT_BACKEND": f"redis://127.0.0.1:{redis_port}/1",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": os.urandom(32).hex(),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "EHRLIFT_SCALE_LIMITS": str(limits),
        "EHRLIFT_WORKERS": "1",
        "PYTHONPATH": str(REPO),
    }
    airflow = [sys.executable, "-m", "airflow"]
    sampler = TreeSampler()

    def start(name: str, args: list[str], extra: dict[str, str] | None = None) -> None:
        log = (home / f"{name}.log").open("wb")
        started.append(
            subprocess.Popen(
                args, env=env | (extra or {}), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        )
        if name.startswith("w"):
            sampler.roots[name] = started[-1].pid

    try:
        start("redis", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""])
        for args in (["db", "migrate"], ["pools", "set", "ehrlift_warehouse", "1", "one writer"]):
            subprocess.run([*airflow, *args], env=env, capture_output=True, check=True, timeout=600)
        start("api", [*airflow, "api-server"])
        start("scheduler", [*airflow, "scheduler"])
        start("dag-processor", [*airflow, "dag-processor"])
        for n in range(workers):
            name = f"w{n + 1}"
            start(
                name,
                [*airflow, "celery", "worker", "-H", f"{name}@bench", "-c", "1", "--skip-serve-logs"],
                {"EHRLIFT_WORKER_NAME": name, "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())},
            )
        ping = (
            "from airflow.providers.celery.executors.celery_executor import app\n"
            "print(len(app.control.ping(timeout=2.0)))"
        )
        wait_for(
            lambda: (
                subprocess.run([sys.executable, "-c", ping], env=env, capture_output=True, text=True)
                .stdout.strip()
                .endswith(str(workers))
            ),
            "the Celery workers",
            300,
        )
        wait_for(
            lambda: subprocess.run([*airflow, "dags", "unpause", "ehr_migration"], env=env).returncode == 0,
            "the DAG",
            300,
        )
        sampler.start()  # from the trigger on: idle workers' start-up is not the DAG's cost
        conf = {"sources": [str(src)], "warehouse": str(home / "wh" / "warehouse.duckdb"), "max_chunks": 64}
        subprocess.run(
            [*airflow, "dags", "trigger", "ehr_migration", "--conf", json.dumps(conf)],
            env=env,
            capture_output=True,
            check=True,
        )

        def finished():
            with sqlite3.connect(home / "airflow.db", timeout=30) as db:
                row = db.execute("SELECT state FROM dag_run WHERE dag_id = 'ehr_migration'").fetchone()
            return row[0] if row and row[0] in ("success", "failed") else None

        state = wait_for(finished, "the DAG run", 3600)
        with sqlite3.connect(home / "airflow.db", timeout=30) as db:
            tasks = db.execute(
                "SELECT task_id, start_date, end_date, hostname, state FROM task_instance "
                "WHERE dag_id = 'ehr_migration'"
            ).fetchall()
            # Each convert task returns the EHRLIFT_WORKER_NAME of the Celery worker that ran it.
            returned = [
                v
                for (v,) in db.execute(
                    "SELECT value FROM xcom WHERE dag_id = 'ehr_migration' AND task_id = 'convert' "
                    "AND key = 'return_value'"
                ).fetchall()
            ]
            run = db.execute(
                "SELECT start_date, end_date FROM dag_run WHERE dag_id = 'ehr_migration'"
            ).fetchone()
    finally:
        sampler.halt.set()
        for proc in reversed(started):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in started:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    phases = {}
    for phase in PHASES:
        spans = [(parse(s), parse(e)) for t, s, e, _h, _st in tasks if t == phase and s and e]
        if spans:
            phases[phase] = round(max(e for _s, e in spans) - min(s for s, _e in spans), 2)
    return {
        "workers": workers,
        "state": state,
        "task_states": {t: st for t, _s, _e, _h, st in tasks if t != "convert"},
        "convert_tasks": sum(1 for t, *_ in tasks if t == "convert"),
        "convert_hosts": _convert_workers(returned),
        "convert_seconds": phases.get("convert", 0.0),
        "phases": phases,
        "dag_seconds": round(parse(run[1]) - parse(run[0]), 2),
        "worker_memory": sampler.report(),
    }


def _convert_workers(values: list) -> dict[str, int]:
    """Convert tasks per worker name (name:pid in each task's returned value)."""
    out: dict[str, int] = {}
    for value in values:
        try:
            data = json.loads(value) if isinstance(value, (str, bytes)) else value
            name = str(data["worker"]).split(":")[0]
        except (TypeError, ValueError, KeyError):
            name = "unknown"
        out[name] = out.get(name, 0) + 1
    return out


def parse(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def pool_round(root: Path, src: Path, limits: Path, workers: int) -> dict:
    """`ehrlift run`'s land + convert on its own process pool, in a fresh process."""
    script = f"""
import json, os, time
os.environ["EHRLIFT_SCALE_LIMITS"] = {str(limits)!r}
from pipelines.common.config import RunConfig
from pipelines.run import convert_stage, land_stage
if __name__ == "__main__":
    config = RunConfig(sources=({str(src)!r},), warehouse={str(root / f"pool-{workers}" / "wh.duckdb")!r},
                       progress=False, workers={workers})
    land_stage(config)
    t = time.perf_counter()
    totals = convert_stage(config)
    print(json.dumps({{"convert_seconds": round(time.perf_counter() - t, 2), "units": totals["units"],
                      "processes": totals.get("worker_processes")}}))
"""
    path = root / f"pool_{workers}.py"
    path.write_text(script)
    out = subprocess.run(
        [sys.executable, str(path)],
        env=dict(os.environ) | {"PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return {"workers": workers} | json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=6000)
    parser.add_argument("--slice-units", type=int, default=250)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--skip-airflow", action="store_true", help="only the in-process pool rounds")
    parser.add_argument("--keep", action="store_true", help="keep the Airflow homes and their task logs")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers it started on the way out
    counts = [int(w) for w in args.workers.split(",")]
    if not args.skip_airflow and shutil.which("redis-server") is None:
        raise SystemExit("redis-server is missing: `make redis` installs Debian's")
    root = Path(tempfile.mkdtemp(prefix="ehrlift-scale-out-"))
    try:
        src = root / "src" / "adt.hl7"
        write_archive(src, args.messages)
        limits = limits_file(root / "limits.json", args.slice_units)
        print(
            f"input: {args.messages} HL7 v2 messages, {src.stat().st_size} bytes, "
            f"slices of {args.slice_units}; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
        )
        rounds = [pool_round(root, src, limits, w) for w in counts]
        base = rounds[0]["convert_seconds"]
        for r in rounds:
            print(
                f"ehrlift pool   workers={r['workers']}: convert+merge {r['convert_seconds']:8.2f} s  "
                f"{args.messages / r['convert_seconds']:8.0f} msg/s  "
                f"speed-up {base / r['convert_seconds']:.2f}x"
            )
        if args.skip_airflow:
            return
        celery = [airflow_round(root, src.parent, limits, w) for w in counts]
        base, base_dag = celery[0]["convert_seconds"], celery[0]["dag_seconds"]
        for r in celery:
            r["convert_ratio"] = round(base / r["convert_seconds"], 3)
            r["dag_ratio"] = round(base_dag / r["dag_seconds"], 3)
            print(
                f"celery workers={r['workers']}: {r['state']}, {r['convert_tasks']} convert tasks "
                f"(by worker: {r['convert_hosts']}), convert phase {r['convert_seconds']:8.2f} s "
                f"({args.messages / r['convert_seconds']:.0f} msg/s, speed-up {r['convert_ratio']:.2f}x), "
                f"whole DAG run {r['dag_seconds']:.1f} s (speed-up {r['dag_ratio']:.2f}x)"
            )
            print("  phases (s)   " + ", ".join(f"{p} {t:.2f}" for p, t in r["phases"].items()))
            failed = {t: st for t, st in r["task_states"].items() if st != "success"}
            if failed:
                print(f"  NOTE: tasks not successful: {failed}")
            for name, m in r["worker_memory"].items():
                print(
                    f"  worker {name}: peak RSS {m['peak_rss_mb']:.0f} MB (its tree; largest process "
                    f"{m['peak_process_rss_mb']:.0f} MB), CPU {m['cpu_seconds']:.1f} s"
                )
        print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        out = REPO / "bench" / "out"
        out.mkdir(parents=True, exist_ok=True)
        (out / "scale_out.json").write_text(
            json.dumps({"messages": args.messages, "pool": rounds, "celery": celery}, indent=2)
        )
    finally:
        if args.keep:
            print(f"kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

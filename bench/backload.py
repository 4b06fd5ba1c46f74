"""Back-load benchmark: ehrlift's sender vs a bare httpx client POSTing the same prepared bodies, same run.

    uv run python bench/backload.py [--warehouse W] [--patients 200] [--plan-resources 100000]

Sends a warehouse (the demo warehouse when --warehouse names one, else a generated clinic) to the loopback
Millennium-mode server (tests/fhir_server; `make fhir-server` first) at N = 1, 4 and 16 concurrent
connections. Each side gets a fresh server; the two sides alternate for --rounds rounds and the ratio is
of the medians (every round is printed too), so a burst of load on a shared machine lands on both sides.
ehrlift's figure includes what the bare client skips: opening the warehouse, loading the plan, the send
journal (intents fsynced before each window, outcomes appended, folded into DuckDB at the end), reference
rewriting and dependency order. CPU microseconds per request (process_time of this process, every
thread, over the timed section: insensitive to the machine's load, unlike the rates) are printed for
both clients. Plan time is measured on a
generated warehouse of --plan-resources resources and reported per 100k.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from pipelines.backload.client import RetryPolicy  # noqa: E402
from pipelines.backload.plan import build_plan  # noqa: E402
from pipelines.backload.profiles import target_profile  # noqa: E402
from pipelines.backload.runner import AuthOptions, plan_backload, send_backload  # noqa: E402
from pipelines.backload.send import SendOptions  # noqa: E402
from pipelines.common.warehouse import open_warehouse  # noqa: E402
from tests.backload_builders import build_warehouse, condition, ident, patient, vital  # noqa: E402

SERVER = REPO / "tests" / "fhir_server" / "server.js"
TARGETS = REPO / "terminology" / "targets"


def clinic(patients: int) -> list[dict]:
    out: list[dict] = [
        {"resourceType": "Organization", "id": "org", "name": "Org", "identifier": [ident("O")]}
    ]
    for n in range(patients):
        out.append(patient(f"p{n}", f"M{n}"))
        for k in range(3):
            out.append(vital(f"o{n}-{k}", f"p{n}", "8867-4", f"2024-01-{k + 1:02d}T10:00:00Z"))
        out.append(condition(f"c{n}", f"p{n}"))
    return out


class Server:
    def __enter__(self) -> Server:
        args = ["node", str(SERVER), "--port", "0", "--mode", "millennium"]
        args += [
            "--profile",
            str(TARGETS / "millennium-r4.json"),
            "--codings",
            str(TARGETS / "millennium.json"),
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        self.base = f"http://127.0.0.1:{int(line.split()[1])}/fhir"
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def ehrlift_rate(warehouse: Path, concurrency: int) -> tuple[float, int, float]:
    """(writes/s, writes, CPU microseconds per write: this process, every thread, the whole call)."""
    with open_warehouse(warehouse) as con:  # a fresh server each time: forget what was sent
        for table in ("backload_results", "backload_ids"):
            con.execute(f"DELETE FROM ops.{table}")
    with Server() as server:
        start, cpu = time.perf_counter(), time.process_time()
        result = send_backload(
            warehouse,
            "millennium-r4",
            server.base,
            AuthOptions(no_auth=True),
            SendOptions(concurrency=concurrency),
            RetryPolicy(),
        )
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    sent = result.counts["created"] + result.counts["updated"]
    return sent / seconds, sent, cpu / sent * 1e6


def bare_rate(bodies: list[tuple[str, bytes]], concurrency: int) -> tuple[float, float]:
    """(requests/s, CPU microseconds per request) of a bare httpx client posting the prepared bodies."""
    with Server() as server:
        client = httpx.Client(limits=httpx.Limits(max_connections=concurrency))
        headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
        client.get(server.base + "/metadata")  # as the sender reads the CapabilityStatement first

        def post(item: tuple[str, bytes]) -> int:
            return client.post(f"{server.base}/{item[0]}", content=item[1], headers=headers).status_code

        start, cpu = time.perf_counter(), time.process_time()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            statuses = list(pool.map(post, bodies))
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        client.close()
    assert all(s == 201 for s in statuses), "the bare client's POSTs must succeed too"
    return len(bodies) / seconds, cpu / len(bodies) * 1e6


def prepared_bodies(warehouse: Path) -> list[tuple[str, bytes]]:
    with open_warehouse(warehouse, read_only=True) as con:
        plan_id = con.execute(
            "SELECT plan_id FROM ops.backload_plans ORDER BY planned_at DESC LIMIT 1"
        ).fetchone()[0]
        rows = con.execute(
            "SELECT resource_type, body FROM ops.backload_plan "
            "WHERE plan_id = ? AND status = 'send' ORDER BY seq",
            [plan_id],
        ).fetchall()
    return [(t, body.encode()) for t, body in rows]


def plan_seconds_per_100k(resources: int, workdir: Path) -> float:
    wh = build_warehouse(workdir / "plan.duckdb", clinic(max(1, resources // 5)))
    with open_warehouse(wh) as con:
        n = sum(
            con.execute(f'SELECT count(*) FROM fhir."{t}"').fetchone()[0] for t in ("Patient", "Observation")
        )
        start = time.perf_counter()
        entries = build_plan(con, target_profile("millennium-r4"))
        seconds = time.perf_counter() - start
    return seconds / len(entries) * 100_000 if entries and n else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warehouse", type=Path, default=None, help="a warehouse to copy (e.g. the demo's)")
    parser.add_argument("--patients", type=int, default=200, help="generated clinic size (no --warehouse)")
    parser.add_argument("--plan-resources", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3, help="alternating bare/ehrlift rounds per N")
    args = parser.parse_args()
    if shutil.which("node") is None or not (SERVER.parent / "node_modules").is_dir():
        raise SystemExit("run `make fhir-server` first (needs node and npm)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        wh = work / "w.duckdb"
        if args.warehouse:
            shutil.copy(args.warehouse, wh)
        else:
            build_warehouse(wh, clinic(args.patients))
        plan_backload(wh, "millennium-r4", work / "plan")
        bodies = prepared_bodies(wh)
        rows = []
        load = os.getloadavg()[0]
        for n in (1, 4, 16):
            bares, ourss, bare_cpu, our_cpu = [], [], [], []
            for _ in range(args.rounds):
                rate, cpu = bare_rate(bodies, n)
                bares.append(rate)
                bare_cpu.append(cpu)
                ours, sent, cpu = ehrlift_rate(wh, n)
                ourss.append(ours)
                our_cpu.append(cpu)
            bare, ours = statistics.median(bares), statistics.median(ourss)
            rounds = [round(o / b, 2) for o, b in zip(ourss, bares, strict=True)]
            rows.append({"N": n, "writes": sent, "ehrlift_rps": round(ours, 1), "bare_rps": round(bare, 1),
                         "ratio": round(ours / bare, 2), "rounds": rounds,
                         "ehrlift_cpu_us": round(statistics.median(our_cpu)),
                         "bare_cpu_us": round(statistics.median(bare_cpu))})  # fmt: skip
        load_after = os.getloadavg()[0]
        per_100k = plan_seconds_per_100k(args.plan_resources, work)
    print(f"load average (1 min) {load:.1f} before, {load_after:.1f} after, on {os.cpu_count()} cores")
    for r in rows:
        print(f"N={r['N']:>2}  writes {r['writes']}  ehrlift {r['ehrlift_rps']} req/s  bare httpx "
              f"{r['bare_rps']} req/s  ratio {r['ratio']} (target >= 0.8; rounds {r['rounds']})  "
              f"CPU/request ehrlift {r['ehrlift_cpu_us']} us, bare {r['bare_cpu_us']} us")  # fmt: skip
    print(f"plan: {per_100k:.1f} s per 100k resources (millennium-r4, {args.plan_resources} generated)")
    print(json.dumps({"send": rows, "plan_seconds_per_100k": round(per_100k, 2), "load": [load, load_after]}))


if __name__ == "__main__":
    main()

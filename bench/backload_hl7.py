"""HL7 v2 back-load benchmark: messages/s over loopback with ACKs against the hl7 package's MLLP server,
ehrlift's whole back-load (`backload_hl7`: read the warehouse, build, check, record, send, record the ACKs)
side by side with a bare python-hl7 client sending the same prebuilt messages (and ehrlift's lanes alone
sending them), and the stage of it after the warehouse reads (build, check, record, send: what the target
is about; for a plan in parts, the sum over its parts, each read before its stage); the `ehrlift backload
hl7` command with its start-up; and building + checking alone vs hl7apy's parse of the same messages.

    uv run python bench/backload_hl7.py [--patients 20] [--copies 20] [--large 10] [--runs 3] [--builders N]

The warehouse is the demo data (`ehrlift demo-data` + `ehrlift run`) in a temporary folder, copied fresh
for every timed back-load (a second one on the same warehouse would find everything acknowledged); no
message is built twice in a run. The server runs in its own process. Two sizes, `--copies` and `--large`
times as many. Targets: >= 0.7x the bare client, and building + checking >= 20x hl7apy's parse (at the
smaller size).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _server(port_out, ready) -> None:
    from hl7.mllp import start_hl7_server

    async def client(reader, writer):
        try:
            while True:
                block = await reader.readblock()
                head = block.split(b"\r", 1)[0].split(b"|")
                ack = b"MSH|^~\\&|R|R|S|S|20250101||ACK|A|P|" + head[11] + b"\rMSA|AA|" + head[9]
                writer.writeblock(ack)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return

    async def main():
        server = await start_hl7_server(client, "127.0.0.1", 0)
        port_out.value = server.sockets[0].getsockname()[1]
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


def _warehouse(root: Path, patients: int) -> Path:
    from pipelines.cli import main

    args = ["demo-data", str(root / "demo"), "--patients", str(patients)]
    assert main(args) == 0
    wh = root / "wh.duckdb"
    assert main(["run", str(root / "demo" / "sources"), "--warehouse", str(wh), "--no-progress"]) == 0
    return wh


def _scale(wh: Path, copies: int) -> None:
    """copies - 1 more of every record the messages are built from, each copy with its own ids, references,
    and identifier and telecom values (so no copy's PID is another's); codes and results are the same."""
    import duckdb

    from pipelines.backload.hl7.plan import LOOKUP_TYPES

    types = sorted({*LOOKUP_TYPES, "DiagnosticReport", "Immunization", "DocumentReference"})
    with duckdb.connect(str(wh)) as con:
        found = con.execute("SELECT table_name FROM duckdb_tables() WHERE schema_name = 'fhir'").fetchall()
        tables = {r[0] for r in found}
        for t in (t for t in types if t in tables):
            for k in range(1, copies):
                con.execute(
                    f"""INSERT INTO fhir."{t}" SELECT * REPLACE (id || '.{k}' AS id,
                    regexp_replace(regexp_replace(regexp_replace(resource::VARCHAR,
                        '"id":"([^"]+)"', '"id":"\\1.{k}"'),
                        '"reference":"([A-Za-z]+)/([^"]+)"', '"reference":"\\1/\\2.{k}"', 'g'),
                        '"value":"([^"]+)"', '"value":"\\1.{k}"', 'g')::JSON AS resource)
                    FROM fhir."{t}" WHERE NOT contains(id, '.')"""
                )


def _fresh(wh: Path, root: Path, name: str) -> Path:
    """A copy of the warehouse (and the landing zone its document urls point into) nothing was sent from.
    The landing zone is copied, not linked: a document's file must resolve inside the warehouse's folder,
    or its MDM would be refused (hl7_document_content_missing) and not measured."""
    copy = root / name / wh.name
    copy.parent.mkdir()
    shutil.copy(wh, copy)
    shutil.copytree(wh.parent / "landing", copy.parent / "landing", symlinks=False)
    return copy


def _prebuilt(wh: Path) -> list[bytes]:
    import duckdb

    from pipelines.backload.hl7.runner import Hl7Options, backload_hl7

    plan = backload_hl7(wh, Hl7Options(to=None))  # plan only: the messages a send would carry
    with duckdb.connect(str(wh), read_only=True) as con:
        rows = con.execute(
            "SELECT message FROM ops.backload_hl7_messages "
            "WHERE plan_id = ? AND status = 'send' ORDER BY seq",
            [plan["plan_id"]],
        ).fetchall()
    return [r[0].encode() for r in rows]


async def _bare(port: int, payloads: list[bytes]) -> None:
    from hl7.mllp import open_hl7_connection

    reader, writer = await open_hl7_connection("127.0.0.1", port)
    for p in payloads:
        writer.writeblock(p)
        await writer.drain()
        await reader.readblock()
    writer.close()


async def _lanes(port: int, payloads: list[bytes]) -> None:
    """ehrlift's sending alone (its lanes, ACK reading and outcome notes) over the prebuilt messages."""
    from pipelines.backload.hl7.mllp import Item, Outcome, SendPolicy, send_all

    # MSH-10 is each message's control id: the ACK must name it.
    items = [Item(i, p.split(b"\r", 1)[0].split(b"|")[9].decode(), "", p) for i, p in enumerate(payloads)]
    states: list[str] = []

    def note(o: Outcome) -> None:
        states.append(o.state)

    await send_all("127.0.0.1", port, items, SendPolicy(), note)
    assert states == ["done"] * len(items)


def _build_and_check(wh: Path) -> tuple[float, list[str]]:
    """Seconds to build and check every message of the plan (read from the warehouse before timing)."""
    import duckdb

    from pipelines.backload.hl7.messages import KINDS
    from pipelines.backload.hl7.plan import build, prepare
    from pipelines.backload.hl7.segments import Header

    with duckdb.connect(str(wh), read_only=True) as con:
        prep = prepare(con, "millennium-r4", list(KINDS), Header(), "20250101120000+0000", {}, wh.parent)
    t0 = time.perf_counter()
    built = [build(prep, *w) for w in prep.work]
    took = time.perf_counter() - t0
    return took, [p.text for p in built if p.text]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=20)
    parser.add_argument("--copies", type=int, default=20, help="copies of the demo's records (own ids)")
    parser.add_argument(
        "--large", type=int, default=10, help="the second size: this many times the copies (1: one size)"
    )
    parser.add_argument("--runs", type=int, default=3, help="timed back-loads (each against a bare send)")
    parser.add_argument(
        "--builders", type=int, default=None, help="builder processes (default: one per core left free)"
    )
    args = parser.parse_args()

    from hl7apy.parser import parse_message

    from pipelines.backload.hl7.structure import rules

    rules("2.5.1")  # compiled once per process (the command's start-up line below includes it)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = _warehouse(root / "base", args.patients)
        port, ready = multiprocessing.Value("i", 0), multiprocessing.Event()
        server = multiprocessing.Process(target=_server, args=(port, ready), daemon=True)
        server.start()
        ready.wait(30)
        try:
            sizes = [args.copies] + ([args.copies * args.large] if args.large > 1 else [])
            for copies in sizes:
                wh = _fresh(base, root, f"size{copies}")
                _scale(wh, copies)
                _measure(wh, root / f"runs{copies}", args, copies, port.value)
        finally:
            server.terminate()

        wh = _fresh(base, root, "build")
        _scale(wh, args.copies)
        build, texts = _build_and_check(wh)
        t0 = time.perf_counter()
        for text in texts:
            parse_message(text, find_groups=True)
        parse = time.perf_counter() - t0
    print(f"ehrlift build+check alone ({len(texts)} messages): {len(texts) / build:8.0f} msg/s")
    print(
        f"hl7apy parse of the same:      {len(texts) / parse:8.0f} msg/s  "
        f"(build+check is {parse / build:.1f}x; target >= 20x)"
    )


def _measure(wh: Path, root: Path, args: argparse.Namespace, copies: int, port: int) -> None:
    """At one size: per run a bare send, ehrlift's lanes alone and the back-load (its stage timed), then the
    command once, start-up included; a summary line with the median ratio and the stage's peak RSS."""
    from pipelines.backload.hl7 import runner
    from pipelines.backload.hl7.runner import Hl7Options, backload_hl7
    from pipelines.backload.hl7.stream import default_builders

    root.mkdir(parents=True)
    # Seconds in the build+check+record+send stage (after the warehouse reads), per part of the plan (a plan
    # larger than a part goes in parts, each read before its stage): their sum is the stage's.
    stage: list[float] = []
    cpu = [0.0, 0.0, 0.0]  # the stage's CPU seconds: total, this process (all threads), the builder
    timed_stage = runner.build_and_send

    def timed(*a, **k):
        t0, c0 = time.perf_counter(), time.process_time()
        k0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        try:
            return timed_stage(*a, **k)
        finally:
            stage.append(time.perf_counter() - t0)
            k1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the builder, joined when the stage ends
            child = k1.ru_utime - k0.ru_utime + k1.ru_stime - k0.ru_stime
            own = time.process_time() - c0
            cpu[:] = [cpu[0] + own + child, cpu[1] + own, cpu[2] + child]

    runner.build_and_send = timed
    try:
        payloads = _prebuilt(_fresh(wh, root, "prebuilt"))
        n = len(payloads)
        to = f"127.0.0.1:{port}"
        builders = args.builders or default_builders()
        print(
            f"\n== {n} messages ({args.patients} demo patients x {copies}); cpus: {os.cpu_count()}; "
            f"builder processes: {builders}"
        )
        ratios: list[float] = []
        for run in range(1, args.runs + 1):
            load = os.getloadavg()[0]
            t0, c0 = time.perf_counter(), time.process_time()
            asyncio.run(_bare(port, payloads))
            bare, bare_cpu = time.perf_counter() - t0, time.process_time() - c0
            t0, c0 = time.perf_counter(), time.process_time()
            asyncio.run(_lanes(port, payloads))
            lanes, lanes_cpu = time.perf_counter() - t0, time.process_time() - c0
            copy = _fresh(wh, root, f"run{run}")
            stage.clear()
            cpu[:] = [0.0, 0.0, 0.0]
            t0 = time.perf_counter()
            result = backload_hl7(copy, Hl7Options(to=to, builders=args.builders))
            ours = time.perf_counter() - t0
            assert result["done"] == result["sent"] == n, result
            staged = sum(stage)
            ratios.append(bare / staged)
            print(
                f"run {run} (load {load:.1f}; {len(stage)} part{'s' if len(stage) > 1 else ''}): "
                f"bare python-hl7 {n / bare:6.0f} msg/s | "
                f"build+check+record+send {n / staged:6.0f} msg/s = {bare / staged:.2f}x "
                f"(target >= 0.7x) | whole backload_hl7 {n / ours:6.0f} msg/s = {bare / ours:.2f}x"
            )
            print(
                f"      CPU per message: bare client {1e6 * bare_cpu / n:5.0f} us | "
                f"stage {1e6 * cpu[0] / n:5.0f} us "
                f"(sender {1e6 * cpu[1] / n:.0f} us with its threads, "
                f"builder{'s' if builders > 1 else ''} {1e6 * cpu[2] / n:.0f} us)"
            )
            print(
                f"      ehrlift's lanes alone (prebuilt messages, no building or recording): "
                f"{n / lanes:6.0f} msg/s = {bare / lanes:.2f}x, CPU {1e6 * lanes_cpu / n:.0f} us/message"
            )
        copy = _fresh(wh, root, "command")
        cmd = [sys.executable, "-m", "pipelines.cli", "backload", "hl7", "--warehouse", str(copy), "--to", to]
        t0 = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", _RSS_OF, *cmd], check=True, capture_output=True, text=True, cwd=REPO
        )
        command = time.perf_counter() - t0
        print(
            f"`ehrlift backload hl7` command, start-up included: {command:.2f} s ({n / command:.0f} msg/s), "
            f"peak RSS {done.stdout.strip()} MB (with its builder)"
        )
        print(f"median stage ratio at {n} messages: {statistics.median(ratios):.2f}x (target >= 0.7x)")
    finally:
        runner.build_and_send = timed_stage


# Runs a command and prints the peak RSS of it and its children, in MB (what the user's machine holds).
_RSS_OF = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
    "print(round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024))"
)


if __name__ == "__main__":
    main()

"""HL7 v2 back-load benchmark: messages/s over loopback with ACKs against the hl7 package's MLLP server,
ehrlift (build + structural check + send) side by side with a bare python-hl7 client sending the same
prebuilt messages; and building + checking alone vs hl7apy's parse of the same messages.

    uv run python bench/backload_hl7.py [--patients 20] [--repeat 5]

The warehouse is the demo data (`ehrlift demo-data` + `ehrlift run`) in a temporary folder; the server runs
in its own process so client and server do not share an interpreter. Targets: >= 0.7x the bare client,
and building + checking >= 20x hl7apy's parse.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
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

    assert main(["demo-data", str(root / "demo"), "--patients", str(patients)]) == 0
    wh = root / "wh.duckdb"
    assert main(["run", str(root / "demo" / "sources"), "--warehouse", str(wh), "--no-progress"]) == 0
    return wh


def _jobs(wh: Path, root: Path):
    """(kind, resource, patient) per message, with the builder context: everything read before timing."""
    import duckdb

    from pipelines.backload.hl7 import messages as m
    from pipelines.backload.hl7.encode import Coder
    from pipelines.backload.hl7.plan import SUBJECT, Store
    from pipelines.backload.hl7.segments import Header, maps
    from terminology.target_codings import profile

    with duckdb.connect(str(wh), read_only=True) as con:
        store = Store(con, ("Patient", "Encounter", "Observation", "Practitioner", "Organization", "Location",
                            "Specimen", "DiagnosticReport", "Immunization", "DocumentReference"))  # fmt: skip
    ctx = m.Context(Header(), Coder(profile("millennium"), maps()["alias_system_name"]), store.get, root)
    jobs = []
    for key, res in sorted(store.by_key.items()):
        rtype = key.split("/")[0]
        if key in store.stand_in:
            continue
        if rtype == "Patient":
            jobs.append(("adt", res, res))
        elif rtype in SUBJECT:
            patient = store.get(res.get(SUBJECT[rtype]))
            if patient:
                jobs.append(
                    ({"DiagnosticReport": "oru", "Immunization": "vxu"}.get(rtype, "mdm"), res, patient)
                )
    return ctx, jobs


def _build_and_check(ctx, jobs) -> list[tuple[str, str]]:
    from pipelines.backload.hl7 import messages as m
    from pipelines.backload.hl7.structure import check

    out = []
    for i, (kind, res, patient) in enumerate(jobs):
        cid = f"B{i:019d}"
        try:
            built = (
                m.adt(ctx, res, cid, "20250101120000+0000", False)
                if kind == "adt"
                else getattr(m, kind)(ctx, res, patient, cid, "20250101120000+0000")
            )
        except m.NotBuildable:
            continue
        if not check(built.text, built.structure, "2.5.1"):
            out.append((cid, built.text))
    return out


async def _bare(port: int, payloads: list[bytes]) -> None:
    from hl7.mllp import open_hl7_connection

    reader, writer = await open_hl7_connection("127.0.0.1", port)
    for p in payloads:
        writer.writeblock(p)
        await writer.drain()
        await reader.readblock()
    writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5, help="passes over the demo's messages")
    args = parser.parse_args()

    from hl7apy.parser import parse_message

    from pipelines.backload.hl7.mllp import Item, SendPolicy, send_all
    from pipelines.backload.hl7.structure import rules

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        wh = _warehouse(root, args.patients)
        ctx, jobs = _jobs(wh, root)
        jobs = jobs * args.repeat
        rules("2.5.1")  # compiled once per process, before timing
        built = _build_and_check(ctx, jobs)
        payloads = [t.encode() for _c, t in built]
        port, ready = multiprocessing.Value("i", 0), multiprocessing.Event()
        server = multiprocessing.Process(target=_server, args=(port, ready), daemon=True)
        server.start()
        ready.wait(30)
        try:
            t0 = time.perf_counter()
            asyncio.run(_bare(port.value, payloads))
            bare = time.perf_counter() - t0

            t0 = time.perf_counter()
            again = _build_and_check(ctx, jobs)
            items = [Item(i, c, "p", t.encode()) for i, (c, t) in enumerate(again)]
            done = []
            asyncio.run(send_all("127.0.0.1", port.value, items, SendPolicy(), done.append))
            ours = time.perf_counter() - t0
            assert sum(o.state == "done" for o in done) == len(items)
        finally:
            server.terminate()

        t0 = time.perf_counter()
        _build_and_check(ctx, jobs)
        build = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _c, text in built:
            parse_message(text, find_groups=True)
        parse = time.perf_counter() - t0

    n = len(payloads)
    print(f"messages: {n} ({args.patients} demo patients x {args.repeat})")
    print(f"bare python-hl7 client:        {n / bare:8.0f} msg/s")
    print(
        f"ehrlift build+check+send:      {n / ours:8.0f} msg/s  "
        f"({bare / ours:.2f}x the bare client; target >= 0.7x)"
    )
    print(f"ehrlift build+check alone:     {n / build:8.0f} msg/s")
    print(
        f"hl7apy parse of the same:      {n / parse:8.0f} msg/s  "
        f"(build+check is {parse / build:.1f}x; target >= 20x)"
    )


if __name__ == "__main__":
    main()

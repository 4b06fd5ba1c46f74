"""HL7 v2 benchmark: ehrlift's land + convert of generated HL7 v2 archives vs python-hl7, hl7apy and a bare
bytes.split floor over the same messages, measured in the same run; prints messages/s, ratios and peak RSS.

    uv run python bench/hl7v2.py [--messages 100000] [--scale 10] [--hl7apy-sample 500] [--seed 7]

The archives are the demo generator's (pipelines/demo/hl7v2.py: ADT, ORU, VXU, DFT in a batch envelope,
SIU, and an MLLP-framed ORU archive, with its handful of deliberate defects). Each measurement runs in
its own process so peak RSS is its own. Every baseline reads the same files and splits them into the
same messages (segments already end with \\r, which is what both parsers need), so file I/O is in all.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import resource
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from _child import OUT, REPO, run_child  # bench/ is on sys.path when a benchmark runs as a script

MESSAGES_PER_PATIENT = 7.5  # a little under the generator's mean, so a set never falls short of its target


def read_messages(folder: Path) -> Iterator[bytes]:
    """Every message of every archive (deliberate defects included), without framing or envelope."""
    for path in sorted(folder.iterdir()):
        data = path.read_bytes()
        if data[:1] == b"\x0b":
            units = (frame[1:] for frame in data.split(b"\x1c\r"))
        else:
            units = iter(data.split(b"\n"))
        for unit in units:
            if unit.startswith(b"MSH"):
                yield unit


def _decode(message: bytes) -> str:
    header = message.split(b"\r", 1)[0]
    return message.decode("latin-1" if header.endswith(b"|8859/1") else "utf-8", errors="replace")


def _cpu() -> float:
    """CPU seconds of this process, every thread included (DuckDB's too)."""
    return time.process_time()


def child(mode: str, folder: Path, workdir: Path, sample: int) -> dict:
    start = time.perf_counter()
    cpu_start = _cpu()
    errors = 0
    if mode == "floor":
        messages = fields = 0
        for message in read_messages(folder):
            for segment in message.split(b"\r"):
                fields += len(segment.split(b"|"))
            messages += 1
        result: dict = {"messages": messages, "fields": fields}
    elif mode == "python-hl7":
        import hl7

        messages = 0
        for message in read_messages(folder):
            messages += 1
            try:
                hl7.parse(_decode(message))
            except Exception:  # the deliberate defects: counted, not fatal
                errors += 1
        result = {"messages": messages}
    elif mode == "hl7apy":
        from hl7apy.parser import parse_message

        every = max(1, sum(1 for _ in read_messages(folder)) // sample)
        chosen = [m for n, m in enumerate(read_messages(folder)) if n % every == 0][:sample]
        start = time.perf_counter()  # the sample is picked outside the timing: only parsing counts
        cpu_start = _cpu()
        for message in chosen:
            try:
                parse_message(_decode(message))
            except Exception:  # the deliberate defects: counted, not fatal
                errors += 1
        result = {"messages": len(chosen)}
    else:
        from pipelines.common.config import RunConfig
        from pipelines.common.warehouse import open_warehouse
        from pipelines.run import convert_stage, land_stage

        warehouse = workdir / "warehouse.duckdb"
        config = RunConfig(sources=(str(folder),), warehouse=warehouse, progress=False)
        land_stage(config)
        totals = convert_stage(config)
        seconds = time.perf_counter() - start
        cpu_seconds = _cpu() - cpu_start
        # Peak RSS now, before this process reads the archives itself to count their messages.
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        with open_warehouse(warehouse, read_only=True) as con:
            ledger = con.execute(
                "SELECT outcome || coalesce('/' || reason, ''), count(*) FROM ops.ledger "
                "WHERE run_id = ? GROUP BY 1 ORDER BY 1",
                [config.run_id],
            ).fetchall()
        result = {
            "messages": sum(1 for _ in read_messages(folder)),
            "resources": totals.get("resources", 0),
            "ledger": dict(ledger),
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "peak_rss_mb": peak,
        }
    result.setdefault("seconds", time.perf_counter() - start)
    result.setdefault("cpu_seconds", _cpu() - cpu_start)
    result["errors"] = errors
    result.setdefault("peak_rss_mb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return result


def measure(mode: str, folder: Path, label: str, sample: int = 0) -> dict:
    return run_child(__file__, mode, OUT / f"work-hl7v2-{label}-{mode}", [str(folder), str(sample)], label)


def archives(messages: int, seed: int) -> Path:
    """The demo generator's HL7 v2 archives for enough patients to hold at least `messages` messages."""
    from pipelines.demo.hl7v2 import HL7_DIR, Hl7v2Export
    from pipelines.demo.model import iter_patients

    patients = math.ceil(messages / MESSAGES_PER_PATIENT)
    root = OUT / f"hl7v2-{patients}-{seed}"
    done = root / "done.json"
    version = _generator_version()
    if not done.exists() or json.loads(done.read_text()).get("generator") != version:
        print(f"generating HL7 v2 archives for {patients:,} patients …", flush=True)
        shutil.rmtree(root, ignore_errors=True)
        export = Hl7v2Export(root, seed)
        for patient in iter_patients(seed, patients):
            export.write(patient)
        files, defects = export.close()
        summary = {"generator": version, "files": [f.to_dict() for f in files], "defects": len(defects)}
        done.write_text(json.dumps(summary))
    return root / HL7_DIR


def _generator_version() -> str:
    """A digest of the generator's sources: a cached set made by other code is made again."""
    digest = hashlib.sha256()
    for path in sorted((REPO / "pipelines" / "demo").iterdir()):
        if path.is_file() and path.suffix in (".py", ".json"):
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def rate(m: dict) -> float:
    return m["messages"] / m["seconds"]


def cpu_rate(m: dict) -> float:
    """Messages per CPU second: on a machine shared with other work, steadier than wall-clock rates."""
    return m["messages"] / max(m["cpu_seconds"], 1e-9)


def compare(label: str, folder: Path, sample: int) -> dict:
    size_mb = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
    floor = measure("floor", folder, label)
    print(f"\n{label}: {floor['messages']:,} messages in 6 archives, {size_mb:.1f} MB", flush=True)
    ours = measure("ehrlift", folder, label)
    pyhl7 = measure("python-hl7", folder, label)
    apy = measure("hl7apy", folder, label, sample)
    for name, m in (
        ("ehrlift land + convert", ours),
        ("python-hl7 hl7.parse", pyhl7),
        (f"hl7apy parse_message ({sample})", apy),
        ("bytes.split floor", floor),
    ):
        failed = f"   {m['errors']} raised" if m["errors"] else ""
        print(
            f"  {name:<30}: {m['messages']:>9,} msgs {rate(m):>10,.0f}/s "
            f"{cpu_rate(m):>10,.0f}/CPU-s   peak RSS {m['peak_rss_mb']:,.0f} MB{failed}"
        )
    print(f"  ehrlift ledger: {', '.join(f'{k} {v:,}' for k, v in ours['ledger'].items())}")
    converting = any(k.startswith("converted") for k in ours["ledger"])
    if not converting:
        print(
            "  NOTE: ehrlift has no HL7 v2 converter yet: every archive was quarantined whole "
            "(no_converter).\n  Its figures time landing and quarantining files, not conversion; "
            "the ratios below are not a conversion throughput."
        )
    print(
        f"  ratio ehrlift / python-hl7: {rate(ours) / rate(pyhl7):8.2f}x wall, "
        f"{cpu_rate(ours) / cpu_rate(pyhl7):.2f}x CPU (target >= 20x)"
    )
    print(f"  ratio ehrlift / hl7apy:     {rate(ours) / rate(apy):8.2f}x")
    print(f"  ratio ehrlift / floor:      {rate(ours) / rate(floor):8.3f}x (bytes.split is the ceiling)")
    return {"label": label, "ehrlift": ours, "python_hl7": pyhl7, "hl7apy": apy, "floor": floor}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, mode, workdir, folder, sample = sys.argv
        print(json.dumps(child(mode, Path(folder), Path(workdir), int(sample))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000, help="messages in the main set (N)")
    parser.add_argument("--scale", type=int, default=10, help="the memory check's set is scale x N messages")
    parser.add_argument("--hl7apy-sample", type=int, default=500, help="messages hl7apy parses (it is slow)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    main_set = compare(f"N = {args.messages:,}", archives(args.messages, args.seed), args.hl7apy_sample)
    results = [main_set]
    if args.scale > 1:
        big = archives(args.messages * args.scale, args.seed)
        ours = measure("ehrlift", big, f"{args.scale}N")
        results.append({"label": f"{args.scale}N", "ehrlift": ours})
        small = main_set["ehrlift"]
        grew = ours["peak_rss_mb"] / small["peak_rss_mb"]
        print(
            f"\nehrlift peak RSS: {small['messages']:,} msgs {small['peak_rss_mb']:,.0f} MB; "
            f"{ours['messages']:,} msgs {ours['peak_rss_mb']:,.0f} MB "
            f"({grew:.2f}x for {ours['messages'] / small['messages']:.1f}x the input; target: flat) "
            f"at {rate(ours):,.0f} msgs/s"
        )
    (OUT / "hl7v2.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

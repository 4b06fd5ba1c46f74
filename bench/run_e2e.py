"""The whole `ehrlift run` (land -> validate, start-up included) beside a peer, on corpus-derived streams.

    uv run python bench/run_e2e.py [--formats hl7v2,ccda,ndjson] [--copies 1] [--scale 10]
                                   [--ccda-docs 40] [--peer-python PATH] [--small-only]

Each stream is the corpus's own data repeated `copies` times (then `copies * scale` times), every copy
with its identifiers rewritten (HL7 message, patient, visit, order, appointment, specimen, document,
charge and procedure ids; C-CDA id extensions and roots; FHIR ids and references) so that no copy's
clinical records duplicate another's (practitioners, organizations and locations stay shared, as in a
real feed). Side by
side in the same run, each in its own process:

- HL7 v2: python-hl7 `hl7.parse` of every message of the same stream (parse only; reading included);
- C-CDA: ccda-to-fhir's `convert_document` on the same documents (its own virtualenv, see
  bench/ccda.py; without it the column is left out with a NOTE);
- NDJSON: DuckDB persisting the same objects into a table of a database file.

Prints messages|documents|resources per second, the ratio ehrlift / peer, and for each of ehrlift's
stages (from the run record, ops.run_stages) its wall seconds, its CPU seconds per 1,000 units (the
run's own process, so it does not swell with the machine's load as wall time does) and the process's
peak RSS at the stage's end, at both sizes; then how the peak RSS grew, for the whole process tree
(conversion workers included) and stage by stage. Writes bench/out/run_e2e.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _child import OUT, REPO, run_child  # bench/ is on sys.path when a benchmark runs as a script

WORK = OUT / "e2e"
UNITS = {"hl7v2": "msgs", "ccda": "docs", "ndjson": "resources"}
# HL7 fields whose first component identifies something (message, patient, visit, order).
# Practitioners, organizations and locations stay shared across copies, as they are in a real feed.
_HL7_IDS = {
    "MSH": (10,),
    "PID": (2, 3, 18),
    "PV1": (19,),
    "ORC": (2, 3),
    "OBR": (2, 3),
    "MRG": (1,),
    "SCH": (1, 2),
    "SPM": (2, 3),
    "TXA": (12, 13, 14, 15, 16),
    "FT1": (2, 3),
    "PR1": (19,),
}
_ID_ELEMENT = re.compile(rb"<id\b[^>]*>")
_ATTR = re.compile(rb'\b(root|extension)="([^"]*)"')
_UUID = re.compile(rb"^[0-9A-Fa-f]{8}-")


def corpus() -> Path:
    return Path(os.environ.get("EHRLIFT_CORPUS") or REPO.parent / "shared" / "corpus")


# --- streams: the corpus, copied with unique identifiers ------------------------------------------------


def hl7_messages() -> list[bytes]:
    from pipelines.convert.hl7v2.reader import MESSAGE, iter_units

    out = []
    for path in sorted((corpus() / "hl7v2").rglob("*")):
        if path.is_file() and path.suffix.lower() in (".hl7", ".txt", ".er7", ".msg", ""):
            out += [u.data for u in iter_units(path) if u.kind == MESSAGE]
    return out


def _hl7_copy(message: bytes, k: int) -> bytes:
    segments = []
    for seg in re.split(rb"\r\n|\r|\n", message):  # some corpus files end segments with LF
        fields = seg.split(b"|")
        for n in _HL7_IDS.get(seg[:3].decode("latin-1"), ()):
            i = n - 1 if seg.startswith(b"MSH") else n  # MSH-1 is the separator itself
            if i < len(fields) and fields[i]:
                reps = []
                for rep in fields[i].split(b"~"):
                    comps = rep.split(b"^")
                    comps[0] = comps[0] + b"C%d" % k if comps[0] else comps[0]
                    reps.append(b"^".join(comps))
                fields[i] = b"~".join(reps)
        segments.append(b"|".join(fields))
    return b"\r".join(segments)


def _ccda_copy(doc: bytes, k: int) -> bytes:
    def fix_id(m: re.Match) -> bytes:
        element = m.group(0)
        if b"extension=" in element:
            return _ATTR.sub(
                lambda a: a.group(0)[:-1] + b"-c%d" % k + b'"' if a.group(1) == b"extension" else a.group(0),
                element,
            )

        def root(a: re.Match) -> bytes:
            value = a.group(2)
            if _UUID.match(value):
                value = b"%08x" % k + value[8:]
            elif value:
                value = value + b".%d" % (k + 1)
            return b'root="' + value + b'"'

        return _ATTR.sub(lambda a: root(a) if a.group(1) == b"root" else a.group(0), element)

    return _ID_ELEMENT.sub(fix_id, doc)


def _fhir_copy(node, k: int, top: bool = True):
    if isinstance(node, dict):
        out = {key: _fhir_copy(v, k, False) for key, v in node.items()}
        if top and isinstance(out.get("id"), str):  # contained ids stay: '#id' references point at them
            out["id"] = f"{out['id']}-c{k}"
        ref = out.get("reference")
        if isinstance(ref, str) and "/" in ref and not ref.startswith(("http", "#")):
            out["reference"] = f"{ref}-c{k}"
        return out
    if isinstance(node, list):
        return [_fhir_copy(v, k, False) for v in node]
    return node


def build_stream(fmt: str, copies: int, ccda_docs: int) -> tuple[Path, int]:
    """The stream's folder (cached under bench/out/e2e) and its unit count."""
    folder = WORK / f"{fmt}-x{copies}" / "sources"
    marker = folder.parent / "units"
    if marker.exists():
        return folder, int(marker.read_text())
    shutil.rmtree(folder.parent, ignore_errors=True)
    folder.mkdir(parents=True)
    if fmt == "hl7v2":
        messages = hl7_messages()
        with (folder / "stream.hl7").open("wb") as fh:
            for k in range(copies):
                for m in messages:
                    fh.write(_hl7_copy(m, k) + b"\r\n")
        units = len(messages) * copies
    elif fmt == "ccda":
        from ccda import documents

        docs = [p.read_bytes() for p in documents(corpus())[:ccda_docs]]
        for k in range(copies):
            for i, doc in enumerate(docs):
                (folder / f"doc-{k:04d}-{i:04d}.xml").write_bytes(_ccda_copy(doc, k))
        units = len(docs) * copies
    else:
        import orjson

        units = 0
        for path in sorted(
            (corpus() / "fhir-r4" / "sample-bulk-fhir-datasets" / "10-patients").glob("*.000.ndjson")
        ):
            lines = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
            with (folder / path.name).open("wb") as fh:
                for k in range(copies):
                    for obj in lines:
                        fh.write(orjson.dumps(_fhir_copy(obj, k)) + b"\n")
            units += len(lines) * copies
    marker.write_text(str(units))
    return folder, units


# --- children: each prints one JSON line ----------------------------------------------------------------


def child(mode: str, workdir: Path, args: list[str]) -> dict:
    sources = Path(args[0])
    start = time.perf_counter()
    if mode == "ehrlift":
        wh = workdir / "data" / "warehouse.duckdb"
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pipelines.cli",
                "run",
                str(sources),
                "--warehouse",
                str(wh),
                "--no-progress",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        seconds = time.perf_counter() - start
        if proc.returncode not in (0, 7):  # 7: the gate blocked the run (the corpus has bad records)
            raise SystemExit(proc.stderr[-2000:])
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        # The run report is runs/<run id>.json; other files there (the identity model's) have two dots.
        (report,) = [p for p in (wh.parent / "runs").glob("*.json") if p.name.count(".") == 1]
        summary = json.loads(report.read_text())["summary"]
        return {
            "seconds": seconds,
            "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "peak_rss_mb": usage.ru_maxrss / 1024,
            "stages": {s: t["seconds"] for s, t in summary["stages"].items()},
            "stage_cpu_seconds": {s: t["cpu_seconds"] for s, t in summary["stages"].items()},
            "stage_peak_rss_mb": {s: t["peak_rss_mb"] for s, t in summary["stages"].items()},
            "units": summary["totals"]["units"],
            "converted": summary["totals"]["converted"],
            "resources": sum(summary["resources_by_type"].values()),
            "exit": proc.returncode,
        }
    if mode == "python-hl7":
        import hl7

        from pipelines.convert.hl7v2.reader import MESSAGE, iter_units

        n = errors = 0
        for path in sorted(sources.iterdir()):
            for unit in iter_units(path):
                if unit.kind == MESSAGE:
                    n += 1
                    try:
                        hl7.parse(unit.data.decode("utf-8", errors="replace"))
                    except Exception:  # a bad message is counted, as ehrlift quarantines it
                        errors += 1
        return {"seconds": time.perf_counter() - start, "units": n, "errors": errors, "peak_rss_mb": _rss()}
    if mode == "duckdb-persist":
        import duckdb

        con = duckdb.connect(str(workdir / "persist.duckdb"))
        files = [str(p) for p in sorted(sources.glob("*.ndjson"))]
        con.execute(
            "CREATE TABLE raw AS SELECT json FROM read_ndjson_objects(?, ignore_errors=true) "
            "WHERE json IS NOT NULL",
            [files],
        )
        n = con.execute("SELECT count(*) FROM raw").fetchone()[0]
        con.close()
        return {"seconds": time.perf_counter() - start, "units": n, "peak_rss_mb": _rss()}
    raise SystemExit(f"unknown mode {mode}")


def _rss() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- the report -----------------------------------------------------------------------------------------


def peer(fmt: str, folder: Path, label: str, peer_python: str) -> dict | None:
    if fmt == "hl7v2":
        return run_child(__file__, "python-hl7", WORK / "tmp", [str(folder)], label)
    if fmt == "ndjson":
        return run_child(__file__, "duckdb-persist", WORK / "tmp", [str(folder)], label)
    if not Path(peer_python).exists():
        print(f"NOTE: no ccda-to-fhir interpreter at {peer_python}; see bench/ccda.py to install it")
        return None
    from ccda import run

    result = run(peer_python, "peer", [str(p) for p in sorted(folder.iterdir())], 1)
    return {"seconds": result["seconds"], "units": len(result["docs"]), "peak_rss_mb": result["peak_rss_mb"]}


def compare(fmt: str, copies: int, ccda_docs: int, peer_python: str) -> dict:
    folder, units = build_stream(fmt, copies, ccda_docs)
    label = f"{fmt} x{copies}"
    ours = run_child(__file__, "ehrlift", WORK / "tmp", [str(folder)], label)
    other = peer(fmt, folder, label, peer_python)
    unit = UNITS[fmt]
    rate = units / ours["seconds"]
    print(f"\n{label}: {units:,} {unit} in, {ours['resources']:,} resources stored (exit {ours['exit']})")
    print(
        f"  ehrlift run   {ours['seconds']:8.2f} s  {rate:10,.0f} {unit}/s  "
        f"{ours['resources'] / ours['seconds']:9,.0f} resources/s  peak RSS {ours['peak_rss_mb']:.0f} MB  "
        f"(CPU {ours['cpu_seconds']:.1f} s)"
    )
    print_stages(ours, units, unit)
    ratio = None
    if other:
        peer_rate = other["units"] / other["seconds"]
        ratio = rate / peer_rate
        name = {"hl7v2": "python-hl7 parse", "ccda": "ccda-to-fhir", "ndjson": "duckdb persist"}[fmt]
        print(
            f"  {name:<14}{other['seconds']:7.2f} s  {peer_rate:10,.0f} {unit}/s  "
            f"peak RSS {other['peak_rss_mb']:.0f} MB"
        )
        print(f"  ratio ehrlift / {name}: {ratio:.3f}x")
    return {"format": fmt, "copies": copies, "units": units, "ehrlift": ours, "peer": other, "ratio": ratio}


def _stage_order(ours: dict) -> list[str]:
    from pipelines.common.stages import STAGES

    return [s for s in STAGES if s in ours["stages"]] + [s for s in ours["stages"] if s not in STAGES]


def print_stages(ours: dict, units: int, unit: str) -> None:
    """Per stage: wall seconds, CPU ms per 1,000 units and the run process's peak RSS at its end."""
    print(f"  {'stage':<10}{'wall s':>8}{'CPU s':>8}{'CPU s/1k ' + unit:>16}{'peak RSS MB':>13}")
    for s in _stage_order(ours):
        cpu = ours["stage_cpu_seconds"][s]
        print(
            f"  {s:<10}{ours['stages'][s]:8.2f}{cpu:8.2f}{1000 * cpu / max(1, units):16.3f}"
            f"{ours['stage_peak_rss_mb'][s]:13.0f}"
        )


def growth(fmt: str, scale: int, small: dict, large: dict) -> dict:
    """How peak RSS grew from the small to the large stream: whole tree, and per stage."""
    a, b = small["ehrlift"], large["ehrlift"]
    out = {"process_tree": b["peak_rss_mb"] / a["peak_rss_mb"], "stages": {}}
    print(
        f"{fmt}: input grew {scale}x; ehrlift peak RSS {a['peak_rss_mb']:.0f} -> {b['peak_rss_mb']:.0f} MB, "
        f"{out['process_tree']:.2f}x (target: within 1.2x)"
    )
    cells = []
    for s in _stage_order(b):
        if s in a["stage_peak_rss_mb"]:
            ratio = b["stage_peak_rss_mb"][s] / max(1e-9, a["stage_peak_rss_mb"][s])
            cpu_a = a["stage_cpu_seconds"][s] / max(1, small["units"])
            cpu_b = b["stage_cpu_seconds"][s] / max(1, large["units"])
            out["stages"][s] = {"rss_growth": ratio, "cpu_per_unit_small": cpu_a, "cpu_per_unit_large": cpu_b}
            cells.append(f"{s} {ratio:.2f}x")
    print("  peak RSS growth by stage: " + ", ".join(cells))
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], Path(sys.argv[3]), sys.argv[4:])))
        return
    from ccda import PEER_PYTHON

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", default="hl7v2,ccda,ndjson")
    parser.add_argument("--copies", type=int, default=1, help="copies of the corpus in the small stream")
    parser.add_argument("--scale", type=int, default=10, help="the large stream is this many times larger")
    parser.add_argument("--ccda-docs", type=int, default=40, help="corpus C-CDA documents per copy")
    parser.add_argument("--peer-python", default=str(PEER_PYTHON))
    parser.add_argument("--small-only", action="store_true", help="measure the small stream only")
    args = parser.parse_args()
    print(f"load average at the start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    results = []
    for fmt in args.formats.split(","):
        small = compare(fmt, args.copies, args.ccda_docs, args.peer_python)
        if args.small_only:
            results.append(small)
            continue
        large = compare(fmt, args.copies * args.scale, args.ccda_docs, args.peer_python)
        grew = growth(fmt, args.scale, small, large)
        large["rss_growth"] = grew["process_tree"]
        large["rss_growth_by_stage"] = grew["stages"]
        large["marginal"] = marginal(fmt, small, large)
        results += [small, large]
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    (OUT / "run_e2e.json").write_text(json.dumps(results, indent=2))


def marginal(fmt: str, small: dict, large: dict) -> dict | None:
    """Rates on the units the large stream adds: what each extra unit costs, start-up and per-run fixed
    costs (a fresh warehouse's contract and terminology, imports, the stages' own queries) cancelled."""
    units = large["units"] - small["units"]
    ours = units / max(1e-9, large["ehrlift"]["seconds"] - small["ehrlift"]["seconds"])
    fixed = small["ehrlift"]["seconds"] - small["units"] / ours
    out = {"units": units, "ehrlift_rate": ours, "ehrlift_fixed_seconds": fixed}
    print(f"{fmt}: marginal {ours:,.0f} {UNITS[fmt]}/s; fixed cost per run {fixed:.2f} s", end="")
    if small["peer"] and large["peer"]:
        theirs = units / max(1e-9, large["peer"]["seconds"] - small["peer"]["seconds"])
        out |= {"peer_rate": theirs, "ratio": ours / theirs}
        print(f"; peer marginal {theirs:,.0f} {UNITS[fmt]}/s; marginal ratio {ours / theirs:.3f}x", end="")
    print()
    return out


if __name__ == "__main__":
    main()

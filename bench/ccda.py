"""C-CDA benchmark: ehrlift's conversion of the corpus's whole documents vs lxml parse-only (the limit) and
vs the PyPI converter ccda-to-fhir (a peer), in one run; prints docs/s, MB/s, resources per document by
type and the ratios.

    uv run python bench/ccda.py [--repeat 3] [--rounds 3] [--peer-python PATH]

The documents are the corpus's whole C-CDA documents (MANIFEST.csv rows described "C-CDA document",
under $EHRLIFT_CORPUS/ccda), read into memory first so file I/O is in none of the timings. Each
measurement runs in its own process, so its peak RSS is its own.

ccda-to-fhir pins its own pydantic and fhir.resources, so it lives in its own virtualenv, not ehrlift's:

    uv venv bench/out/ccda-peer-venv --python 3.11
    uv pip install --python bench/out/ccda-peer-venv/bin/python ccda-to-fhir

The benchmark uses bench/out/ccda-peer-venv/bin/python by default (or --peer-python); without it the
peer's column is left out and a NOTE says how to add it. A document counts as converted by a tool when
the tool returns without an exception and yields at least one resource.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
PEER_PYTHON = OUT / "ccda-peer-venv" / "bin" / "python"
# The resources that carry the record's clinical content (people, places and the document itself aside).
CLINICAL = frozenset(
    {
        "AllergyIntolerance",
        "CarePlan",
        "Condition",
        "DiagnosticReport",
        "Encounter",
        "FamilyMemberHistory",
        "Goal",
        "Immunization",
        "MedicationAdministration",
        "MedicationDispense",
        "MedicationRequest",
        "MedicationStatement",
        "Observation",
        "Procedure",
        "ServiceRequest",
    }
)


def corpus_root() -> Path:
    return Path(os.environ.get("EHRLIFT_CORPUS") or REPO.parent / "shared" / "corpus")


def documents(root: Path) -> list[Path]:
    with (root / "MANIFEST.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [
        root / r["corpus_path"]
        for r in rows
        if r["corpus_path"].startswith("ccda/") and r["description"].startswith("C-CDA document")
    ]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- children: each prints one JSON line --------------------------------------------------------------


def child(mode: str, paths: list[str], repeat: int) -> dict:
    data = [Path(p).read_bytes() for p in paths]
    per_doc: list[dict] = [{} for _ in data]
    if mode == "lxml":
        from lxml import etree

        start = time.perf_counter()
        for _ in range(repeat):
            for i, d in enumerate(data):
                try:
                    etree.fromstring(d, etree.XMLParser(resolve_entities=False, no_network=True))
                    per_doc[i] = {"ok": True}
                except etree.XMLSyntaxError:
                    per_doc[i] = {"ok": False}
        elapsed = time.perf_counter() - start
    elif mode == "ehrlift":
        from pipelines.common.unit import Quarantine
        from pipelines.convert.ccda.converter import convert_document
        from pipelines.convert.ccda.parse import CcdaRejected

        start = time.perf_counter()
        for _ in range(repeat):
            for i, d in enumerate(data):
                try:
                    out, _doc = convert_document(d, "bench", f"doc:{i}")
                    types = Counter(r.resource_type for r in out.resources)
                    per_doc[i] = {"ok": bool(types), "types": types, "doc_type": out.container}
                except (CcdaRejected, Quarantine) as exc:
                    per_doc[i] = {"ok": False, "reason": exc.reason}
        elapsed = time.perf_counter() - start
    elif mode == "peer":
        import logging

        logging.disable(logging.CRITICAL)  # the peer logs every entry it handles
        from ccda_to_fhir import convert_document as peer_convert

        texts = [d.decode("utf-8", errors="replace") for d in data]
        start = time.perf_counter()
        for _ in range(repeat):
            for i, text in enumerate(texts):
                try:
                    result = peer_convert(text)
                    bundle = result["bundle"] if isinstance(result, dict) else result
                    bundle = bundle if isinstance(bundle, dict) else bundle.model_dump()
                    types = Counter(e["resource"]["resourceType"] for e in bundle.get("entry") or [])
                    per_doc[i] = {"ok": bool(types), "types": types}
                except Exception as exc:  # the peer's failures are what is measured, not fatal
                    per_doc[i] = {"ok": False, "reason": type(exc).__name__}
        elapsed = time.perf_counter() - start
    else:
        raise SystemExit(f"unknown mode {mode}")
    return {"mode": mode, "seconds": elapsed, "peak_rss_mb": peak_rss_mb(), "docs": per_doc}


def run(python: str, mode: str, paths: list[str], repeat: int) -> dict:
    listing = OUT / "ccda-documents.json"
    listing.write_text(json.dumps(paths))
    proc = subprocess.run(
        [python, __file__, "--child", mode, str(listing), "--repeat", str(repeat)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- the report -----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="passes over the documents per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per tool; the fastest is kept")
    parser.add_argument("--peer-python", default=str(PEER_PYTHON))
    parser.add_argument("--child", nargs=2, metavar=("MODE", "LISTING"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        paths = json.loads(Path(args.child[1]).read_text())
        print(json.dumps(child(args.child[0], paths, args.repeat)))
        return

    root = corpus_root()
    if not (root / "MANIFEST.csv").is_file():
        raise SystemExit(f"corpus not found at {root}: set EHRLIFT_CORPUS")
    OUT.mkdir(parents=True, exist_ok=True)
    paths = [str(p) for p in documents(root)]
    total_mb = sum(Path(p).stat().st_size for p in paths) / 1e6
    print(
        f"{len(paths)} whole C-CDA documents ({total_mb:.1f} MB), {args.repeat} passes per measurement "
        f"(the peer: 1), best of {args.rounds} rounds"
    )

    # Rounds alternate the tools and each keeps its fastest: on a shared machine, load from elsewhere
    # then slows every tool alike instead of whichever happened to run during a burst.
    tools = [("lxml", sys.executable, "lxml"), ("ehrlift", sys.executable, "ehrlift")]
    if Path(args.peer_python).exists():
        tools.append(("ccda-to-fhir", args.peer_python, "peer"))
    else:
        print(f"NOTE: no peer interpreter at {args.peer_python}; see this script's docstring to install it")
    results: dict[str, dict] = {}
    for _ in range(args.rounds):
        for name, python, mode in tools:
            r = run(python, mode, paths, args.repeat if mode != "peer" else 1)
            if name not in results or r["seconds"] < results[name]["seconds"]:
                results[name] = r

    print(f"\n{'tool':<14}{'docs/s':>10}{'MB/s':>9}{'converted':>11}{'peak RSS MB':>13}")
    rate = {}
    for name, r in results.items():
        ok = sum(1 for d in r["docs"] if d.get("ok"))
        passes = 1 if name == "ccda-to-fhir" else args.repeat  # the peer is slow: one pass is plenty
        rate[name] = len(paths) * passes / r["seconds"]
        print(
            f"{name:<14}{rate[name]:>10.1f}{total_mb * passes / r['seconds']:>9.2f}"
            f"{ok:>6}/{len(paths):<4}{r['peak_rss_mb']:>13.0f}"
        )
    print(f"\nehrlift / lxml parse-only: {rate['ehrlift'] / rate['lxml']:.2f}x (target >= 0.33x)")
    if "ccda-to-fhir" in results:
        print(f"ehrlift / ccda-to-fhir:    {rate['ehrlift'] / rate['ccda-to-fhir']:.1f}x (target >= 5x)")
        _resources_by_type(results, paths)
    (OUT / "ccda.json").write_text(json.dumps({k: {**v, "docs": None} for k, v in results.items()}, indent=2))


def _resources_by_type(results: dict, paths: list[str]) -> None:
    """Clinical resources per document, by document type, on documents both tools convert."""
    ours, peer = results["ehrlift"]["docs"], results["ccda-to-fhir"]["docs"]
    both = defaultdict(lambda: [0, Counter(), Counter()])
    only = Counter()
    for a, b in zip(ours, peer, strict=True):
        if a.get("ok") and b.get("ok"):
            row = both[a["doc_type"]]
            row[0] += 1
            row[1].update({k: v for k, v in a["types"].items() if k in CLINICAL})
            row[2].update({k: v for k, v in b["types"].items() if k in CLINICAL})
        elif a.get("ok"):
            only["ehrlift only"] += 1
        elif b.get("ok"):
            only["ccda-to-fhir only"] += 1
    print(f"\nclinical resources per document, documents both convert ({dict(only) or 'no others'} aside):")
    print(f"{'document type':<26}{'docs':>5}{'ehrlift':>9}{'peer':>7}  by type (ehrlift/peer)")
    for doc_type, (count, a, b) in sorted(both.items()):
        types = ", ".join(f"{t} {a[t] / count:.1f}/{b[t] / count:.1f}" for t in sorted(set(a) | set(b)))
        flag = "" if sum(a.values()) >= sum(b.values()) else "  << fewer than the peer"
        ours_per, peer_per = sum(a.values()) / count, sum(b.values()) / count
        print(f"{doc_type:<26}{count:>5}{ours_per:>9.1f}{peer_per:>7.1f}  {types}{flag}")


if __name__ == "__main__":
    main()

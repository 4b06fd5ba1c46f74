"""Patient-linking benchmark: a population with known truth → pairwise precision, recall, F1, pairs/s, RSS.

Not a timed test. `python bench/identity.py --people 10000 --records 100000` builds the population
(pipelines/demo/identity_population.py) and loads its source Patients into a fresh warehouse in a child
process, then runs the linking stage once and scores its links against the truth; the peak RSS printed
is the linking process's alone (the population and the truth are not in it). Twins and namesakes are
different people: any link between them is counted and printed. `--series` links three sizes (about
90k, 2.4M and 8M candidate pairs), each in a process of its own, and prints the peak RSS of each and
the ratio of the largest to the smallest (memory flat in the number of pairs: at most 1.2). `--phases`
also samples the resident set every 10 ms and prints each phase's peak, with DuckDB's pool, pyarrow's
pool and glibc's heap at that peak (bench/identity_phases.py).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from itertools import combinations
from pathlib import Path

import orjson
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.identity_phases import PhaseSampler
from pipelines.common.warehouse import ensure_resource_table, open_warehouse
from pipelines.demo.identity_population import SOURCES, SSN_SYSTEM, iter_population
from pipelines.identity.config import default_folder, load_config
from pipelines.identity.link import link_patients


def bench_rules(folder: Path) -> Path:
    """The shipped identity data with the population's own assigning authorities trusted and linked on."""
    shutil.copytree(default_folder(), folder, dirs_exist_ok=True)
    rules = orjson.loads((folder / "rules.json").read_bytes())
    systems = [authority for _, authority, _ in SOURCES] + [SSN_SYSTEM]
    rules["link_on_identifier"] = systems
    rules["trusted_identifiers"] = systems
    (folder / "rules.json").write_bytes(orjson.dumps(rules, option=orjson.OPT_INDENT_2))
    return folder


def load_population(con, seed: int, people: int, records: int) -> tuple[dict[str, str], dict[str, str]]:
    """Insert the source Patients; returns {patient id: true person} and {person: look-alike of}."""
    ensure_resource_table(con, "Patient")
    truth: dict[str, str] = {}
    lookalike: dict[str, str] = {}
    batch: list[dict] = []

    def flush() -> None:
        con.register("bench_batch", pa.Table.from_pylist(batch))
        con.execute(
            "INSERT INTO fhir.\"Patient\" SELECT id, CAST(resource AS JSON), source_system, id, 'bench', 0, "
            "'bench', id, last_updated, false FROM bench_batch"
        )
        con.unregister("bench_batch")
        batch.clear()

    for sp in iter_population(seed, people, records):
        rid = sp.resource["id"]
        truth[rid] = sp.person
        if sp.lookalike_of:
            lookalike[sp.person] = sp.lookalike_of
        batch.append(
            {
                "id": rid,
                "resource": orjson.dumps(sp.resource).decode(),
                "source_system": sp.source_system,
                "last_updated": sp.resource["meta"]["lastUpdated"],
            }
        )
        if len(batch) >= 20_000:
            flush()
    if batch:
        flush()
    return truth, lookalike


def score(con, truth: dict[str, str], lookalike: dict[str, str]) -> dict[str, float]:
    """Pairwise metrics over person clusters: a pair is predicted when both map to one person."""
    rows = con.execute("SELECT patient_id, person_id FROM ops.person_map").fetchall()
    predicted: dict[str, list[str]] = defaultdict(list)
    for patient, person in rows:
        predicted[person].append(patient)
    actual: dict[str, list[str]] = defaultdict(list)
    for patient, person in truth.items():
        actual[person].append(patient)
    pred_pairs = sum(len(m) * (len(m) - 1) // 2 for m in predicted.values())
    true_pairs = sum(len(m) * (len(m) - 1) // 2 for m in actual.values())
    tp = 0
    twin_pairs = 0
    for members in predicted.values():
        by_person: dict[str, int] = defaultdict(int)
        for m in members:
            by_person[truth[m]] += 1
        tp += sum(n * (n - 1) // 2 for n in by_person.values())
        for a, b in combinations(by_person, 2):
            if lookalike.get(a) == b or lookalike.get(b) == a:
                twin_pairs += by_person[a] * by_person[b]
    precision = tp / pred_pairs if pred_pairs else 1.0
    recall = tp / true_pairs if true_pairs else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": round(precision, 5),
        "recall": round(recall, 5),
        "f1": round(f1, 5),
        "true_pairs": true_pairs,
        "predicted_pairs": pred_pairs,
        "lookalike_pairs_linked": twin_pairs,
    }


def build(folder: Path, seed: int, people: int, records: int) -> None:
    """In a child process: the warehouse and the truth files, so the parent's peak RSS is the linking's."""
    con = open_warehouse(folder / "warehouse.duckdb")
    started = time.monotonic()
    truth, lookalike = load_population(con, seed, people, records)
    con.close()
    (folder / "truth.json").write_bytes(orjson.dumps({"truth": truth, "lookalike": lookalike}))
    print(
        f"population: {people} people, {len(truth)} source Patients (built and loaded in "
        f"{time.monotonic() - started:.1f} s)"
    )


def _size_args(people: int, records: int, seed: int) -> list[str]:
    return [sys.executable, __file__, "--people", str(people), "--records", str(records), "--seed", str(seed)]


def measure(people: int, records: int, seed: int, phases: bool = False) -> dict:
    """Build the population in a child process, link it here once; the metrics, counts and peak RSS."""
    with tempfile.TemporaryDirectory(prefix="ehrlift-bench-identity-") as tmp:
        folder = bench_rules(Path(tmp) / "identity")
        subprocess.run(
            [*_size_args(people, records, seed), "--build-into", tmp],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        con = open_warehouse(Path(tmp) / "warehouse.duckdb")
        cfg = load_config(folder)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        sampler = PhaseSampler(con) if phases else contextlib.nullcontext()
        started = time.monotonic()
        with sampler:
            result = link_patients(con, "bench", cfg, work=Path(tmp) / "work")
        seconds = time.monotonic() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # before the truth is read
        load = os.getloadavg()
        known = orjson.loads((Path(tmp) / "truth.json").read_bytes())
        metrics = score(con, known["truth"], known["lookalike"])
        con.close()
    return {
        "people": people,
        "source_patients": result.source_patients,
        "pairs_scored": result.pairs_scored,
        "seconds": round(seconds, 1),
        "pairs_per_s": round(result.pairs_scored / seconds),
        "load": round(load[0], 2),
        "decisions": result.pairs,
        "persons": result.persons,
        "trained": result.trained,
        "peak_rss_mib": round(peak / 1024),
        "rss_before_mib": round(rss_before / 1024),
        "memory_limit": cfg.thresholds.get("memory_limit"),
        "phases": sampler.lines() if phases else [],
        **metrics,
    }


def report(m: dict) -> None:
    print(
        f"{m['people']} people, {m['source_patients']} source Patients: linking {m['seconds']:.1f} s, "
        f"{m['pairs_scored']} pairs scored ({m['pairs_per_s']} pairs/s); load average {m['load']:.2f}"
    )
    print(f"decisions: {m['decisions']}; persons: {m['persons']}; model trained by {m['trained']}")
    print(
        f"precision {m['precision']}  recall {m['recall']}  F1 {m['f1']}  "
        f"(true pairs {m['true_pairs']}, predicted {m['predicted_pairs']})"
    )
    print(f"look-alike (twin, namesake) pairs linked: {m['lookalike_pairs_linked']}")
    print(
        f"peak RSS while linking: {m['peak_rss_mib']} MiB (after imports and opening: "
        f"{m['rss_before_mib']} MiB; memory_limit {m['memory_limit']})"
    )
    for line in m.get("phases", []):
        print(f"  {line}")


def series(sizes: list[tuple[int, int]], seed: int, phases: bool = False) -> None:
    """Each size linked in a process of its own, so each peak RSS is that size's alone; then the ratio."""
    rows = []
    for people, records in sizes:
        out = subprocess.run(
            [*_size_args(people, records, seed), "--json", *(["--phases"] if phases else [])],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        m = orjson.loads(out.strip().splitlines()[-1])
        report(m)
        rows.append(m)
    print("\npairs scored | source Patients | peak RSS MiB | precision | recall | F1 | pairs/s | look-alikes")
    for m in rows:
        print(
            f"{m['pairs_scored']:>12} | {m['source_patients']:>15} | {m['peak_rss_mib']:>12} | "
            f"{m['precision']} | {m['recall']} | {m['f1']} | {m['pairs_per_s']} | "
            f"{m['lookalike_pairs_linked']}"
        )
    pairs = [m["pairs_scored"] for m in rows]
    peaks = [m["peak_rss_mib"] for m in rows]
    print(
        f"pairs span {max(pairs) / max(1, min(pairs)):.1f}x; peak RSS ratio (largest / smallest) "
        f"{max(peaks) / min(peaks):.2f} (target <= 1.2)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=10_000)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--series",
        nargs="?",
        const="1000:10000,10000:100000,20000:200000",
        help="people:records sizes, each linked in its own process (default about 90k, 2.4M and 8M pairs)",
    )
    parser.add_argument("--json", action="store_true", help="print the measures as one JSON line")
    parser.add_argument(
        "--phases", action="store_true", help="sample RSS every 10 ms and print the peak of each phase"
    )
    parser.add_argument("--build-into", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_into:
        build(args.build_into, args.seed, args.people, args.records)
        return
    if args.series:
        sizes = [tuple(int(x) for x in size.split(":")) for size in args.series.split(",")]
        series([(p, r) for p, r in sizes], args.seed, args.phases)
        return
    m = measure(args.people, args.records, args.seed, args.phases)
    if args.json:
        print(orjson.dumps(m).decode())
    else:
        report(m)


if __name__ == "__main__":
    main()

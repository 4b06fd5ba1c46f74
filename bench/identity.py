"""Patient-linking benchmark: a population with known truth → pairwise precision, recall, F1, pairs/s, RSS.

Not a timed test. `python bench/identity.py --people 10000 --records 100000` builds the population
(pipelines/demo/identity_population.py) and loads its source Patients into a fresh warehouse in a child
process, then runs the linking stage once and scores its links against the truth; the peak RSS printed
is the linking process's alone (the population and the truth are not in it). Twins and namesakes are
different people: any link between them is counted and printed.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=10_000)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--build-into", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_into:
        build(args.build_into, args.seed, args.people, args.records)
        return
    with tempfile.TemporaryDirectory(prefix="ehrlift-bench-identity-") as tmp:
        folder = bench_rules(Path(tmp) / "identity")
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--people",
                str(args.people),
                "--records",
                str(args.records),
                "--seed",
                str(args.seed),
                "--build-into",
                tmp,
            ],
            check=True,
        )
        con = open_warehouse(Path(tmp) / "warehouse.duckdb")
        cfg = load_config(folder)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.monotonic()
        result = link_patients(con, "bench", cfg)
        seconds = time.monotonic() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # before the truth is read
        load = os.getloadavg()
        known = orjson.loads((Path(tmp) / "truth.json").read_bytes())
        metrics = score(con, known["truth"], known["lookalike"])
        con.close()
    print(
        f"linking: {seconds:.1f} s, {result.pairs_scored} pairs scored "
        f"({result.pairs_scored / seconds:.0f} pairs/s); load average {load[0]:.2f} {load[1]:.2f}"
    )
    print(f"decisions: {result.pairs}; persons: {result.persons}; model trained by {result.trained}")
    print(
        f"precision {metrics['precision']}  recall {metrics['recall']}  F1 {metrics['f1']}  "
        f"(true pairs {metrics['true_pairs']}, predicted {metrics['predicted_pairs']})"
    )
    print(f"look-alike (twin, namesake) pairs linked: {metrics['lookalike_pairs_linked']}")
    print(
        f"peak RSS while linking: {peak / 1024:.0f} MiB "
        f"(after imports and opening: {rss_before / 1024:.0f} MiB)"
    )


if __name__ == "__main__":
    main()

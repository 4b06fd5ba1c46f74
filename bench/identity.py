"""Patient-linking benchmark: a population with known truth → pairwise precision, recall, F1, pairs/s, RSS.

Not a timed test. `python bench/identity.py --people 10000 --records 100000` builds the population
(pipelines/demo/identity_population.py), loads its source Patients into a fresh warehouse, runs the
linking stage once and scores its links against the truth. Twins and namesakes are different people:
any link between them is counted and printed.
"""

from __future__ import annotations

import argparse
import resource
import shutil
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=10_000)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ehrlift-bench-identity-") as tmp:
        folder = bench_rules(Path(tmp) / "identity")
        con = open_warehouse(Path(tmp) / "warehouse.duckdb")
        started = time.monotonic()
        truth, lookalike = load_population(con, args.seed, args.people, args.records)
        built = time.monotonic() - started
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.monotonic()
        result = link_patients(con, "bench", load_config(folder))
        seconds = time.monotonic() - started
        metrics = score(con, truth, lookalike)
        con.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        f"population: {args.people} people, {len(truth)} source Patients (built and loaded in {built:.1f} s)"
    )
    print(
        f"linking: {seconds:.1f} s, {result.pairs_scored} pairs scored "
        f"({result.pairs_scored / seconds:.0f} pairs/s)"
    )
    print(f"decisions: {result.pairs}; persons: {result.persons}; model trained by {result.trained}")
    print(
        f"precision {metrics['precision']}  recall {metrics['recall']}  F1 {metrics['f1']}  "
        f"(true pairs {metrics['true_pairs']}, predicted {metrics['predicted_pairs']})"
    )
    print(f"look-alike (twin, namesake) pairs linked: {metrics['lookalike_pairs_linked']}")
    print(f"peak RSS: {peak / 1024:.0f} MiB (before linking {rss_before / 1024:.0f} MiB)")


if __name__ == "__main__":
    main()

"""FHIR R4 ingest benchmark: ehrlift (land, convert, load with ledger and lineage) vs DuckDB's bare
read_ndjson_objects of the same files, measured in the same run; prints throughput and peak-RSS ratios.

    uv run python bench/ingest_fhir.py [--patients 100000] [--skip-corpus]

Each measurement runs in its own process so peak RSS is its own. The bare reader (raw JSON objects, no
schema inference) is the practical upper bound for reading NDJSON on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

from _child import OUT, REPO, run_child  # bench/ is on sys.path when a benchmark runs as a script


def child(mode: str, files: list[str], workdir: Path) -> dict:
    start = time.perf_counter()
    if mode == "duckdb":
        import duckdb

        con = duckdb.connect()
        # sum(length(...)) makes DuckDB materialize every object; count(*) alone could skip parsing.
        n, _ = con.execute(
            "SELECT count(json), sum(length(json)) FROM read_ndjson_objects(?, ignore_errors=true)", [files]
        ).fetchone()
        result = {"resources": n}
    elif mode == "duckdb-persist":
        import duckdb

        # DuckDB alone writing the same objects into a table of a database file: the floor for any
        # ingest that persists, before ledgers, lineage or id rewriting.
        con = duckdb.connect(str(workdir / "persist.duckdb"))
        con.execute(
            "CREATE TABLE raw AS SELECT json FROM read_ndjson_objects(?, ignore_errors=true) "
            "WHERE json IS NOT NULL",
            [files],
        )
        result = {"resources": con.execute("SELECT count(*) FROM raw").fetchone()[0]}
        con.close()
    else:
        from pipelines.common.config import RunConfig
        from pipelines.run import convert_stage, land_stage

        config = RunConfig(sources=tuple(files), warehouse=workdir / "warehouse.duckdb", progress=False)
        land_stage(config)
        totals = convert_stage(config)  # converts and merges into fhir.*; views are not ingest
        result = {"resources": totals["resources"]}
    result["seconds"] = time.perf_counter() - start
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def measure(mode: str, files: list[Path], label: str) -> dict:
    return run_child(__file__, mode, OUT / f"work-{label}-{mode}", [str(f) for f in files], label)


def demo_files(patients: int) -> list[Path]:
    folder = OUT / f"demo-{patients}"
    if not (folder / "demo-summary.json").exists():
        from pipelines.demo import generate_demo_data

        print(f"generating demo data for {patients} patients …", flush=True)
        generate_demo_data(folder, patients=patients, seed=7)
    return sorted((folder / "sources" / "fhir-r4").glob("*.ndjson"))


def compare(label: str, files: list[Path]) -> dict:
    size_mb = sum(f.stat().st_size for f in files) / 1e6
    bare = measure("duckdb", files, label)
    persist = measure("duckdb-persist", files, label)
    ours = measure("ehrlift", files, label)
    bare_rate = bare["resources"] / bare["seconds"]
    persist_rate = persist["resources"] / persist["seconds"]
    our_rate = ours["resources"] / ours["seconds"]
    print(f"\n{label}: {len(files)} files, {size_mb:.1f} MB")
    for name, m in (
        ("duckdb read_ndjson_objects", bare),
        ("duckdb persist to a table", persist),
        ("ehrlift ingest", ours),
    ):
        rate = m["resources"] / m["seconds"]
        print(f"  {name:<27}: {m['resources']:>9,} {rate:>10,.0f}/s   peak RSS {m['peak_rss_mb']:,.0f} MB")
    print(f"  ratio ehrlift / bare read:        {our_rate / bare_rate:.3f}x (target >= 0.5x)")
    print(f"  ratio duckdb persist / bare read: {persist_rate / bare_rate:.3f}x (the floor for persisting)")
    print(f"  ratio ehrlift / duckdb persist:   {our_rate / persist_rate:.3f}x")
    return {"label": label, "bare": bare, "persist": persist, "ehrlift": ours, "ratio": our_rate / bare_rate}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], sys.argv[4:], Path(sys.argv[3]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=100_000, help="large generated set (>= 1M resources)")
    parser.add_argument("--skip-corpus", action="store_true")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    results = []
    corpus = Path(os.environ.get("EHRLIFT_CORPUS") or REPO.parent / "shared" / "corpus")
    hundred = corpus / "fhir-r4" / "sample-bulk-fhir-datasets" / "100-patients"
    if not args.skip_corpus and hundred.is_dir():
        results.append(compare("corpus 100-patient set", sorted(hundred.glob("*.000.ndjson"))))
    small = compare(f"generated, {args.patients // 10:,} patients", demo_files(args.patients // 10))
    large = compare(f"generated, {args.patients:,} patients", demo_files(args.patients))
    results += [small, large]
    growth = large["ehrlift"]["resources"] / small["ehrlift"]["resources"]
    rss = large["ehrlift"]["peak_rss_mb"] / small["ehrlift"]["peak_rss_mb"]
    limit = os.environ.get("EHRLIFT_DUCKDB_MEMORY_LIMIT", "4GB")
    print(
        f"\ninput grew {growth:.1f}x; ehrlift peak RSS grew {rss:.2f}x (target: flat, about 1x); "
        f"DuckDB's buffer pool is capped at {limit} (EHRLIFT_DUCKDB_MEMORY_LIMIT)"
    )
    (OUT / "ingest_fhir.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

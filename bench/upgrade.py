"""DSTU2 upgrade benchmark: ehrlift converting DSTU2 input (release detection, upgrade to R4, preparation)
vs loading the same patients' R4 input directly, measured in the same run; prints the ratio.

    uv run python bench/upgrade.py [--patients 5000]

Sets: the corpus Synthea Bundles (the same patients in DSTU2 and R4, when $EHRLIFT_CORPUS is there) and
generated patients rendered both as DSTU2 NDJSON and as R4 NDJSON (the R4 set-based fast path).
Each measurement runs in its own process (bench/_child.py). Writes bench/out/upgrade.json.
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


def child(files: list[str], workdir: Path) -> dict:
    import duckdb

    from pipelines.common.config import RunConfig
    from pipelines.run import convert_stage, land_stage

    start = time.perf_counter()
    config = RunConfig(sources=tuple(files), warehouse=workdir / "warehouse.duckdb", progress=False)
    land_stage(config)
    totals = convert_stage(config)
    seconds = time.perf_counter() - start
    con = duckdb.connect(str(workdir / "warehouse.duckdb"), read_only=True)
    units = con.execute("SELECT count(*) FROM ops.ledger").fetchone()[0]
    return {
        "resources": totals["resources"],
        "units": units,
        "seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def compare(label: str, dstu2: list[Path], r4: list[Path]) -> dict:
    old = run_child(__file__, "ehrlift", OUT / "work-upgrade-dstu2", [str(f) for f in dstu2], label)
    new = run_child(__file__, "ehrlift", OUT / "work-upgrade-r4", [str(f) for f in r4], label)
    print(f"\n{label}")
    for name, m in (("DSTU2 upgraded to R4", old), ("R4 loaded directly", new)):
        print(
            f"  {name:<21}: {m['units']:>8,} units {m['units'] / m['seconds']:>9,.0f}/s   "
            f"{m['resources']:>8,} resources {m['resources'] / m['seconds']:>9,.0f}/s   "
            f"peak RSS {m['peak_rss_mb']:,.0f} MB"
        )
    ratio = (old["units"] / old["seconds"]) / (new["units"] / new["seconds"])
    print(f"  ratio DSTU2 / R4 (input units per second): {ratio:.3f}x")
    return {"label": label, "dstu2": old, "r4": new, "ratio": ratio}


def demo_sets(patients: int) -> tuple[list[Path], list[Path]]:
    """The same generated patients as DSTU2 and as R4 NDJSON, one file per type each (cached)."""
    import orjson

    from pipelines.demo.fhir_dstu2 import render_patient_dstu2
    from pipelines.demo.fhir_r4 import render_patient
    from pipelines.demo.model import iter_patients

    folder = OUT / f"upgrade-{patients}"
    sets = {"dstu2": render_patient_dstu2, "r4": render_patient}
    if not (folder / "done").exists():
        print(f"rendering {patients} patients as DSTU2 and R4 …", flush=True)
        handles: dict[tuple[str, str], object] = {}
        for name in sets:
            (folder / name).mkdir(parents=True, exist_ok=True)
        for patient in iter_patients(7, patients, "dstu2"):
            for name, render in sets.items():
                for rtype, res in render(patient):
                    fh = handles.get((name, rtype))
                    if fh is None:
                        fh = handles[(name, rtype)] = (folder / name / f"{rtype}.ndjson").open("wb")
                    fh.write(orjson.dumps(res) + b"\n")
        for fh in handles.values():
            fh.close()
        (folder / "done").touch()
    return sorted((folder / "dstu2").glob("*.ndjson")), sorted((folder / "r4").glob("*.ndjson"))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[4:], Path(sys.argv[3]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=5000, help="generated patients for the NDJSON sets")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    results = []
    corpus = Path(os.environ.get("EHRLIFT_CORPUS") or REPO.parent / "shared" / "corpus")
    left, right = corpus / "fhir-dstu2" / "synthea-bundles", corpus / "fhir-r4" / "synthea-bundles"
    if left.is_dir():
        pairs = [(p, right / p.name) for p in sorted(left.glob("*.json")) if (right / p.name).exists()]
        results.append(compare("corpus Synthea Bundles", [a for a, _ in pairs], [b for _, b in pairs]))
    dstu2, r4 = demo_sets(args.patients)
    if dstu2:
        results.append(compare(f"generated NDJSON, {args.patients:,} patients", dstu2, r4))
    (OUT / "upgrade.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

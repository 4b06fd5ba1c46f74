"""Validation benchmark: the observation suite through Great Expectations (ehrlift's validate path:
DuckDB -> pandas chunks -> GX) vs the same checks compiled to DuckDB SQL, on the same generated views,
measured in the same run, each in its own process; prints rows/s, the time ratio and peak RSS.

    uv run python bench/validate.py [--rows 1000000] [--chunk-rows 250000]

The views are generated in DuckDB (views.observation with N rows, N/20 patients, N/5 encounters) with
a sprinkling of bad rows, so the suite's derived columns (references resolved, birth dates, physiologic
ranges, FHIR dates as timestamps) and its failures cost what they cost in a real run. Both paths must
report the same unexpected counts; the benchmark stops if they do not.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import time
from pathlib import Path

from _child import OUT, REPO, run_child  # bench/ is on sys.path when a benchmark runs as a script

_BUILD = """
CREATE SCHEMA IF NOT EXISTS views;
CREATE OR REPLACE TABLE views.patient AS
SELECT 'p' || i AS id, CASE i % 2 WHEN 0 THEN 'female' ELSE 'male' END AS gender,
       strftime(DATE '1930-01-01' + INTERVAL (i % 25000) DAY, '%Y-%m-%d') AS birth_date
FROM range($patients) t(i);
CREATE OR REPLACE TABLE views.encounter AS
SELECT 'e' || i AS id, 'p' || (i % $patients) AS patient_id FROM range($encounters) t(i);
CREATE OR REPLACE TABLE views.observation AS
SELECT 'o' || i AS id,
       CASE WHEN i % 100003 = 7 THEN 'gone' ELSE 'p' || (i % $patients) END AS patient_id,
       CASE WHEN i % 3 = 0 THEN NULL ELSE 'e' || (i % $encounters) END AS encounter_id,
       CASE WHEN i % 250007 = 11 THEN 'done' ELSE 'final' END AS status,
       'vital-signs' AS category_code,
       CASE WHEN i % 10 = 9 THEN 'http://snomed.info/sct' ELSE 'http://loinc.org' END AS code_system,
       CASE WHEN i % 10 = 9 THEN '271649006' WHEN i % 2 = 0 THEN '8867-4' ELSE '8310-5' END AS code,
       strftime(TIMESTAMP '2015-01-01' + INTERVAL (i % 300000) MINUTE, '%Y-%m-%dT%H:%M:%SZ')
           AS effective_date_time,
       NULL::VARCHAR AS effective_period_start,
       CASE WHEN i % 2 = 0 THEN CASE WHEN i % 500009 = 4 THEN 900.0 ELSE 50 + i % 60 END
            ELSE 36 + (i % 30) / 10.0 END AS value_quantity_value,
       'http://unitsofmeasure.org' AS value_quantity_system,
       CASE WHEN i % 2 = 0 THEN '/min' ELSE 'Cel' END AS value_quantity_code,
       NULL::VARCHAR AS issued
FROM range($rows) t(i);
"""


def build(path: Path, rows: int) -> None:
    import duckdb

    con = duckdb.connect(str(path))
    params = {"rows": rows, "patients": max(1, rows // 20), "encounters": max(1, rows // 5)}
    for statement in filter(str.strip, _BUILD.split(";")):
        con.execute(statement, {k: v for k, v in params.items() if f"${k}" in statement})
    con.close()


def child(mode: str, workdir: Path, db: Path, chunk_rows: int) -> dict:
    import duckdb

    sys.path.insert(0, str(REPO))
    from pipelines.quality.engine import Validator, run_view_suite
    from pipelines.quality.frames import prepare
    from pipelines.quality.settings import load_settings
    from pipelines.quality.sqlcheck import sql_outcomes

    settings = dataclasses.replace(load_settings(), chunk_rows=chunk_rows)
    (suite,) = [s for s in settings.suites if s.name == "observation"]
    con = duckdb.connect(str(db), read_only=True)
    prepare(con, settings)
    validator = Validator(settings) if mode == "gx" else None  # context setup is not part of the timing
    start = time.perf_counter()
    if validator is not None:
        outcomes = run_view_suite(con, validator, suite)
    else:
        outcomes = sql_outcomes(con, suite, settings)
    seconds = time.perf_counter() - start
    rows = con.execute("SELECT count(*) FROM views.observation").fetchone()[0]
    return {
        "seconds": seconds,
        "rows": rows,
        "rows_per_s": rows / seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "unexpected": {o.name: o.unexpected_count for o in outcomes},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-rows", type=int, default=250_000)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "WORKDIR"))
    parser.add_argument("--db")
    args = parser.parse_args()
    if args.child:
        mode, workdir = args.child
        print(json.dumps(child(mode, Path(workdir), Path(args.db), args.chunk_rows)))
        return
    OUT.mkdir(parents=True, exist_ok=True)
    db = OUT / f"validate-{args.rows}.duckdb"
    if not db.exists():
        print(f"generating {args.rows:,} observation rows ...", flush=True)
        build(db, args.rows)
    results = {}
    for mode in ("sql", "gx"):
        extra = ["--db", str(db), "--chunk-rows", str(args.chunk_rows)]
        results[mode] = run_child(__file__, mode, OUT / f"validate-{mode}", extra, f"{args.rows} rows")
        r = results[mode]
        print(
            f"{mode:>4}: {r['seconds']:8.2f} s  {r['rows_per_s']:>12,.0f} rows/s  "
            f"peak RSS {r['peak_rss_mb']:,.0f} MB"
        )
    if results["sql"]["unexpected"] != results["gx"]["unexpected"]:
        raise SystemExit(
            f"GX and SQL disagree: {results['gx']['unexpected']} vs {results['sql']['unexpected']}"
        )
    ratio = results["gx"]["seconds"] / results["sql"]["seconds"]
    failing = {k: v for k, v in results["gx"]["unexpected"].items() if v}
    print(f"same unexpected counts on both paths: {failing}")
    print(f"GX time / SQL time: {ratio:.1f}x (target <= 2x)")
    (OUT / "validate.json").write_text(json.dumps({"rows": args.rows, "ratio": ratio, **results}, indent=2))


if __name__ == "__main__":
    main()

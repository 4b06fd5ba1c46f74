"""Terminology benchmark: normalization throughput vs a bare dict lookup; suggestion quality on gold pairs.

    uv run python bench/normalizer.py [--codings 1000000] [--skip-corpus]

Throughput: laboratory Observations built from the demo generator's lab tests (a local code beside its
LOINC code, a category, an interpretation and a unit: four codings and one unit each) until there are at
least N codings. Three measurements, each in its own process: a bare loop (parse, one dict lookup per
coding, serialize: the floor), ehrlift's normalizer on the same lines (decisions, added codings, counts,
the audit trail), and the whole normalize stage over the same resources in a DuckDB warehouse (read,
rewrite in place, mapping log). Prints codings/s, the ratio normalizer / bare lookup (target >= 0.5x) and
peak RSS.

Suggestion quality: gold pairs from $EHRLIFT_CORPUS: HL7 v2 fields whose CWE carries a local code and a
LOINC or SNOMED CT alternate in the same field, and C-CDA codes with a translation where one side is local
and the other LOINC or SNOMED CT. Each local display is ranked against the loaded terminology; top-1 and
top-5 hit rates are printed over the pairs whose standard code is in that terminology, which is named.
"""

from __future__ import annotations

import argparse
import json
import re
import resource as rusage
import sys
import time
from pathlib import Path

import orjson
from _child import OUT, REPO, run_child  # bench/ is on sys.path when a benchmark runs as a script

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
LOCAL = "urn:ehrlift:hl7v2:bench:99LAB"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERP = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
RUN_ID = "run-bench"


# --- throughput ---------------------------------------------------------------------------------------------


def lab_tests() -> list[dict]:
    codes = json.loads((REPO / "pipelines" / "demo" / "codes.json").read_text())
    return [{"local": k, **v} for k, v in sorted(codes["lab_tests"].items())]


def write_lines(path: Path, codings: int) -> int:
    tests = lab_tests()
    n = -(-codings // 4)
    with path.open("wb") as f:
        for i in range(n):
            t = tests[i % len(tests)]
            obs = {
                "resourceType": "Observation",
                "id": f"o{i:08d}",
                "status": "final",
                "category": [{"coding": [{"system": CATEGORY, "code": "laboratory"}]}],
                "code": {
                    "coding": [
                        {"system": LOCAL, "code": t["local"], "display": t["local_display"]},
                        {"system": LOINC, "code": t["loinc"], "display": t["display"]},
                    ]
                },
                "valueQuantity": {
                    "value": orjson.Fragment(f"{t['mean']:.{t['decimals']}f}"),
                    "unit": t["unit"],
                },
                "interpretation": [{"coding": [{"system": INTERP, "code": "N" if i % 5 else "H"}]}],
            }
            f.write(orjson.dumps(obs) + b"\n")
    return n


def terminology_rows() -> tuple[list[tuple], list[tuple], dict[str, str]]:
    """Concepts and crosswalk rows for the synthetic set: every LOINC code loaded, half the local codes
    crosswalked, the HL7 code systems loaded."""
    tests = lab_tests()
    concepts = [(LOINC, t["loinc"], t["display"], "active") for t in tests]
    concepts += [(CATEGORY, "laboratory", "Laboratory", "active")]
    concepts += [(INTERP, c, c, "active") for c in ("N", "H")]
    crosswalk = [(LOCAL, t["local"], t["loinc"]) for t in tests[::2]]
    versions = {LOINC: "bench", CATEGORY: "bench", INTERP: "bench"}
    return concepts, crosswalk, versions


def _terms():
    from terminology.terms import Mapping, Terminology

    concepts, crosswalk, versions = terminology_rows()
    terms = Terminology()
    terms.versions = versions
    terms.concepts = {(s, c): (d, st) for s, c, d, st in concepts}
    for s, c, t in crosswalk:
        terms.maps[(s, c)].append(Mapping("crosswalk:bench", "1", LOINC, t, None, "equivalent"))
    return terms


def _walk_lookup(node, table: dict, hits: list[int]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "coding" and isinstance(v, list):
                for c in v:
                    if table.get((c.get("system"), c.get("code"))) is not None:
                        hits[0] += 1
            elif isinstance(v, dict | list):
                _walk_lookup(v, table, hits)
    elif isinstance(node, list):
        for v in node:
            _walk_lookup(v, table, hits)


def child(mode: str, workdir: Path, lines_file: Path) -> dict:
    lines = lines_file.read_bytes().splitlines()
    start = time.perf_counter()
    if mode == "bare":
        concepts, _, _ = terminology_rows()
        table = {(s, c): d for s, c, d, _ in concepts}
        hits = [0]
        size = 0
        for line in lines:
            doc = orjson.loads(line)
            _walk_lookup(doc, table, hits)
            size += len(orjson.dumps(doc))
        result = {"resources": len(lines), "hits": hits[0]}
    elif mode == "normalize":
        from pipelines.normalize import loads_exact
        from terminology.normalize import Normalizer

        normalizer = Normalizer(_terms())
        normalizer.registry.canonical(LOINC)  # the registry loads once, outside the timing
        start = time.perf_counter()  # imports and set-up are outside the timing, as for the bare loop
        size = 0
        for line in lines:
            size += len(orjson.dumps(normalizer.normalize(loads_exact(line.decode()), "bench")))
        result = {"resources": len(lines), "decisions": len(normalizer.decisions)}
        result["seconds"] = time.perf_counter() - start
        result["log_rows"] = len(normalizer.log_rows())
    else:
        import pyarrow as pa

        from pipelines.common.config import RunConfig
        from pipelines.common.warehouse import ensure_resource_table, open_warehouse
        from pipelines.normalize import normalize_stage

        warehouse = workdir / "warehouse.duckdb"
        concepts, crosswalk, versions = terminology_rows()
        with open_warehouse(warehouse) as con:
            table = ensure_resource_table(con, "Observation")
            n = len(lines)
            con.register(
                "_rows",
                pa.table(
                    {
                        "id": [f"o{i:08d}" for i in range(n)],
                        "resource": [line.decode() for line in lines],
                    }
                ),
            )
            con.execute(
                f"INSERT INTO {table} SELECT id, resource::JSON, 'bench', NULL, 'x', 0, '{RUN_ID}', 'x', "
                "NULL, FALSE "
                "FROM _rows"
            )
            sys.path.insert(0, str(REPO))
            from tests.terminology_builders import load_terms

            load_terms(con, concepts, versions=versions)
        cw = workdir / "crosswalks"
        cw.mkdir()
        with (cw / "bench.csv").open("w") as f:
            f.write(
                "source_system,source_code,source_display,target_system,target_code,equivalence,author,"
                "reviewer,review_date,version\n"
            )
            for s, c, t in crosswalk:
                f.write(f"{s},{c},,{LOINC},{t},equivalent,bench,bench,2026-01-01,1\n")
        import os

        os.environ["EHRLIFT_CROSSWALKS"] = str(cw)
        del lines
        config = RunConfig(sources=(), warehouse=warehouse, progress=False, run_id=RUN_ID)
        start = time.perf_counter()
        stats = normalize_stage(config)
        result = {
            "resources": stats["resources"],
            "rewritten": stats["rewritten"],
            "decisions": stats["decisions"],
        }
    result.setdefault("seconds", time.perf_counter() - start)
    result["peak_rss_mb"] = rusage.getrusage(rusage.RUSAGE_SELF).ru_maxrss / 1024
    return result


# --- suggestion quality ------------------------------------------------------------------------------------

_STANDARD_V2 = {"LN": LOINC, "LNC": LOINC, "SCT": SNOMED, "SNOMEDCT": SNOMED}
_OIDS = {"2.16.840.1.113883.6.1": LOINC, "2.16.840.1.113883.6.96": SNOMED}
_LOCAL_V2 = re.compile(r"L|99[A-Z0-9]{1,3}")


def hl7_pairs(corpus: Path) -> tuple[list[dict], dict[tuple[str, str], str]]:
    """(gold pairs, standard codes with the displays seen beside them)."""
    pairs, seen = [], {}
    for path in sorted((corpus / "hl7v2").rglob("*")):
        if not path.is_file():
            continue
        text = path.read_bytes().decode("latin-1")
        for segment in re.split(r"[\r\n]+", text):
            fields = segment.split("|")
            if len(fields) < 3 or not re.fullmatch(r"[A-Z][A-Z0-9]{2}", fields[0]):
                continue
            obx_unit = fields[6].split("^")[0] if fields[0] == "OBX" and len(fields) > 6 else ""
            obx_type = fields[2] if fields[0] == "OBX" else ""
            for field in fields[1:]:
                for rep in field.split("~"):
                    comps = rep.split("^")
                    triplets = [tuple((comps + [""] * 6)[i : i + 3]) for i in (0, 3)]
                    for t in triplets:
                        if t[2] in _STANDARD_V2 and t[0]:
                            seen.setdefault((_STANDARD_V2[t[2]], t[0]), t[1])
                    (c1, d1, s1), (c2, d2, s2) = triplets
                    for (lc, ld, ls), (sc, _, ss) in (
                        ((c1, d1, s1), (c2, d2, s2)),
                        ((c2, d2, s2), (c1, d1, s1)),
                    ):
                        if ss in _STANDARD_V2 and _LOCAL_V2.fullmatch(ls or "") and lc and ld and sc:
                            pairs.append(
                                {
                                    "display": ld,
                                    "system": _STANDARD_V2[ss],
                                    "code": sc,
                                    "unit": obx_unit,
                                    "value_type": obx_type,
                                    "observation": fields[0] in ("OBX", "OBR"),
                                }
                            )
    return pairs, seen


def ccda_pairs(corpus: Path) -> tuple[list[dict], dict[tuple[str, str], str]]:
    from lxml import etree

    pairs, seen = [], {}
    parser = etree.XMLParser(resolve_entities=False, no_network=True, recover=True)
    for path in sorted((corpus / "ccda").rglob("*.xml")):
        try:
            root = etree.parse(str(path), parser).getroot()
        except (etree.XMLSyntaxError, OSError):
            continue
        if root is None:
            continue
        for el in root.iter():
            if not isinstance(el.tag, str) or el.get("code") is None:
                continue
            system = _OIDS.get(el.get("codeSystem", ""))
            if system and el.get("displayName"):
                seen.setdefault((system, el.get("code")), el.get("displayName"))
            translations = [t for t in el if isinstance(t.tag, str) and t.tag.endswith("translation")]
            for a, b in [(el, t) for t in translations] + [(t, el) for t in translations]:
                ls, ss = a.get("codeSystem", ""), _OIDS.get(b.get("codeSystem", ""))
                if ss and ls not in _OIDS and a.get("displayName") and b.get("code"):
                    pairs.append(
                        {
                            "display": a.get("displayName"),
                            "system": ss,
                            "code": b.get("code"),
                            "unit": "",
                            "value_type": "",
                            "observation": ss == LOINC,
                        }
                    )
    return pairs, seen


def suggestion_quality(corpus: Path) -> dict:
    import duckdb

    from terminology import core
    from terminology.suggest import Index, Target

    h_pairs, h_seen = hl7_pairs(corpus)
    c_pairs, c_seen = ccda_pairs(corpus)
    gold = {(p["display"].upper(), p["system"], p["code"]): p for p in h_pairs + c_pairs}
    con = duckdb.connect()
    from pipelines.common.warehouse import apply_contract

    apply_contract(con)
    if core.ensure_default(con):
        loaded = (
            "ehrlift's embedded default terminology ("
            + ", ".join(
                f"{s} {v}"
                for s, v in con.execute(
                    "SELECT system, version FROM terminology.releases "
                    "WHERE active AND system IN (?, ?) ORDER BY 1",
                    [LOINC, SNOMED],
                ).fetchall()
            )
            + ")"
        )
    else:
        sys.path.insert(0, str(REPO))
        from tests.terminology_builders import load_terms

        seen = {**c_seen, **h_seen}
        load_terms(con, [(s, c, d, "active") for (s, c), d in sorted(seen.items())])
        loaded = (
            f"{len(seen)} LOINC/SNOMED CT codes with the displays the corpus itself gives them (no "
            "default terminology installed; optimistic: a gold code's display comes from the same corpus)"
        )
    indexes = {s: Index.from_warehouse(con, (s,)) for s in (LOINC, SNOMED)}
    known = {
        (s, c)
        for s, c in con.execute(
            "SELECT system, code FROM terminology.concepts WHERE status = 'active'"
        ).fetchall()
    }
    evaluated = top1 = top5 = 0
    for p in gold.values():
        if (p["system"], p["code"]) not in known:
            continue
        target = Target("local", "x", p["display"], 1, observation=p["observation"])
        if p["unit"]:
            target.units[p["unit"]] += 1
        if p["value_type"]:
            target.value_types["Quantity" if p["value_type"] in ("NM", "SN") else "string"] += 1
        ranked = [c.code for c in indexes[p["system"]].rank(target, 5)]
        evaluated += 1
        top1 += bool(ranked[:1] == [p["code"]])
        top5 += p["code"] in ranked
    return {
        "terminology": loaded,
        "gold_pairs": len(gold),
        "hl7v2_pairs": len(h_pairs),
        "ccda_pairs": len(c_pairs),
        "evaluated": evaluated,
        "top1": top1,
        "top5": top5,
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        mode, workdir, lines_file = sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
        print(json.dumps(child(mode, workdir, lines_file)))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--codings", type=int, default=1_000_000)
    ap.add_argument("--skip-corpus", action="store_true")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    lines_file = OUT / f"terminology-{args.codings}.ndjson"
    resources = write_lines(lines_file, args.codings)
    codings = resources * 4
    print(f"{resources:,} Observations, {codings:,} codings (+ {resources:,} units)")
    results = {}
    for mode in ("bare", "normalize", "stage"):
        results[mode] = m = run_child(
            __file__, mode, OUT / f"work-terminology-{mode}", [str(lines_file)], "synthetic"
        )
        print(
            f"  {mode:<10} {codings / m['seconds']:>12,.0f} codings/s   peak RSS {m['peak_rss_mb']:,.0f} MB"
        )
    ratio = results["bare"]["seconds"] / results["normalize"]["seconds"]
    stage = results["bare"]["seconds"] / results["stage"]["seconds"]
    print(
        f"normalizer / bare dict lookup: {ratio:.2f}x (target >= 0.5x); "
        f"whole stage with DuckDB I/O: {stage:.2f}x"
    )
    summary = {
        "codings": codings,
        "results": results,
        "ratio_normalize_vs_bare": ratio,
        "ratio_stage_vs_bare": stage,
    }
    if not args.skip_corpus:
        import os

        corpus = Path(os.environ.get("EHRLIFT_CORPUS") or REPO.parent / "shared" / "corpus")
        if corpus.is_dir():
            q = suggestion_quality(corpus)
            summary["suggestions"] = q
            n = q["evaluated"] or 1
            print(
                f"suggestions on {q['gold_pairs']} distinct gold pairs ({q['hl7v2_pairs']} HL7 v2, "
                f"{q['ccda_pairs']} "
                f"C-CDA occurrences); {q['evaluated']} with the standard code in the loaded terminology:"
            )
            print(f"  top-1 {q['top1'] / n:.1%}  top-5 {q['top5'] / n:.1%}")
            print(f"  terminology: {q['terminology']}")
        else:
            print(f"corpus not found at {corpus}: suggestion quality skipped")
    (OUT / "terminology.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

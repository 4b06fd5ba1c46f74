"""DSTU2 -> R4 upgrade agreement: the corpus Synthea DSTU2 Bundles upgraded and compared field by field
with the same patients' R4 Bundles (identity, subject, codes, dates, values, status).

    uv run python bench/upgrade_agreement.py [--misses 5]

Prints the agreement table per resource type and field group, the overall rate over the fields both
releases carry, the R4-only fields the upgrade derives from HL7's map (counted apart), and (with
--misses) the fields that disagree most. Writes bench/out/upgrade_agreement.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from _child import OUT  # bench/ is on sys.path when a benchmark runs as a script

from pipelines.convert.fhir.upgrade.agreement import Agreement, compare_bundles


def corpus_pairs(corpus: Path) -> list[tuple[Path, Path]]:
    """(DSTU2 Bundle, R4 Bundle) per patient file present in both releases."""
    left, right = corpus / "fhir-dstu2" / "synthea-bundles", corpus / "fhir-r4" / "synthea-bundles"
    return [(p, right / p.name) for p in sorted(left.glob("*.json")) if (right / p.name).exists()]


def measure(corpus: Path) -> Agreement:
    agreement = Agreement()
    for dstu2, r4 in corpus_pairs(corpus):
        compare_bundles(json.loads(dstu2.read_bytes()), json.loads(r4.read_bytes()), agreement)
    return agreement


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--misses", type=int, default=0, help="list the N fields that disagree most")
    args = parser.parse_args()
    corpus = Path(os.environ.get("EHRLIFT_CORPUS", Path(__file__).resolve().parents[2] / "shared" / "corpus"))
    if not (corpus / "fhir-dstu2" / "synthea-bundles").is_dir():
        sys.exit(f"corpus not found at {corpus}: set EHRLIFT_CORPUS")
    agreement = measure(corpus)
    print(f"{'type':<20} {'fields':<9} {'both':>6} {'agree':>6} {'rate':>8}")
    for rtype, group, both, agree, rate in agreement.table():
        print(f"{rtype:<20} {group:<9} {both:>6} {agree:>6} {rate:>8.2%}")
    print(f"paired resources: {dict(sorted(agreement.paired.items()))}")
    print(f"unpaired DSTU2 resources: {dict(sorted(agreement.unpaired.items()))}")
    print(f"quarantined on upgrade: {dict(sorted(agreement.quarantined.items()))}")
    for key, both in sorted(agreement.derived_both.items()):
        agree = agreement.derived_agree[key]
        print(f"derived (no DSTU2 element; HL7's map vs the R4 writer): {'.'.join(key)} {agree}/{both}")
    print(f"overall agreement on fields both releases carry: {agreement.rate():.2%}")
    if args.misses:
        worst = sorted(agreement.both, key=lambda k: agreement.agree[k] - agreement.both[k])[: args.misses]
        for key in worst:
            print(f"  {'.'.join(key)}: {agreement.agree[key]}/{agreement.both[key]}")
    OUT.mkdir(parents=True, exist_ok=True)
    result = {
        "overall": agreement.rate(),
        "derived": {".".join(k): [agreement.derived_agree[k], v] for k, v in agreement.derived_both.items()},
        "table": [
            dict(zip(("type", "group", "both", "agree", "rate"), row, strict=True))
            for row in agreement.table()
        ],
    }
    (OUT / "upgrade_agreement.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Write the whole demo data set: bulk-export NDJSON and manifest, Bundles, stray files and the summary."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from pipelines.demo.ccda import CCDA_DIR, CcdaExport
from pipelines.demo.ccda import OWNED as CCDA_OWNED
from pipelines.demo.defects import TRUNCATED_TYPE, plan_defects
from pipelines.demo.dstu2 import DSTU2_DIR, write_dstu2_export
from pipelines.demo.dstu2 import OWNED as DSTU2_OWNED
from pipelines.demo.fhir_r4 import instant_utc, render_patient
from pipelines.demo.hl7v2 import HL7_DIR, Hl7v2Export
from pipelines.demo.hl7v2 import OWNED as HL7_OWNED
from pipelines.demo.identity import TRUTH_NAME, noisy_variant, truth_csv, truth_rows
from pipelines.demo.model import build_patient, iter_patients
from pipelines.demo.ndjson import NdjsonExport
from pipelines.demo.records import CODES, export_time, make_uid
from pipelines.demo.summary import SUMMARY_NAME, Defect, DemoSummary, FileSummary

# Sources sit under sources/ so the summary beside them is not itself migrated: `ehrlift run DIR/sources`.
SOURCES_DIR = "sources"
FHIR_DIR = f"{SOURCES_DIR}/fhir-r4"
BUNDLE_DIR = f"{SOURCES_DIR}/fhir-r4-bundles"
MISC_DIR = f"{SOURCES_DIR}/misc"
MANIFEST_NAME = "manifest.json"
# Bundle number -> (Bundle.type, indexes of the "bundle" cohort patients it carries); none is in the NDJSON.
BUNDLES: dict[int, tuple[str, tuple[int, ...]]] = {1: ("transaction", (0,)), 2: ("collection", (1, 2))}
BUNDLE_PATIENTS = sum(len(indexes) for _, indexes in BUNDLES.values())
_NOTES = (
    "Migration working notes - legacy extract\n"
    "\n"
    "The nightly extract job was re-run after the interface engine restart.\n"
    "Ask the lab team whether the old glucose codes were ever mapped.\n"
    "Nothing in this folder should be loaded before sign-off.\n"
)
# Only names this generator writes are removed before a run, so stale split files cannot linger.
_OWNED = {
    FHIR_DIR: re.compile(r"[A-Za-z]+\.\d{3}\.ndjson|manifest\.json"),
    BUNDLE_DIR: re.compile(r"bundle-\d{3}\.json"),
    MISC_DIR: re.compile(r"empty\.ndjson|notes\.txt"),
    HL7_DIR: re.compile(HL7_OWNED),
    CCDA_DIR: re.compile(CCDA_OWNED),
    DSTU2_DIR: re.compile(DSTU2_OWNED),
}


def generate_demo_data(
    out_dir: Path | str,
    patients: int = 200,
    seed: int = 7,
    hl7v2: bool = False,
    ccda: bool = False,
    dstu2: bool = False,
    identity: bool = False,
) -> DemoSummary:
    """Write a deterministic synthetic legacy export under out_dir and return (and save) its summary.

    The same (patients, seed) gives byte-identical files on any machine. Layout:
    sources/fhir-r4/Type.NNN.ndjson and manifest.json (a FHIR bulk-data export),
    sources/fhir-r4-bundles/bundle-NNN.json (patients not in the NDJSON), sources/misc/ (files that are
    not clinical data), and demo-summary.json beside sources/. With hl7v2, sources/hl7v2/ also holds the
    same patients as HL7 v2 archives (pipelines/demo/hl7v2.py); with ccda, sources/ccda/ holds a CCD per
    patient and a Discharge Summary after an inpatient stay (pipelines/demo/ccda.py). The FHIR files do
    not change. With dstu2, sources/fhir-dstu2/ holds a DSTU2 export of other patients
    (pipelines/demo/dstu2.py). With identity, the HL7 v2 and C-CDA sources record each person's
    demographics with realistic drift, some patients are look-alikes of another (twins, namesakes), and
    identity-truth.csv beside sources/ maps every source's patient identifier to the true person
    (pipelines/demo/identity.py).
    """
    if patients < 1:
        raise ValueError("patients must be at least 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _remove_previous_output(out)
    as_of = export_time(seed)
    transaction_time = instant_utc(as_of)

    hl7 = Hl7v2Export(out, seed) if hl7v2 else None
    cda = CcdaExport(out, seed) if ccda else None
    truth: list[tuple[str, ...]] = []
    with NdjsonExport(out / FHIR_DIR, FHIR_DIR, seed, plan_defects(seed, patients), TRUNCATED_TYPE) as export:
        for patient in iter_patients(seed, patients, identity=identity):
            for rtype, resource in render_patient(patient):
                export.write(rtype, resource)
            variants = {}
            if hl7 is not None:
                variants["hl7v2"] = noisy_variant(patient, "hl7v2", seed) if identity else patient
                hl7.write(variants["hl7v2"])
            if cda is not None:
                variants["ccda"] = (
                    noisy_variant(patient, "ccda", seed, outside_ids=True) if identity else patient
                )
                cda.write(variants["ccda"])
            if identity:
                truth.extend(truth_rows(patient, variants))
        ndjson_files, defects = export.close()
    hl7_files, hl7_defects = hl7.close() if hl7 is not None else ([], [])

    blank_lines = Counter(d.file for d in defects if d.reason == "blank_line")
    files = [*ndjson_files, _write_manifest(out, ndjson_files, blank_lines, transaction_time)]
    for number, (bundle_type, indexes) in BUNDLES.items():
        files.append(_write_bundle(out, seed, number, bundle_type, indexes, transaction_time))
    misc_files, misc_defects = _write_misc(out)
    files.extend(misc_files)
    files.extend(hl7_files)
    dstu2_files, dstu2_defects = write_dstu2_export(out, seed, patients) if dstu2 else ([], [])
    files.extend(dstu2_files)

    resources: Counter[str] = Counter()
    for f in files:
        resources.update(f.resources)
    if cda is not None:
        # C-CDA documents share entries (a discharge summary repeats the CCD's): count distinct resources.
        cda_files, cda_resources = cda.close()
        files.extend(cda_files)
        resources.update(cda_resources)
    summary = DemoSummary(
        seed=seed,
        patients=patients,
        bundle_patients=BUNDLE_PATIENTS,
        transaction_time=transaction_time,
        files=tuple(sorted(files, key=lambda f: f.path)),
        resources=dict(sorted(resources.items())),
        defects=tuple(
            sorted(
                [*defects, *misc_defects, *hl7_defects, *dstu2_defects], key=lambda d: (d.file, d.position)
            )
        ),
        messages=dict(sorted(sum((Counter(f.messages) for f in hl7_files), Counter()).items())),
    )
    (out / SUMMARY_NAME).write_bytes(orjson.dumps(summary.to_dict(), option=orjson.OPT_INDENT_2) + b"\n")
    if identity:
        (out / TRUTH_NAME).write_bytes(truth_csv(truth))
    return summary


def _remove_previous_output(out: Path) -> None:
    for sub, pattern in _OWNED.items():
        folder = out / sub
        if folder.is_dir():
            for path in folder.iterdir():
                if path.is_file() and pattern.fullmatch(path.name):
                    path.unlink()
    (out / SUMMARY_NAME).unlink(missing_ok=True)
    (out / TRUTH_NAME).unlink(missing_ok=True)


def _write(out: Path, rel: str, data: bytes, **fields: Any) -> FileSummary:
    path = out / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return FileSummary(path=rel, size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), **fields)


def _write_manifest(
    out: Path, ndjson_files: list[FileSummary], blank_lines: Counter[str], transaction_time: str
) -> FileSummary:
    """The bulk-data export manifest; count is each file's non-blank lines, as the server wrote them."""
    output = [
        {
            "type": f.resource_type,
            "url": f.path.rsplit("/", 1)[1],
            "count": (f.lines or 0) - blank_lines[f.path],
        }
        for f in sorted(ndjson_files, key=lambda f: f.path)
    ]
    manifest = {
        "transactionTime": transaction_time,
        "request": CODES["export"]["request"],
        "requiresAccessToken": False,
        "output": output,
        "error": [],
    }
    data = orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n"
    return _write(out, f"{FHIR_DIR}/{MANIFEST_NAME}", data, format="fhir-bulk-manifest", entries=len(output))


def _write_bundle(
    out: Path, seed: int, number: int, bundle_type: str, indexes: tuple[int, ...], transaction_time: str
) -> FileSummary:
    """A pretty-printed Bundle whose entries refer to each other by urn:uuid fullUrls."""
    rendered = [pair for index in indexes for pair in render_patient(build_patient(seed, index, "bundle"))]
    full_urls = {f"{rtype}/{res['id']}": f"urn:uuid:{res['id']}" for rtype, res in rendered}
    entries = []
    for rtype, res in rendered:
        entry: dict[str, Any] = {
            "fullUrl": f"urn:uuid:{res['id']}",
            "resource": _rewrite_references(res, full_urls),
        }
        if bundle_type == "transaction":
            entry["request"] = {"method": "POST", "url": rtype}
        entries.append(entry)
    last_updated = max(res["meta"]["lastUpdated"] for _, res in rendered)
    bundle = {
        "resourceType": "Bundle",
        "id": make_uid(seed, "Bundle", number),
        "meta": {"lastUpdated": last_updated},
        "type": bundle_type,
        "timestamp": transaction_time,
        "entry": entries,
    }
    data = orjson.dumps(bundle, option=orjson.OPT_INDENT_2) + b"\n"
    return _write(
        out,
        f"{BUNDLE_DIR}/bundle-{number:03d}.json",
        data,
        format="fhir-bundle",
        entries=len(entries),
        bundle_type=bundle_type,
        resources=dict(sorted(Counter(rtype for rtype, _ in rendered).items())),
    )


def _rewrite_references(value: Any, full_urls: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {
            k: full_urls.get(v, v)
            if k == "reference" and isinstance(v, str)
            else _rewrite_references(v, full_urls)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_rewrite_references(v, full_urls) for v in value]
    return value


def _write_misc(out: Path) -> tuple[list[FileSummary], list[Defect]]:
    """Files that land beside clinical data in real drops but are none: each must be quarantined whole."""
    empty = _write(out, f"{MISC_DIR}/empty.ndjson", b"", format="empty")
    notes = _write(out, f"{MISC_DIR}/notes.txt", _NOTES.encode(), format="text")
    defects = [
        Defect(empty.path, "file", 0, "quarantined", "empty_file", "zero-byte file with an NDJSON name"),
        Defect(
            notes.path, "file", 0, "quarantined", "unknown_format", "plain-text notes, not a clinical format"
        ),
    ]
    return [empty, notes], defects

"""The synthetic demo data set: deterministic bytes, valid resources, resolvable references, exact defects."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import orjson
import pytest

from pipelines.demo import DemoSummary, build_patient, generate_demo_data
from pipelines.demo import ndjson as ndjson_module
from pipelines.demo.fhir_r4 import render_patient

EXPECTED_DEFECTS = Counter(
    {
        ("quarantined", "invalid_json"): 2,  # a missing brace, and the truncated tail
        ("quarantined", "missing_resource_type"): 1,
        ("quarantined", "not_an_object"): 1,
        ("quarantined", "invalid_encoding"): 1,
        ("quarantined", "conflicting_duplicate"): 1,
        ("skipped", "duplicate_identical"): 1,
        ("skipped", "blank_line"): 1,
        ("quarantined", "empty_file"): 1,
        ("quarantined", "unknown_format"): 1,
    }
)


def all_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def split_lines(data: bytes) -> list[bytes]:
    """NDJSON lines as the ingest counts them: a final newline ends the last line, it does not start one."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


def defect_positions(summary: DemoSummary, path: str) -> set[int]:
    return {d.position for d in summary.defects if d.file == path and d.unit_kind == "ndjson_line"}


def valid_resources(root: Path, summary: DemoSummary) -> list[tuple[str, dict]]:
    """(file, resource) for every NDJSON line the summary does not list as a defect."""
    out = []
    for f in summary.files:
        if f.format != "fhir-ndjson":
            continue
        skip = defect_positions(summary, f.path)
        for number, line in enumerate(split_lines((root / f.path).read_bytes()), start=1):
            if number not in skip:
                out.append((f.path, orjson.loads(line)))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, DemoSummary]]:
    made = {}
    for name, patients, seed in [
        ("a", 40, 7),
        ("b", 40, 7),
        ("other_seed", 40, 8),
        ("n5", 5, 7),
        ("n20", 20, 7),
    ]:
        root = tmp_path_factory.mktemp(name)
        made[name] = (root, generate_demo_data(root, patients=patients, seed=seed))
    return made


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DemoSummary]:
    root = tmp_path_factory.mktemp("big")
    return root, generate_demo_data(root, patients=2_000, seed=7)


def test_same_seed_gives_identical_bytes_including_the_summary(runs):
    (root_a, summary_a), (root_b, summary_b) = runs["a"], runs["b"]
    files_a, files_b = all_files(root_a), all_files(root_b)
    assert files_a == files_b
    assert "demo-summary.json" in files_a
    assert summary_a == summary_b


def test_different_seed_gives_different_data(runs):
    (root_a, summary_a), (root_c, summary_c) = runs["a"], runs["other_seed"]
    assert summary_a.transaction_time != summary_c.transaction_time
    a, c = all_files(root_a), all_files(root_c)
    for path in (
        "sources/fhir-r4/Patient.000.ndjson",
        "sources/fhir-r4/Observation.000.ndjson",
        "sources/fhir-r4-bundles/bundle-001.json",
    ):
        assert a[path] != c[path]
    ids_a = {r["id"] for _, r in valid_resources(root_a, summary_a)}
    ids_c = {r["id"] for _, r in valid_resources(root_c, summary_c)}
    assert not ids_a & ids_c


def test_patient_k_is_the_same_whatever_the_patient_count(runs):
    (root5, summary5), (root20, summary20) = runs["n5"], runs["n20"]
    small = {r["id"]: r for _, r in valid_resources(root5, summary5)}
    large = {r["id"]: r for _, r in valid_resources(root20, summary20)}
    assert sum(1 for r in small.values() if r["resourceType"] == "Patient") == 5
    for rid, resource in small.items():
        assert large[rid] == resource
    for k in range(5):
        assert build_patient(7, k) == build_patient(7, k)
        assert all(r["id"] in small for _, r in render_patient(build_patient(7, k)))


def test_summary_file_matches_the_returned_summary(runs):
    root, summary = runs["a"]
    saved = orjson.loads((root / "demo-summary.json").read_bytes())
    assert saved == summary.to_dict()
    assert DemoSummary.from_dict(saved) == summary
    written = all_files(root)
    listed = {f.path for f in summary.files}
    assert listed == set(written) - {"demo-summary.json"}
    for f in summary.files:
        assert f.size_bytes == len(written[f.path])
        assert f.sha256 == hashlib.sha256(written[f.path]).hexdigest()


def test_every_valid_line_is_a_resource_of_its_file_type(runs):
    root, summary = runs["a"]
    per_file: Counter[str] = Counter()
    ids: Counter[tuple[str, str]] = Counter()
    for path, resource in valid_resources(root, summary):
        expected_type = path.rsplit("/", 1)[1].split(".")[0]
        assert resource["resourceType"] == expected_type
        assert isinstance(resource["id"], str) and len(resource["id"]) == 36
        assert resource["meta"]["lastUpdated"] <= summary.transaction_time
        per_file[path] += 1
        ids[(resource["resourceType"], resource["id"])] += 1
    for f in summary.files:
        if f.format == "fhir-ndjson":
            assert per_file[f.path] == sum(f.resources.values())
            assert f.lines == per_file[f.path] + len(defect_positions(summary, f.path))
    conflicting = sum(1 for d in summary.defects if d.reason == "conflicting_duplicate")
    assert sum(ids.values()) == len(ids)  # the earlier copy of a conflicting duplicate is the only one valid
    assert conflicting == 1


def test_resource_counts_add_up(runs):
    root, summary = runs["a"]
    counted = Counter(r["resourceType"] for _, r in valid_resources(root, summary))
    for f in summary.files:
        if f.format == "fhir-bundle":
            counted.update(
                e["resource"]["resourceType"] for e in orjson.loads((root / f.path).read_bytes())["entry"]
            )
    assert counted == Counter(summary.resources)
    assert summary.total_resources == sum(counted.values())
    assert summary.resources["Patient"] == summary.patients + summary.bundle_patients


def test_references_resolve_within_the_export(runs):
    root, summary = runs["a"]
    resources = valid_resources(root, summary)
    known = {f"{r['resourceType']}/{r['id']}" for _, r in resources}
    checked = 0
    for _, resource in resources:
        for ref in references(resource):
            assert ref in known, ref
            checked += 1
    assert checked > len(resources)


def references(value) -> list[str]:
    if isinstance(value, dict):
        found = [value["reference"]] if isinstance(value.get("reference"), str) else []
        return found + [r for k, v in value.items() if k != "reference" for r in references(v)]
    if isinstance(value, list):
        return [r for v in value for r in references(v)]
    return []


def test_defects_are_exactly_where_the_summary_says(runs):
    for root, summary in runs.values():
        assert Counter((d.outcome, d.reason) for d in summary.defects) == EXPECTED_DEFECTS
        for defect in summary.defects:
            data = (root / defect.file).read_bytes()
            if defect.unit_kind == "file":
                assert defect.position == 0
                if defect.reason == "empty_file":
                    assert data == b""
                else:
                    text = data.decode("utf-8")
                    assert text.strip() and text[0] not in "{[<" and not text.startswith("MSH")
                continue
            lines = split_lines(data)
            line = lines[defect.position - 1]
            check_defect_line(defect.reason, line, lines, defect, data)


def check_defect_line(reason, line, lines, defect, data):
    if reason == "blank_line":
        assert line == b""
        assert 1 < defect.position < len(lines)
    elif reason == "invalid_encoding":
        with pytest.raises(UnicodeDecodeError):
            line.decode("utf-8")
        assert b"M\xfcller" in line
    elif reason == "invalid_json":
        line.decode("utf-8")
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(line)
        if defect.position == len(lines) and not data.endswith(b"\n"):
            assert line.startswith(b'{"resourceType":')  # the truncated tail
    elif reason == "missing_resource_type":
        value = orjson.loads(line)
        assert isinstance(value, dict) and "resourceType" not in value and "id" in value
    elif reason == "not_an_object":
        assert not isinstance(orjson.loads(line), dict)
    elif reason == "duplicate_identical":
        assert defect.duplicate_of < defect.position
        assert line == lines[defect.duplicate_of - 1]
    elif reason == "conflicting_duplicate":
        assert defect.duplicate_of < defect.position
        earlier, later = orjson.loads(lines[defect.duplicate_of - 1]), orjson.loads(line)
        assert (earlier["resourceType"], earlier["id"]) == (later["resourceType"], later["id"])
        assert earlier["meta"]["lastUpdated"] == later["meta"]["lastUpdated"]
        assert earlier != later
    else:
        raise AssertionError(f"unexpected reason {reason}")


def test_truncated_tail_ends_one_file_without_a_newline(runs):
    root, summary = runs["a"]
    ndjson = [f for f in summary.files if f.format == "fhir-ndjson"]
    unterminated = [f for f in ndjson if not (root / f.path).read_bytes().endswith(b"\n")]
    assert len(unterminated) == 1
    tail = [
        d for d in summary.defects if d.file == unterminated[0].path and d.position == unterminated[0].lines
    ]
    assert [(d.outcome, d.reason) for d in tail] == [("quarantined", "invalid_json")]


def test_manifest_lists_every_ndjson_file_with_counts(runs):
    root, summary = runs["a"]
    manifest = orjson.loads((root / "sources/fhir-r4/manifest.json").read_bytes())
    assert manifest["transactionTime"] == summary.transaction_time
    assert manifest["requiresAccessToken"] is False
    assert manifest["request"].startswith("https://")
    assert manifest["error"] == []
    on_disk = sorted(p.name for p in (root / "sources" / "fhir-r4").glob("*.ndjson"))
    assert sorted(o["url"] for o in manifest["output"]) == on_disk
    for item in manifest["output"]:
        lines = split_lines((root / "sources" / "fhir-r4" / item["url"]).read_bytes())
        assert item["type"] == item["url"].split(".")[0]
        assert item["count"] == sum(1 for line in lines if line)


def test_large_families_split_into_numbered_files(tmp_path, monkeypatch):
    monkeypatch.setattr(ndjson_module, "MAX_LINES", 50)
    first = generate_demo_data(tmp_path, patients=30, seed=11)
    observations = sorted(f.path for f in first.files if f.resource_type == "Observation")
    assert len(observations) > 2
    assert observations[:2] == [
        "sources/fhir-r4/Observation.000.ndjson",
        "sources/fhir-r4/Observation.001.ndjson",
    ]
    assert all(f.lines <= 50 for f in first.files if f.format == "fhir-ndjson")
    last = (tmp_path / observations[-1]).read_bytes()
    assert not last.endswith(b"\n")
    manifest = orjson.loads((tmp_path / "sources/fhir-r4/manifest.json").read_bytes())
    assert len(manifest["output"]) == sum(1 for f in first.files if f.format == "fhir-ndjson")
    monkeypatch.undo()
    # A smaller run into the same folder leaves no stale split files behind.
    second = generate_demo_data(tmp_path, patients=3, seed=11)
    on_disk = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert on_disk == {f.path for f in second.files} | {"demo-summary.json"}


def test_bundles_hold_other_patients_linked_by_urn_uuid(runs):
    root, summary = runs["a"]
    ndjson_ids = {r["id"] for _, r in valid_resources(root, summary)}
    ndjson_mrns = {
        r["identifier"][0]["value"]
        for _, r in valid_resources(root, summary)
        if r["resourceType"] == "Patient"
    }
    bundles = [f for f in summary.files if f.format == "fhir-bundle"]
    assert {b.bundle_type for b in bundles} == {"transaction", "collection"}
    for f in bundles:
        raw = (root / f.path).read_bytes()
        assert raw.count(b"\n") > 100  # pretty-printed
        bundle = orjson.loads(raw)
        assert bundle["type"] == f.bundle_type and len(bundle["entry"]) == f.entries
        full_urls = {e["fullUrl"] for e in bundle["entry"]}
        for entry in bundle["entry"]:
            resource = entry["resource"]
            assert entry["fullUrl"] == f"urn:uuid:{resource['id']}"
            assert resource["id"] not in ndjson_ids
            if resource["resourceType"] == "Patient":
                assert resource["identifier"][0]["value"] not in ndjson_mrns
            if f.bundle_type == "transaction":
                assert entry["request"] == {"method": "POST", "url": resource["resourceType"]}
            else:
                assert "request" not in entry
            for ref in references(resource):
                assert ref in full_urls


def test_two_thousand_patients_make_over_twenty_thousand_resources(big):
    root, summary = big
    assert summary.patients == 2_000
    assert summary.total_resources >= 20_000
    assert Counter((d.outcome, d.reason) for d in summary.defects) == EXPECTED_DEFECTS
    counted = Counter(r["resourceType"] for _, r in valid_resources(root, summary))
    assert sum(counted.values()) == sum(
        n for f in summary.files if f.format == "fhir-ndjson" for n in f.resources.values()
    )


def test_legacy_coding_variety_is_present(big):
    root, summary = big
    resources = [r for _, r in valid_resources(root, summary)]
    labs = [
        r
        for r in resources
        if r["resourceType"] == "Observation" and r["category"][0]["coding"][0]["code"] == "laboratory"
    ]
    systems = Counter(tuple(c["system"] for c in r["code"]["coding"]) for r in labs)
    assert systems[("http://legacy-lab.example.org/codes",)] > 0
    assert systems[("http://legacy-lab.example.org/codes", "http://loinc.org")] > 0
    assert systems[("http://loinc.org",)] > 0
    meds = [r for r in resources if r["resourceType"] == "MedicationRequest"]
    med_systems = {tuple(c["system"] for c in r["medicationCodeableConcept"]["coding"]) for r in meds}
    assert ("http://hl7.org/fhir/sid/ndc",) in med_systems
    assert ("http://www.nlm.nih.gov/research/umls/rxnorm",) in med_systems
    conditions = [r for r in resources if r["resourceType"] == "Condition"]
    assert any(
        c["system"] == "http://hl7.org/fhir/sid/icd-10-cm" for r in conditions for c in r["code"]["coding"]
    )
    shots = [r for r in resources if r["resourceType"] == "Immunization"]
    assert any(r["status"] == "not-done" and "statusReason" in r for r in shots)
    vitals = [r for r in resources if r["resourceType"] == "Observation" and "component" in r]
    assert vitals and all(r["code"]["coding"][0]["code"] == "85354-9" for r in vitals)
    classes = {r["class"]["code"] for r in resources if r["resourceType"] == "Encounter"}
    assert classes == {"AMB", "EMER", "IMP"}
    assert {r["resourceType"] for r in resources} >= {
        "Patient",
        "Encounter",
        "Condition",
        "Observation",
        "DiagnosticReport",
        "MedicationRequest",
        "AllergyIntolerance",
        "Immunization",
        "Procedure",
    }


def test_rejects_an_empty_run(tmp_path):
    with pytest.raises(ValueError):
        generate_demo_data(tmp_path, patients=0)

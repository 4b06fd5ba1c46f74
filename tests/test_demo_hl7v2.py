"""The demo HL7 v2 archives: deterministic bytes, parseable messages, exact defects, the same people."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import hl7
import orjson
import pytest

from pipelines import formats
from pipelines.demo import DemoSummary, generate_demo_data
from pipelines.demo.hl7v2 import HL7_DIR, STREAMS
from pipelines.run import run_pipeline

EXPECTED_HL7_DEFECTS = Counter(
    {
        ("hl7_message", "quarantined", "hl7_malformed_msh"): 1,
        ("hl7_message", "quarantined", "hl7_truncated"): 1,
        ("hl7_message", "quarantined", "hl7_bad_delimiters"): 1,
        ("hl7_message", "quarantined", "hl7_unsupported_message_type"): 1,
        ("hl7_fragment", "quarantined", "hl7_not_a_message"): 1,
        ("hl7_message", "converted", None): 1,
    }
)


def units(data: bytes, framing: str) -> list[bytes]:
    """A file's units as the summary counts them: line-feed separated, or one per MLLP frame."""
    if framing == "mllp":
        frames = data.split(b"\x1c\r")
        assert frames[-1] == b""
        assert all(f.startswith(b"\x0b") for f in frames[:-1])
        return [f[1:] for f in frames[:-1]]
    parts = data.split(b"\n")
    if parts[-1] == b"":
        parts.pop()
    return parts


def parse(unit: bytes) -> hl7.Message:
    charset = "latin-1" if b"|8859/1" in unit.split(b"\r", 1)[0] else "utf-8"
    return hl7.parse(unit.decode(charset))


def hl7_files(summary: DemoSummary):
    return [f for f in summary.files if f.format == "hl7v2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, DemoSummary]]:
    made = {}
    for name, patients, seed, with_hl7 in [
        ("a", 60, 7, True),
        ("b", 60, 7, True),
        ("fhir_only", 60, 7, False),
        ("other_seed", 60, 8, True),
        ("n5", 5, 7, True),
        ("n1", 1, 3, True),
    ]:
        root = tmp_path_factory.mktemp(name)
        made[name] = (root, generate_demo_data(root, patients=patients, seed=seed, hl7v2=with_hl7))
    return made


def test_same_seed_gives_identical_archives_and_summary(runs):
    (root_a, summary_a), (root_b, summary_b) = runs["a"], runs["b"]
    for f in hl7_files(summary_a):
        assert (root_a / f.path).read_bytes() == (root_b / f.path).read_bytes()
    assert (root_a / "demo-summary.json").read_bytes() == (root_b / "demo-summary.json").read_bytes()
    assert summary_a == summary_b
    assert {f.path.rsplit("/", 1)[1] for f in hl7_files(summary_a)} == set(STREAMS)
    assert DemoSummary.from_dict(orjson.loads((root_a / "demo-summary.json").read_bytes())) == summary_a


def test_other_seed_gives_other_archives(runs):
    (root_a, summary_a), (root_c, _) = runs["a"], runs["other_seed"]
    for f in hl7_files(summary_a):
        assert (root_a / f.path).read_bytes() != (root_c / f.path).read_bytes()


def test_fhir_export_is_unchanged_by_the_archives(runs):
    (root_a, summary_a), (root_f, summary_f) = runs["a"], runs["fhir_only"]
    fhir = list(summary_f.files)
    assert [f for f in summary_a.files if f.format != "hl7v2"] == fhir
    for f in fhir:
        assert (root_a / f.path).read_bytes() == (root_f / f.path).read_bytes()
    assert summary_a.resources == summary_f.resources
    assert [d for d in summary_a.defects if not d.unit_kind.startswith("hl7_")] == list(summary_f.defects)
    assert not (root_f / HL7_DIR).exists() and not summary_f.messages


def test_every_message_parses_except_the_deliberate_defects(runs):
    for name in ("a", "n1", "n5"):
        root, summary = runs[name]
        defects = {(d.file, d.position) for d in summary.defects}
        for f in hl7_files(summary):
            data = (root / f.path).read_bytes()
            assert formats.detect(root / f.path) == (formats.HL7V2, None)
            found = units(data, f.framing)
            assert len(found) == f.units
            types: Counter[str] = Counter()
            for position, unit in enumerate(found, start=1):
                if (f.path, position) in defects and b"|8859/1" not in unit[:400]:
                    continue
                assert b"\n" not in unit and unit.endswith(b"\r")
                if unit[:3] in (b"FHS", b"BHS", b"BTS", b"FTS"):
                    assert f.framing == "batch"
                    continue
                message = parse(unit)
                msh9 = str(message.segment("MSH")[9])
                types["^".join(msh9.split("^")[:2])] += 1
                assert str(message.segment("MSH")[12]) == "2.5.1"
                assert str(message.segment("PID")[3][0][0])  # every message names its patient
            assert types == Counter(f.messages)


def test_defects_are_exactly_where_the_summary_says(runs):
    for root, summary in runs.values():
        found = [d for d in summary.defects if d.unit_kind.startswith("hl7_")]
        if not hl7_files(summary):
            assert not found
            continue
        assert Counter((d.unit_kind, d.outcome, d.reason) for d in found) == EXPECTED_HL7_DEFECTS
        framing = {f.path: f.framing for f in summary.files}
        for defect in found:
            data = (root / defect.file).read_bytes()
            all_units = units(data, framing[defect.file])
            check_defect(defect, all_units[defect.position - 1], all_units, data)


def check_defect(defect, unit: bytes, all_units: list[bytes], data: bytes) -> None:
    if defect.reason == "hl7_not_a_message":
        assert 1 < defect.position < len(all_units)
        assert all_units[defect.position - 2].startswith(b"MSH|")
        assert all_units[defect.position].startswith(b"MSH|")
        assert not unit.startswith(b"MSH") and b"\r" not in unit
        with pytest.raises(UnicodeDecodeError):
            unit.decode("utf-8")
    elif defect.reason == "hl7_truncated":
        assert defect.position == len(all_units)
        assert not data.endswith(b"\n") and not unit.endswith(b"\r")
        assert unit.startswith(b"MSH|") and unit.endswith(b"\rOB")
    elif defect.reason == "hl7_malformed_msh":
        assert str(parse(unit).segment("MSH")[9]) == ""
    elif defect.reason == "hl7_bad_delimiters":
        assert unit.startswith(b"MSH|^^\\&|")
    elif defect.reason == "hl7_unsupported_message_type":
        assert str(parse(unit).segment("MSH")[9]) == "ZZZ^Z01^ZZZ_Z01"
    elif defect.outcome == "converted":
        with pytest.raises(UnicodeDecodeError):
            unit.decode("utf-8")
        message = hl7.parse(unit.decode("latin-1"))
        assert str(message.segment("MSH")[18]) == "8859/1"
        assert str(message.segment("PID")[5][0][0]) == "Müller"
        assert str(message.segment("MSH")[9]) == "ADT^A04^ADT_A01"
    else:
        raise AssertionError(f"unexpected defect {defect}")


def test_batch_envelope_wraps_the_charges(runs):
    root, summary = runs["a"]
    (batch,) = [f for f in hl7_files(summary) if f.framing == "batch"]
    found = units((root / batch.path).read_bytes(), "batch")
    assert [u[:3] for u in (found[0], found[1], found[-2], found[-1])] == [b"FHS", b"BHS", b"BTS", b"FTS"]
    assert found[-2] == f"BTS|{sum(batch.messages.values())}\r".encode()
    assert len(found) == batch.units == sum(batch.messages.values()) + 4
    # python-hl7 reads the whole envelope once the line feeds between units are gone.
    parsed = hl7.parse_file((root / batch.path).read_bytes().replace(b"\r\n", b"\r").decode())
    assert len(parsed) == 1 and len(parsed[0]) == sum(batch.messages.values())


def test_the_same_patients_as_the_fhir_export(runs):
    root, summary = runs["a"]
    fhir_mrns = set()
    for f in summary.files:
        if f.resource_type == "Patient":
            for line in (root / f.path).read_bytes().splitlines():
                try:
                    resource = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(resource, dict) and resource.get("resourceType") == "Patient":
                    fhir_mrns.add(resource["identifier"][0]["value"])
    defects = {(d.file, d.position) for d in summary.defects}
    adt = f"{HL7_DIR}/adt.hl7"
    adt_mrns = set()
    for position, unit in enumerate(units((root / adt).read_bytes(), "plain"), start=1):
        if (adt, position) not in defects:
            adt_mrns.add(str(parse(unit).segment("PID")[3][0][0]))
    # Every patient has a visit, so an A04; the defect messages' patients are in neither export.
    assert len(adt_mrns) == summary.patients
    assert adt_mrns == fhir_mrns


def test_patient_k_is_the_same_whatever_the_patient_count(runs):
    (root5, summary5), (root60, _) = runs["n5"], runs["a"]
    defects = {(d.file, d.position) for d in summary5.defects}
    for f in hl7_files(summary5):
        small = units((root5 / f.path).read_bytes(), f.framing)
        large = set(units((root60 / f.path).read_bytes(), f.framing))
        kept = [u for n, u in enumerate(small, start=1) if (f.path, n) not in defects and u[:3] == b"MSH"]
        assert all(u in large for u in kept)


def test_lab_results_carry_local_codes_and_loinc_only_sometimes(runs):
    root, _ = runs["a"]
    codings: Counter[str] = Counter()
    for unit in units((root / HL7_DIR / "oru.hl7").read_bytes(), "plain")[:-1]:
        for obx in parse(unit).segments("OBX"):
            code = obx[3][0]
            assert str(code[2]) == "99LAB" and str(code[0])
            codings["loinc" if len(code) > 3 and str(code[5]) == "LN" else "local"] += 1
    assert codings["loinc"] > 0 and codings["local"] > 0


def test_a_run_without_archives_removes_earlier_ones(tmp_path):
    generate_demo_data(tmp_path, patients=3, seed=5, hl7v2=True)
    assert (tmp_path / HL7_DIR / "oru-mllp.bin").exists()
    second = generate_demo_data(tmp_path, patients=3, seed=5)
    on_disk = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert on_disk == {f.path for f in second.files} | {"demo-summary.json"}
    assert "messages" not in orjson.loads((tmp_path / "demo-summary.json").read_bytes())


def test_the_pipeline_ledger_matches_the_summary(tmp_path, make_config, warehouse):
    demo = generate_demo_data(tmp_path / "demo", patients=30, seed=11, hl7v2=True)
    run_pipeline(make_config(tmp_path / "demo" / HL7_DIR, source_system="demo"))
    con = warehouse()
    by_name = dict(con.execute("SELECT original_name, file_sha256 FROM ops.files").fetchall())
    expected = {(d.file, d.position): (d.unit_kind, d.outcome, d.reason) for d in demo.defects}
    for f in hl7_files(demo):
        rows = con.execute(
            "SELECT unit_position, unit_kind, outcome, reason FROM ops.ledger WHERE file_sha256 = ? "
            "ORDER BY unit_position",
            [by_name[f.path.rsplit("/", 1)[1]]],
        ).fetchall()
        assert [r[0] for r in rows] == list(range(1, f.units + 1))
        for position, unit_kind, outcome, reason in rows:
            if (f.path, position) in expected:
                assert (unit_kind, outcome, reason) == expected[(f.path, position)]
            elif unit_kind == "hl7_message":
                assert outcome != "quarantined", (f.path, position, reason)
        messages = sum(1 for r in rows if r[1] == "hl7_message" and r[2] != "quarantined")
        assert messages == sum(f.messages.values())

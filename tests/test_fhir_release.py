"""Declared FHIR releases (--fhir-release, .fhir-release.csv); each unit checked against its release."""

from __future__ import annotations

import duckdb
import orjson
import pytest

from pipelines import fhir_versions
from pipelines.cli import _parser as build_parser
from pipelines.common.config import RunConfig
from pipelines.common.errors import ConfigError
from pipelines.common.reasons import check_reason
from pipelines.fhir_release import DECLARATION_FILE
from pipelines.fhir_structure import ambiguity
from pipelines.run import run_pipeline
from tests.conftest import resource, write_json, write_ndjson

PATIENT = {"reference": "Patient/p1"}
R4_CONDITION = resource("Condition", None, subject=PATIENT, clinicalStatus={"coding": [{"code": "active"}]})
DSTU2_ENCOUNTER = resource("Encounter", "e1", status="finished", patient=PATIENT, **{"class": "inpatient"})
STU3_REQUEST = resource(
    "MedicationRequest", "mr1", status="active", intent="order", subject=PATIENT, requester={"agent": PATIENT}
)
R4_PROFILE = {"profile": ["http://hl7.org/fhir/R4/StructureDefinition/Patient"]}


def _r4_observation(n: int) -> dict:
    return resource("Observation", f"o{n}", status="final", subject=PATIENT, code={"text": "x"})


def _ledger(con) -> list[tuple]:
    return con.execute(
        "SELECT l.unit_position, l.outcome, coalesce(l.reason, ''), q.pointer, q.message FROM ops.ledger l "
        "LEFT JOIN ops.quarantine q USING (run_id, file_sha256, unit_position) "
        "WHERE l.outcome <> 'converted' ORDER BY l.unit_position"
    ).fetchall()


def _sha(con) -> str:
    return con.execute("SELECT file_sha256 FROM ops.files").fetchone()[0]


# --- whole-file checking ---------------------------------------------------------------------------------


def test_an_r4_file_whose_500th_line_is_dstu2_quarantines_that_line(tmp_path, make_config, warehouse):
    lines = [_r4_observation(n) for n in range(1, 1001)]
    lines[499] = DSTU2_ENCOUNTER
    lines[799] = resource("MedicationOrder", "mo1", status="active", patient=PATIENT)
    path = write_ndjson(tmp_path / "in" / "export.ndjson", *lines)
    run = run_pipeline(make_config(path))
    con = warehouse()
    assert run.reconciles
    assert con.execute("SELECT format FROM ops.files").fetchone() == ("fhir-ndjson",)  # R4 fast path
    sha = _sha(con)
    offset = sum(len(orjson.dumps(x)) + 1 for x in lines[:499])
    assert _ledger(con) == [
        (
            500,
            "quarantined",
            "fhir_version_mismatch",
            f"landing/{sha}#ndjson_line=500@{offset}+{len(orjson.dumps(DSTU2_ENCOUNTER)) + 1}",
            "Encounter shape can only be DSTU2 (1.0.2); its file is R4 (4.0.x)",
        ),
        (
            800,
            "quarantined",
            "fhir_version_mismatch",
            f"landing/{sha}#ndjson_line=800@{offset + sum(len(orjson.dumps(x)) + 1 for x in lines[499:799])}"
            f"+{len(orjson.dumps(lines[799])) + 1}",
            "resource type MedicationOrder does not exist in R4 (4.0.x); its file is R4 (4.0.x)",
        ),
    ]
    assert con.execute("SELECT count(*) FROM fhir.Observation").fetchone() == (998,)


def test_a_bundle_whose_late_entry_is_stu3_quarantines_that_entry(tmp_path, make_config, warehouse):
    entries = [{"resource": _r4_observation(n)} for n in range(1, 301)]
    entries[239] = {"resource": STU3_REQUEST}
    path = write_json(
        tmp_path / "in" / "bundle.json", resource("Bundle", "b", type="collection", entry=entries)
    )
    run = run_pipeline(make_config(path))
    con = warehouse()
    assert run.reconciles
    assert con.execute("SELECT format FROM ops.files").fetchone() == ("fhir-bundle",)
    assert _ledger(con) == [
        (
            240,
            "quarantined",
            "fhir_version_mismatch",
            f"landing/{_sha(con)}#bundle_entry=240",
            "MedicationRequest shape can only be STU3 (3.0.x); its file is R4 (4.0.x)",
        )
    ]


def test_r4_lines_the_text_check_flags_by_a_false_alarm_still_convert(tmp_path, make_config, warehouse):
    # "patient" inside a nested object, "fhirVersion" in a string: the text hint sends them to the full
    # check, which finds them R4; the bytes stored are those of the SQL path.
    lines = [
        resource("Encounter", "e2", status="finished", subject=PATIENT, hospitalization={"patient": "x"}),
        resource("Observation", "o9", status="final", code={"text": '"fhirVersion": 1'}),
    ]
    path = write_ndjson(tmp_path / "in" / "export.ndjson", *lines)
    run = run_pipeline(make_config(path))
    con = warehouse()
    assert run.reconciles and _ledger(con) == []


def test_the_text_check_finds_every_official_dstu2_example_r4_cannot_hold(
    corpus, tmp_path, make_config, warehouse
):
    # The examples as one NDJSON file declared R4: each line the full check rejects must be quarantined,
    # which it is only when the SQL text check sent it there.
    examples = sorted((corpus / "fhir-dstu2" / "dstu2-examples" / "dist" / "examples").glob("*.json"))
    objs = [orjson.loads(p.read_bytes()) for p in examples]
    objs = [o for o in objs if o.get("resourceType") != "Bundle"]
    expected = {
        n
        for n, o in enumerate(objs, 1)
        if isinstance(o.get("resourceType"), str) and fhir_versions.conflict(o, "4.0") is not None
    }
    path = write_ndjson(tmp_path / "in" / "examples.ndjson", *objs)
    run_pipeline(make_config(path, fhir_release="r4"))
    con = warehouse()
    rejected = {
        pos
        for (pos,) in con.execute(
            "SELECT unit_position FROM ops.ledger WHERE reason = 'declared_release_contradicted'"
        ).fetchall()
    }
    assert rejected == expected
    assert len(expected) > 100


# --- declared releases -----------------------------------------------------------------------------------


# Files read as R4, and their units converted as R4.
_LOADED_AS_R4 = """
    SELECT count(DISTINCT file_sha256), count(*) FILTER (WHERE l.outcome = 'converted')
    FROM ops.ledger l JOIN ops.files f USING (file_sha256)
    LEFT JOIN ops.fhir_release_declarations d USING (run_id, file_sha256)
    WHERE coalesce(d.format, f.format) IN ('fhir-ndjson', 'fhir-resource', 'fhir-bundle')
"""


# Units of one-line files read as NDJSON (release not named by the file) by outcome or reason.
_ONE_LINE_FILES = """
    SELECT coalesce(l.reason, l.outcome), count(*) FROM ops.ledger l JOIN ops.files f USING (file_sha256)
    WHERE f.format = 'fhir-ndjson' GROUP BY 1
"""


def test_official_dstu2_examples_declared_dstu2(corpus, tmp_path, make_config, warehouse):
    folder = corpus / "fhir-dstu2" / "dstu2-examples" / "dist" / "examples"
    auto = run_pipeline(make_config(folder, warehouse=tmp_path / "auto" / "warehouse.duckdb"))
    assert auto.reconciles
    with duckdb.connect(str(tmp_path / "auto" / "warehouse.duckdb"), read_only=True) as auto_con:
        loaded_as_r4_auto = auto_con.execute(_LOADED_AS_R4).fetchone()
        one_line = dict(auto_con.execute(_ONE_LINE_FILES).fetchall())
        kept_as_r4 = [
            orjson.loads(text)
            for (table,) in auto_con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'fhir'"
            ).fetchall()
            for (text,) in auto_con.execute(
                f'SELECT r.resource FROM fhir."{table}" r JOIN ops.files f USING (file_sha256) '
                "WHERE f.format = 'fhir-ndjson'"
            ).fetchall()
        ]
    # Most examples are one compact line (NDJSON of one line): under auto each is a single-resource file,
    # read as R4 only when valid R4 by the R4 structure, else quarantined for a declaration.
    print(f"\nDSTU2 examples of one compact line under auto, units by outcome: {one_line}")
    assert one_line == {"converted": 36, "fhir_release_ambiguous": 113, "invalid_resource_type": 1}
    assert len(kept_as_r4) == 36 and all(ambiguity(obj) is None for obj in kept_as_r4)
    run = run_pipeline(make_config(folder, fhir_release="dstu2"))
    con = warehouse()
    loaded_as_r4 = con.execute(_LOADED_AS_R4).fetchone()
    print(
        f"\nDSTU2 examples (files, units converted) read as R4: auto {loaded_as_r4_auto}, "
        f"dstu2 {loaded_as_r4}"
    )
    assert loaded_as_r4_auto[0] >= 150 and loaded_as_r4 == (0, 0)
    assert run.reconciles
    read_as = dict(
        con.execute(
            "SELECT coalesce(d.format, f.format), count(*) FROM ops.files f "
            "LEFT JOIN ops.fhir_release_declarations d USING (file_sha256) GROUP BY 1"
        ).fetchall()
    )
    outcomes = dict(con.execute("SELECT outcome, count(*) FROM ops.ledger GROUP BY 1").fetchall())
    reasons = dict(
        con.execute(
            "SELECT reason, count(*) FROM ops.ledger WHERE outcome = 'quarantined' GROUP BY 1"
        ).fetchall()
    )
    print(f"\nDSTU2 examples declared dstu2: files by format {read_as}; units {outcomes}; reasons {reasons}")
    r4_formats = {"fhir-ndjson", "fhir-bundle", "fhir-resource", "fhir-ndjson-mixed", "fhir-bundle-mixed"}
    assert not set(read_as) & r4_formats  # none loaded as R4
    # An OperationOutcome example reads as a bulk export's error file, whatever the release: skipped.
    assert set(read_as) <= {
        "fhir-resource-dstu2",
        "fhir-bundle-dstu2",
        "fhir-ndjson-dstu2",
        "fhir-export-errors",
    }
    assert sum(read_as.values()) == 322
    assert (
        con.execute(
            "SELECT count(*) FROM ops.fhir_release_declarations WHERE declared_by = 'run'"
        ).fetchone()[0]
        == sum(read_as.values()) - read_as["fhir-export-errors"]
    )
    for reason in reasons:
        check_reason(reason, "quarantined")
    assert "converter_error" not in reasons
    assert outcomes["converted"] >= 180


def test_a_declared_release_quarantines_units_whose_content_contradicts_it(tmp_path, make_config, warehouse):
    lines = [
        resource("Patient", "p1", name=[{"family": ["Doe"]}]),
        resource("Patient", "p2", meta=R4_PROFILE),
        resource("MedicationRequest", "mr1", status="active"),
        resource("Condition", "c1", subject=PATIENT, recordedDate="2020"),
        resource("Observation", "o1", status="final", code={"text": "x"}),
    ]
    path = write_ndjson(tmp_path / "in" / "old.ndjson", *lines)
    run = run_pipeline(make_config(path, fhir_release="dstu2"))
    con = warehouse()
    assert run.reconciles
    assert [(p, o, r, m) for p, o, r, _, m in _ledger(con)] == [
        (
            2,
            "quarantined",
            "declared_release_contradicted",
            "Patient names R4 (4.0.x) in its fhirVersion or profile; the file is declared DSTU2 (1.0.2)",
        ),
        (
            3,
            "quarantined",
            "declared_release_contradicted",
            "resource type MedicationRequest does not exist in DSTU2 (1.0.2); "
            "the file is declared DSTU2 (1.0.2)",
        ),
        (
            4,
            "quarantined",
            "declared_release_contradicted",
            "Condition shape can only be R4 (4.0.x); the file is declared DSTU2 (1.0.2)",
        ),
    ]


def test_declared_r4_quarantines_older_lines_on_the_fast_path(tmp_path, make_config, warehouse):
    path = write_ndjson(tmp_path / "in" / "r4.ndjson", R4_CONDITION, DSTU2_ENCOUNTER, _r4_observation(1))
    run_pipeline(make_config(path, fhir_release="r4"))
    con = warehouse()
    assert [(p, r, m) for p, _, r, _, m in _ledger(con)] == [
        (
            2,
            "declared_release_contradicted",
            "Encounter shape can only be DSTU2 (1.0.2); the file is declared R4 (4.0.x)",
        )
    ]


def test_folder_declarations_for_a_mixed_landing(tmp_path, make_config, warehouse):
    old = resource("Observation", "o1", status="final", code={"text": "x"})  # no signal of its release
    write_ndjson(tmp_path / "in" / "legacy" / "obs.ndjson", old, resource("Patient", "p1"))
    write_ndjson(tmp_path / "in" / "legacy" / "r4" / "obs.ndjson", old, resource("Patient", "p2"))
    write_ndjson(tmp_path / "in" / "current" / "obs.ndjson", old, resource("Patient", "p3"))
    write_ndjson(tmp_path / "in" / "other.ndjson", old, resource("Patient", "p4"))
    (tmp_path / "in" / DECLARATION_FILE).write_text(
        "pattern,release\n# legacy server\nlegacy/r4/*.ndjson,auto\nlegacy/*.ndjson,dstu2\n"
    )
    (tmp_path / "in" / "legacy" / "r4" / DECLARATION_FILE).write_text("*.ndjson , STU3\n")
    run = run_pipeline(make_config(tmp_path / "in", fhir_release="r4"))
    con = warehouse()
    assert run.reconciles
    got = con.execute(
        "SELECT f.original_name, d.format, d.release, d.declared_by FROM ops.files f "
        "JOIN ops.fhir_release_declarations d USING (file_sha256) ORDER BY d.format, d.release"
    ).fetchall()
    assert got == [
        ("obs.ndjson", "fhir-ndjson", "4.0", "run"),
        ("other.ndjson", "fhir-ndjson", "4.0", "run"),
        ("obs.ndjson", "fhir-ndjson-dstu2", "1.0", "folder"),
        ("obs.ndjson", "fhir-ndjson-stu3", "3.0", "folder"),
    ]
    assert con.execute("SELECT count(*) FROM ops.files").fetchone() == (4,)  # the CSV files are not data


def test_a_bad_declaration_row_is_a_config_error(tmp_path, make_config):
    write_ndjson(tmp_path / "in" / "obs.ndjson", R4_CONDITION)
    (tmp_path / "in" / DECLARATION_FILE).write_text("*.ndjson,r5\n")
    with pytest.raises(ConfigError, match="row 1 is not `glob,release`"):
        run_pipeline(make_config(tmp_path / "in"))


def test_changing_the_declaration_converts_again_and_repeating_it_does_not(tmp_path, make_config, warehouse):
    path = write_ndjson(tmp_path / "in" / "obs.ndjson", resource("Observation", "o1", status="final"))

    def statuses(release: str) -> tuple:
        run = run_pipeline(make_config(path, fhir_release=release))
        con = warehouse()
        try:
            return con.execute(
                "SELECT handler, status FROM ops.run_files WHERE run_id = ?", [run.run_id]
            ).fetchone()
        finally:
            con.close()

    assert statuses("auto") == ("fhir-ndjson", "converted")
    assert statuses("auto") == ("fhir-ndjson", "already_processed")
    assert statuses("dstu2") == ("fhir-ndjson-upgrade", "converted")
    assert statuses("dstu2") == ("fhir-ndjson-upgrade", "already_processed")
    assert statuses("stu3") == ("fhir-ndjson-upgrade", "converted")
    assert statuses("r4") == ("fhir-ndjson", "converted")  # declared: contradictions are named as such
    assert statuses("r4") == ("fhir-ndjson", "already_processed")
    con = warehouse()
    assert con.execute("SELECT count(*) FROM fhir.Observation").fetchone() == (1,)  # one identity


def test_the_run_setting(monkeypatch):
    with pytest.raises(ConfigError, match="'r5' is not one ehrlift reads"):
        RunConfig(sources=("x",), fhir_release="r5")
    monkeypatch.setenv("EHRLIFT_FHIR_RELEASE", "stu3")
    assert RunConfig.from_env(("x",)).fhir_release == "stu3"
    assert RunConfig.from_env(("x",), fhir_release="dstu2").fhir_release == "dstu2"
    config = RunConfig(sources=("x",), fhir_release="dstu2")
    assert RunConfig.from_dict(config.to_dict()).fhir_release == "dstu2"
    args = build_parser().parse_args(["run", "x", "--fhir-release", "dstu2"])
    assert args.fhir_release == "dstu2"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "x", "--fhir-release", "r5"])

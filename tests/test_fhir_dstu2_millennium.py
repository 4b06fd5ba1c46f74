"""Millennium's own DSTU2: ProcedureRequest -> ServiceRequest, Conformance -> CapabilityStatement, and
single-resource files whose shape fits an older release as well as R4 (read as R4 only when valid R4)."""

from __future__ import annotations

import orjson
import pytest

from pipelines.common.unit import Quarantine
from pipelines.convert.fhir import ndjson
from pipelines.convert.fhir.upgrade import upgrade
from pipelines.fhir_structure import ambiguity
from pipelines.run import run_pipeline
from tests.conftest import resource, write_ndjson

PATIENT = {"reference": "Patient/12724066"}


def _procedure_request(**fields) -> dict:
    return resource("ProcedureRequest", "pr", subject=PATIENT, code={"text": "Colonoscopy"}, **fields)


@pytest.mark.parametrize(
    ("status", "r4_status", "intent"),
    [
        ("proposed", "draft", "proposal"),
        ("draft", "draft", "order"),
        ("requested", "active", "order"),
        ("in-progress", "active", "order"),
        ("suspended", "on-hold", "order"),
        ("completed", "completed", "order"),
        ("rejected", "revoked", "order"),
        ("aborted", "revoked", "order"),
    ],
)
def test_procedure_request_status_and_intent(status, r4_status, intent):
    (sr,) = upgrade(_procedure_request(status=status), "1.0")
    assert (sr["resourceType"], sr["status"], sr["intent"]) == ("ServiceRequest", r4_status, intent)


def test_procedure_request_elements_move_to_their_r4_homes():
    source = _procedure_request(
        status="requested",
        orderer={"reference": "Practitioner/1"},
        performer={"reference": "Practitioner/2"},
        encounter={"reference": "Encounter/3"},
        scheduledPeriod={"start": "2016-06-01"},
        asNeededBoolean=True,
        reasonReference={"reference": "Condition/4"},
    )
    (sr,) = upgrade(source, "1.0")
    assert sr["requester"] == {"reference": "Practitioner/1"}
    assert sr["performer"] == [{"reference": "Practitioner/2"}]
    assert sr["encounter"] == {"reference": "Encounter/3"}
    assert sr["occurrencePeriod"] == {"start": "2016-06-01"} and sr["asNeededBoolean"] is True
    assert sr["reasonReference"] == [{"reference": "Condition/4"}]


def test_procedure_request_without_status_is_not_invented():
    with pytest.raises(Quarantine) as q:
        upgrade(_procedure_request(), "1.0")
    assert q.value.reason == "upgrade_missing_required"
    assert q.value.message == "DSTU2 source lacks what R4 requires: ServiceRequest.status"


def _conformance(resource_type: str = "Patient", **rest) -> dict:
    return resource(
        "Conformance",
        "c",
        status="active",
        date="2016-05-01",
        kind="instance",
        fhirVersion="1.0.2",
        acceptUnknown="no",
        format=["json"],
        rest=[
            {
                "mode": "server",
                "resource": [{"type": resource_type, "interaction": [{"code": "read"}]}],
                **rest,
            }
        ],
    )


def test_conformance_becomes_a_valid_capability_statement():
    from fhir.resources.R4B import get_fhir_model_class

    (cs,) = upgrade(_conformance("MedicationOrder"), "1.0")
    get_fhir_model_class("CapabilityStatement").model_validate(cs)
    assert cs["resourceType"] == "CapabilityStatement" and cs["fhirVersion"] == "1.0.2"
    assert cs["rest"][0]["resource"][0]["type"] == "MedicationRequest"
    assert cs["extension"] == [
        {
            "url": "http://hl7.org/fhir/1.0/StructureDefinition/extension-Conformance.acceptUnknown",
            "valueCode": "no",
        }
    ]


def test_conformance_naming_a_type_r4_lacks_or_an_unmapped_element_is_quarantined():
    with pytest.raises(Quarantine) as q:
        upgrade(_conformance("Order"), "1.0")
    assert q.value.reason == "upgrade_no_target_type"
    with pytest.raises(Quarantine) as q:
        upgrade(_conformance(security={"certificate": [{"type": "application/jwt"}]}), "1.0")
    assert q.value.reason == "upgrade_unmapped_element"


# A DSTU2 Observation whose shape every release allows, but whose value R4 cannot hold.
AMBIGUOUS = resource(
    "Observation",
    "o1",
    status="final",
    code={"text": "Weight"},
    subject=PATIENT,
    valueQuantity={"value": "heavy"},
)
R4_VALID = resource("Observation", "o2", status="final", code={"text": "Weight"}, subject=PATIENT)


def test_ambiguity_names_the_path_never_the_value():
    why = ambiguity(AMBIGUOUS)
    assert why == (
        "Observation fits DSTU2 (1.0.2) or STU3 (3.0.x) and R4 by its shape but is not valid R4 "
        "at Observation.valueQuantity.value"
    )
    assert ambiguity(R4_VALID) is None
    assert ambiguity(resource("MedicationOrder", "m")) is None  # its type already tells its release


def test_single_resource_files_under_auto(tmp_path, make_config, warehouse):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.json").write_bytes(orjson.dumps(AMBIGUOUS, option=orjson.OPT_INDENT_2))
    (src / "b.json").write_bytes(orjson.dumps(R4_VALID, option=orjson.OPT_INDENT_2))
    run = run_pipeline(make_config(src))
    con = warehouse()
    assert run.reconciles
    rows = con.execute(
        "SELECT l.outcome, coalesce(l.reason, ''), q.message FROM ops.ledger l "
        "LEFT JOIN ops.quarantine q USING (file_sha256, unit_position) ORDER BY 1"
    ).fetchall()
    assert [r[:2] for r in rows] == [("converted", ""), ("quarantined", "fhir_release_ambiguous")]
    assert rows[1][2].endswith(
        "declare its release (--fhir-release dstu2, stu3 or r4, or a .fhir-release.csv line)"
    )
    assert "heavy" not in rows[1][2]
    assert con.execute("SELECT id FROM fhir.Observation").fetchall() == [(_id("o2"),)]


def _one_line_run(tmp_path, make_config, warehouse, content: bytes, **config) -> tuple:
    path = tmp_path / "in" / "a.json"
    path.parent.mkdir()
    path.write_bytes(content)
    run = run_pipeline(make_config(path, **config))
    con = warehouse()
    assert run.reconciles
    rows = con.execute(
        "SELECT f.format, l.unit_position, l.unit_kind, l.outcome, coalesce(l.reason, ''), "
        "coalesce(q.pointer, ''), coalesce(q.message, '') "
        "FROM ops.ledger l JOIN ops.files f USING (file_sha256) "
        "LEFT JOIN ops.quarantine q USING (file_sha256, unit_position) ORDER BY l.unit_position"
    ).fetchall()
    return con, [
        (fmt, pos, kind, outcome, reason, pointer.split("#")[-1], msg)
        for fmt, pos, kind, outcome, reason, pointer, msg in rows
    ]


_ADVICE = "declare its release (--fhir-release dstu2, stu3 or r4, or a .fhir-release.csv line)"


@pytest.mark.parametrize("trailer", [b"", b"\n", b"\n\n"], ids=["no-newline", "newline", "blank-line"])
def test_a_compact_one_line_file_that_is_not_valid_r4_is_ambiguous(tmp_path, make_config, warehouse, trailer):
    # One resource on one line is NDJSON of one line (its unit and pointer are ndjson_line's), yet it is
    # a single-resource file: under auto it is read as R4 only when valid R4.
    line = orjson.dumps(AMBIGUOUS)
    con, rows = _one_line_run(tmp_path, make_config, warehouse, line + trailer)
    assert rows[0] == (
        "fhir-ndjson",
        1,
        "ndjson_line",
        "quarantined",
        "fhir_release_ambiguous",
        f"ndjson_line=1@0+{len(line) + min(len(trailer), 1)}",
        "Observation fits DSTU2 (1.0.2) or STU3 (3.0.x) and R4 by its shape but is not valid R4 "
        f"at Observation.valueQuantity.value; {_ADVICE}",
    )
    assert rows[1:] == (
        [(("fhir-ndjson", 2, "ndjson_line", "skipped", "blank_line", "", ""))] if trailer == b"\n\n" else []
    )
    nothing_staged = "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'fhir'"
    assert con.execute(nothing_staged).fetchone() == (0,)


def test_a_compact_one_line_file_that_is_valid_r4_is_read_as_r4(tmp_path, make_config, warehouse):
    con, rows = _one_line_run(tmp_path, make_config, warehouse, orjson.dumps(R4_VALID) + b"\n")
    assert rows == [("fhir-ndjson", 1, "ndjson_line", "converted", "", "", "")]
    (text,) = con.execute("SELECT resource FROM fhir.Observation").fetchone()
    from pipelines.convert.fhir.prepare import warehouse_id

    patient = {"reference": "Patient/" + warehouse_id("default", "Patient", "12724066")}
    assert orjson.loads(text) == {**R4_VALID, "id": _id("o2"), "subject": patient}


def test_a_compact_one_line_r4_file_stays_converted(tmp_path, make_config, warehouse):
    # Its shape says R4 alone (Condition.clinicalStatus is a CodeableConcept only in R4): no ambiguity.
    condition = resource(
        "Condition",
        "c1",
        subject=PATIENT,
        code={"text": "x"},
        clinicalStatus={"coding": [{"code": "active"}]},
    )
    con, rows = _one_line_run(tmp_path, make_config, warehouse, orjson.dumps(condition))
    assert rows == [("fhir-ndjson", 1, "ndjson_line", "converted", "", "", "")]
    assert con.execute("SELECT count(*) FROM fhir.Condition").fetchone() == (1,)


def test_a_declared_compact_one_line_file_is_not_ambiguous(tmp_path, make_config, warehouse):
    _, rows = _one_line_run(tmp_path, make_config, warehouse, orjson.dumps(AMBIGUOUS), fhir_release="r4")
    assert [r[3:5] for r in rows] == [("converted", "")]  # declared R4: the declaration decides


@pytest.mark.parametrize("chunk_bytes", [16 << 20, 64], ids=["one-batch", "a-batch-per-line"])
def test_a_multi_line_export_keeps_its_per_line_checks(
    tmp_path, make_config, warehouse, monkeypatch, chunk_bytes
):
    # A bulk export is not a single-resource file: each line meets the release check alone, as before;
    # also when its last batch holds a single line that reaches the end of the file.
    monkeypatch.setattr(ndjson, "CHUNK_BYTES", chunk_bytes)
    path = write_ndjson(tmp_path / "in" / "export.ndjson", R4_VALID, AMBIGUOUS)
    run = run_pipeline(make_config(path))
    con = warehouse()
    assert run.reconciles
    assert con.execute("SELECT unit_position, unit_kind, outcome FROM ops.ledger ORDER BY 1").fetchall() == [
        (1, "ndjson_line", "converted"),
        (2, "ndjson_line", "converted"),
    ]


def test_declared_dstu2_reads_the_ambiguous_file_as_dstu2(tmp_path, make_config, warehouse):
    path = tmp_path / "in" / "a.json"
    path.parent.mkdir()
    path.write_bytes(orjson.dumps(AMBIGUOUS, option=orjson.OPT_INDENT_2))
    run_pipeline(make_config(path, fhir_release="dstu2"))
    con = warehouse()
    # Declared DSTU2, the unit is DSTU2's: not ambiguous any more (its value is the upgrade's business).
    (reason,) = con.execute("SELECT coalesce(reason, outcome) FROM ops.ledger").fetchone()
    assert reason != "fhir_release_ambiguous"


def _id(source_id: str) -> str:
    from pipelines.convert.fhir.prepare import warehouse_id

    return warehouse_id("default", "Observation", source_id)


@pytest.mark.corpus
def test_official_dstu2_examples_as_single_resource_files(corpus, tmp_path, make_config, warehouse):
    """The official DSTU2 examples written as a server hands them out one by one (pretty-printed JSON):
    under auto none that is invalid R4 is read as R4."""
    src = tmp_path / "examples"
    src.mkdir()
    for path in sorted((corpus / "fhir-dstu2" / "dstu2-examples" / "dist" / "examples").glob("*.json")):
        (src / path.name).write_bytes(
            orjson.dumps(orjson.loads(path.read_bytes()), option=orjson.OPT_INDENT_2)
        )
    run = run_pipeline(make_config(src))
    con = warehouse()
    assert run.reconciles
    by = dict(
        con.execute(
            "SELECT f.format || ':' || l.outcome || ':' || coalesce(l.reason, ''), count(*) "
            "FROM ops.ledger l JOIN ops.files f USING (file_sha256) "
            "WHERE f.format = 'fhir-resource' GROUP BY 1"
        ).fetchall()
    )
    print(f"\nDSTU2 examples as single-resource files, read under auto as R4: {by}")
    assert by.get("fhir-resource:quarantined:fhir_release_ambiguous", 0) >= 100
    converted = con.execute(
        "SELECT r.resource FROM fhir.Observation r JOIN ops.files f USING (file_sha256) "
        "WHERE f.format = 'fhir-resource'"
    ).fetchall()
    from fhir.resources.R4B import get_fhir_model_class

    for (text,) in converted:  # what is still read as R4 is valid R4
        get_fhir_model_class("Observation").model_validate(orjson.loads(text))

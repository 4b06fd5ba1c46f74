"""Millennium's own DSTU2: ProcedureRequest -> ServiceRequest, Conformance -> CapabilityStatement, and
single-resource files whose shape fits an older release as well as R4 (read as R4 only when valid R4)."""

from __future__ import annotations

import orjson
import pytest

from pipelines.common.unit import Quarantine
from pipelines.convert.fhir.upgrade import upgrade
from pipelines.fhir_structure import ambiguity
from pipelines.run import run_pipeline
from tests.conftest import resource

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


def test_a_one_line_file_stays_ndjson_of_one_line(tmp_path, make_config, warehouse):
    # One compact line is NDJSON (bulk exports' per-line check, no per-line R4 validation): unchanged.
    path = tmp_path / "in" / "a.json"
    path.parent.mkdir()
    path.write_bytes(orjson.dumps(R4_VALID))
    run_pipeline(make_config(path))
    con = warehouse()
    assert con.execute("SELECT format FROM ops.files").fetchone() == ("fhir-ndjson",)


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

"""HL7 v2 through the whole pipeline: one ledger row per message, stand-ins, loss report, re-runs."""

from __future__ import annotations

from pipelines.convert.fhir.prepare import warehouse_id
from pipelines.run import run_pipeline
from tests.conftest import ledger

ADT = (
    "MSH|^~\\&|REG|GENHOSP|EHR|GENHOSP|20240102080000-0500||ADT^A04^ADT_A01|ADT0001|P|2.5.1\r"
    "EVN|A04|20240102080000-0500\r"
    "PID|1||MRN0001^^^GENHOSP^MR||Testperson^Alex^J||19610203|F|||12 Elm St^^Springfield^IL^62701||"
    "^PRN^PH^^^217^5550100\r"
    "PV1|1|O|CLINIC^101^1||||1234^Doctor^Dana|||||||||||V0001^^^GENHOSP^VN\r"
    "ZPI|1|custom site data\r"
)
ORU = (
    "MSH|^~\\&|LAB|GENHOSP|EHR|GENHOSP|20240103091500-0500||ORU^R01^ORU_R01|LAB0001|P|2.5.1\r"
    "PID|1||MRN0001^^^GENHOSP^MR||Testperson^A\r"
    "OBR|1|PL100|FL100|GLU^Glucose^99LAB|||20240103083000-0500\r"
    "OBX|1|NM|GLU^Glucose^99LAB^2345-7^Glucose [Mass/volume] in Serum or Plasma^LN||105|mg/dL^mg/dL^UCUM|"
    "70-99|H|||F\r"
    "NTE|1||fasting sample\r"
)


def _archive(tmp_path):
    path = tmp_path / "src" / "feed.hl7"
    path.parent.mkdir()
    # Junk before the first segment is outside any message; a non-segment line after a segment would
    # be read as that segment's continuation (senders wrap long OBX-5 text onto new lines).
    body = (
        "exported by interface engine, do not edit\r\n"
        + "BHS|^~\\&|LAB|GENHOSP\r\n"
        + ADT.replace("\r", "\r\n")
        + ORU.replace("\r", "\r\n")
        + "BTS|2\r\n"
    )
    path.write_bytes(body.encode())
    return path


def test_messages_envelopes_and_junk_each_get_one_outcome(tmp_path, make_config, warehouse):
    run = run_pipeline(make_config(_archive(tmp_path), source_system="genhosp"))
    con = warehouse()
    assert [row[1:5] for row in ledger(con)] == [
        (1, "hl7_fragment", "quarantined", "hl7_not_a_message"),
        (2, "hl7_batch_envelope", "skipped", "hl7_batch_envelope"),
        (3, "hl7_message", "converted", None),
        (4, "hl7_message", "converted", None),
        (5, "hl7_batch_envelope", "skipped", "hl7_batch_envelope"),
    ]
    assert run.reconciles
    # The ADT registration is authoritative for the patient; the result's thinner PID only stands in.
    patient_id = warehouse_id("genhosp", "Patient", "GENHOSP|MRN0001")
    rows = con.execute("""SELECT id, resource->'name'->0->>'family', resource->>'birthDate', reference_only
                          FROM fhir."Patient" """).fetchall()
    assert rows == [(patient_id, "Testperson", "1961-02-03", False)]
    obs = con.execute("""
        SELECT resource->'subject'->>'reference', resource->'valueQuantity'->>'value',
               json_array_length(resource->'code'->'coding')
        FROM fhir."Observation" """).fetchall()
    assert obs == [(f"Patient/{patient_id}", "105", 2)]
    assert run.unconsumed == {"ADT^A04": {"ZPI": 1}}
    assert run.views["observation"] == 1 and run.views["patient"] == 1


def test_a_rerun_adds_nothing_and_a_later_adt_update_replaces_demographics(tmp_path, make_config, warehouse):
    archive = _archive(tmp_path)
    run_pipeline(make_config(archive, source_system="genhosp"))
    again = run_pipeline(make_config(archive, source_system="genhosp"))
    assert again.totals.units == 0 and again.files_already_processed == 1
    update = tmp_path / "later" / "a08.hl7"
    update.parent.mkdir()
    update.write_bytes(
        ADT.replace("ADT^A04^ADT_A01|ADT0001", "ADT^A08^ADT_A01|ADT0002")
        .replace("20240102080000", "20240105100000")
        .replace("12 Elm St", "9 Oak Ave")
        .encode()
    )
    later = run_pipeline(make_config(update, source_system="genhosp"))
    con = warehouse()
    assert [row[3:5] for row in ledger(con, later.run_id)] == [("converted", "newer_version")]
    assert con.execute("""SELECT resource->'address'->0->'line'->>0 FROM fhir."Patient" """).fetchall() == [
        ("9 Oak Ave",)
    ]

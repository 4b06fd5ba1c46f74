"""Public-health HL7 v2: immunization histories, doses not given, queries and acks, results without PID-3."""

from __future__ import annotations

import json

import pytest

from pipelines.common.unit import Quarantine, Skip
from pipelines.common.warehouse import open_warehouse
from pipelines.convert.fhir.prepare import warehouse_id
from pipelines.convert.hl7v2.messages import convert_message
from pipelines.convert.hl7v2.registry import no_clinical_content
from pipelines.convert.hl7v2.tokenizer import parse_message
from pipelines.report.data import collect
from pipelines.run import run_pipeline
from tests.conftest import REPO
from tests.test_hl7v2_messages import by_type

PID = "PID|1||M1^^^EAST^MR||Roe^Ray||20190101|M"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"


def convert(*segments: str, mtype: str = "VXU^V04^VXU_V04", facility: str = "FAC", source: str = "s"):
    raw = "\r".join([f"MSH|^~\\&|APP|{facility}|R|R|20240101120000||{mtype}|CTL1|P|2.5.1", *segments]) + "\r"
    return convert_message(parse_message(raw.encode()), source, "sha:1")


@pytest.mark.parametrize(
    "mtype",
    [
        *("ACK", "ACK^V04^ACK", "ACK^R01", "QBP^Q11^QBP_Q11", "QBP^Q22^QBP_Q21", "QBP^Q23^QBP_Q21"),
        *("QCN^J01^QCN_J01", "RSP^K22^RSP_K21", "RSP^K23^RSP_K23", "QRY^Q01", "MCF"),
    ],
)
def test_queries_and_acknowledgments_are_skipped(mtype):
    with pytest.raises(Skip) as s:
        convert("MSA|AA|Q1", "QAK|Q1|OK", "QPD|Z34^Request^CDCPHINVS|Q1", PID, mtype=mtype)
    assert s.value.reason == "hl7_no_clinical_content"


def test_rsp_k11_without_immunizations_is_skipped_with_or_without_a_patient():
    for body in (["QAK|Q1|NF"], ["QAK|Q1|OK", PID, "PID|2||M2^^^EAST^MR||Roe^Ann||20190101|F"]):
        with pytest.raises(Skip) as s:
            convert("MSA|AA|Q1", *body, mtype="RSP^K11^RSP_K11")
        assert s.value.reason == "hl7_no_clinical_content"


def test_rsp_k11_history_converts_like_a_vxu():
    body = [PID, "ORC|RE||IZ1^IIS", "RXA|0|1|20200301|20200301|08^Hep B^CVX|999||||||||||||||CP|A"]
    rsp = convert("MSA|AA|Q1", "QAK|Q1|OK", "QPD|Z34^Request^CDCPHINVS|Q1", *body, mtype="RSP^K11^RSP_K11")
    vxu = convert(*body)
    assert rsp.container == "RSP^K11" and rsp.unconsumed == {}
    assert by_type(rsp)["Immunization"] == by_type(vxu)["Immunization"]
    assert by_type(rsp)["Immunization"][0]["status"] == "completed"


def test_unlisted_types_are_still_quarantined():
    with pytest.raises(Quarantine) as q:
        convert(PID, mtype="BAR^P01")
    assert q.value.reason == "hl7_unsupported_message_type"
    assert ("RSP", "K11") in no_clinical_content() and ("ADT", "*") not in no_clinical_content()


@pytest.mark.parametrize(
    ("rxa", "obx", "reason"),
    [
        ("107^DTaP^CVX|999||||||||||||00^Parental decision^NIP002||RE", None, ["00", "PATOBJ"]),
        ("107^DTaP^CVX|999||||||||||||01^Religious exemption^NIP002||RE", None, ["01", "RELIG"]),
        ("107^DTaP^CVX|999||||||||||||02^Other^NIP002||RE", None, ["02"]),
        (
            "998^No vaccine^CVX|999||||||||||||||NA",
            "59784-9^Immunity^LN|1|38907003^Varicella^SCT",
            ["IMMUNE"],
        ),
        (
            "998^No vaccine^CVX|999||||||||||||||CP",
            "75505-8^Serology^LN|1|278971009^HepA immune^SCT",
            ["IMMUNE"],
        ),
        (
            "998^No vaccine^CVX|999||||||||||||||NA",
            "30945-0^Contraindication^LN|1|91930004^Egg^SCT",
            ["MEDPREC"],
        ),
        ("998^No vaccine^CVX|999||||||||||||||NA", None, None),
    ],
)
def test_doses_not_given(rxa, obx, reason):
    segs = [PID, "ORC|RE||IZ1^EHR", f"RXA|0|1|20240307|20240307|{rxa}"]
    if obx:
        segs.append(f"OBX|1|CE|{obx}||||||F")
    out = by_type(convert(*segs))
    (im,) = out["Immunization"]
    assert im["status"] == "not-done"
    assert [c["code"] for c in im.get("statusReason", {}).get("coding", [])] == (reason or [])
    if obx:
        (evidence,) = out["Observation"]
        assert evidence["partOf"] == [{"reference": f"Immunization/{im['id']}"}]


def test_not_given_without_date_or_vaccine_is_kept_and_valid():
    from fhir.resources.R4B import get_fhir_model_class

    out = by_type(convert(PID, "ORC|RE||IZ9^EHR", "RXA|0|1||||999||||||||||||||NA"))
    (im,) = out["Immunization"]
    assert im["vaccineCode"]["coding"][0]["code"] == "998"
    assert im["occurrenceString"] == "unknown" and "occurrenceDateTime" not in im
    get_fhir_model_class("Immunization").model_validate(im)
    with pytest.raises(Quarantine):  # given, but when and what are unknown: not a record
        convert(PID, "RXA|0|1||||999||||||||||||||CP")


def test_no_vaccine_records_of_one_day_stay_apart_by_their_evidence():
    rxa = "RXA|0|1|20240307|20240307|998^No vaccine^CVX|999||||||||||||||NA"
    immune = "OBX|1|CE|59784-9^Immunity^LN|1|38907003^Varicella^SCT||||||F"
    deferral = "OBX|1|CE|30945-0^Contraindication^LN|1|91930004^Egg^SCT||||||F"
    out = by_type(convert(PID, "ORC|RE||A^EHR", rxa, immune, "ORC|RE||B^EHR", rxa, deferral))
    assert sorted(c["statusReason"]["coding"][0]["code"] for c in out["Immunization"]) == [
        "IMMUNE",
        "MEDPREC",
    ]


ELR_PID = "PID|1||||Testcase^Morgan^Q||19800102|F|||12 Main St^^Riverton^WY^82501-1234"
ELR = [
    ELR_PID,
    "OBR|1||F1^LAB|94500-6^SARS-CoV-2^LN",
    "OBX|1|CWE|94500-6^SARS-CoV-2^LN|1|260373001^Detected^SCT||||||F",
]


def test_result_without_pid3_keeps_its_result_under_a_tagged_patient():
    out = by_type(convert(*ELR, mtype="ORU^R01^ORU_R01"))
    (p,) = out["Patient"]
    assert p["meta"]["tag"] == [
        {
            "system": "urn:ehrlift:identity",
            "code": "no-trusted-identifier",
            "display": "identified from the message's demographics, without an identifier",
        }
    ]
    assert "identifier" not in p
    key = "demographic:TESTCASE|MORGAN|19800102|F|12 MAIN ST|82501|FAC"
    assert p["id"] == warehouse_id("s", "Patient", key)
    assert out["Observation"][0]["subject"] == {"reference": f"Patient/{p['id']}"}


def test_demographic_identity_is_deterministic_and_per_submitter():
    def pid_of(*segs, facility="FAC"):
        return by_type(convert(*segs, mtype="ORU^R01^ORU_R01", facility=facility))["Patient"][0]["id"]

    same = pid_of(ELR_PID.replace("Testcase^Morgan", "TESTCASE^ morgan"), *ELR[1:])
    assert pid_of(*ELR) == same
    assert pid_of(*ELR, facility="OTHERLAB") != same
    assert pid_of(ELR_PID.replace("19800102", "19800103"), *ELR[1:]) != same


def test_result_without_pid3_name_or_birth_date_is_quarantined():
    with pytest.raises(Quarantine) as q:
        convert("PID|1||||Testcase^Morgan", *ELR[1:], mtype="ORU^R01^ORU_R01")
    assert (q.value.reason, q.value.message) == (
        "hl7_missing_required",
        "PID-3 is empty and PID-5 or PID-7 too",
    )
    with pytest.raises(Quarantine) as q:  # ADT states who a patient is: it still needs PID-3
        convert(ELR_PID, mtype="ADT^A01")
    assert q.value.message == "PID-3 is empty"


def test_golden_public_health_cases_are_valid_r4b():
    from fhir.resources.R4B import get_fhir_model_class

    for case in ("rsp_k11", "vxu_v04_not_given", "oru_r01_no_pid3"):
        doc = json.loads((REPO / "tests/golden/hl7v2" / case / "expected/resources.json").read_text())
        assert doc["unconsumed"] == {}
        for row in doc["resources"]:
            get_fhir_model_class(row["resource"]["resourceType"]).model_validate(row["resource"])


def test_report_counts_patients_without_trusted_identifier(tmp_path, make_config):
    msg = "\r".join(["MSH|^~\\&|LIS|LAB|R|R|20240101120000||ORU^R01^ORU_R01|E1|P|2.5.1", *ELR]) + "\r"
    ack = "MSH|^~\\&|R|R|LIS|LAB|20240101120001||ACK^R01^ACK|A1|P|2.5.1\rMSA|AA|E1\r"
    src = tmp_path / "in"
    src.mkdir()
    (src / "feed.hl7").write_text(msg + ack)
    run = run_pipeline(make_config(src, source_system="elr"))
    assert run.reconciles
    con = open_warehouse(tmp_path / "data" / "warehouse.duckdb", read_only=True)
    try:
        rec = collect(con, run.run_id)["reconciliation"]
        outcomes = dict(
            con.execute("SELECT coalesce(reason, outcome), count(*) FROM ops.ledger GROUP BY 1").fetchall()
        )
    finally:
        con.close()
    assert rec["patients_without_trusted_identifier"] == 1
    assert outcomes == {"converted": 1, "hl7_no_clinical_content": 1}

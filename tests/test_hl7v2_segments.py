"""HL7 v2 segment mappers: PID, PV1, OBX, RXA, MRG on small invented messages."""

from __future__ import annotations

import orjson
import pytest

from pipelines.common.unit import Quarantine
from pipelines.convert.fhir.prepare import warehouse_id
from pipelines.convert.hl7v2.datatypes import Ctx
from pipelines.convert.hl7v2.segments import encounter, patient, pharmacy, results
from pipelines.convert.hl7v2.tokenizer import parse_message


def seg(text: str):
    raw = f"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5.1\r{text}\r".encode()
    return parse_message(raw).segments[1]


def plain(resource: dict) -> dict:
    return orjson.loads(orjson.dumps(resource))


def test_patient_identity_prefers_an_identifier_with_authority():
    pid = seg("PID|1||LOCAL1~M55^^^EAST^MR||Roe^Ray||20000101|M")
    assert patient.patient_key(pid) == "EAST|M55"
    assert patient.patient(Ctx("s", "u"), pid)["id"] == warehouse_id("s", "Patient", "EAST|M55")


def test_patient_without_pid3_is_quarantined():
    with pytest.raises(Quarantine) as q:
        patient.patient_key(seg("PID|1||||Roe^Ray"))
    assert (q.value.reason, q.value.message) == ("hl7_missing_required", "PID-3 is empty")


def test_patient_demographics():
    pid = seg("PID|1||M1^^^EAST^MR||Roe^Ray||198001021230|M||||||||S^Single^HL70002||||||||Y|2||||20200101")
    p = plain(patient.patient(Ctx("s", "u"), pid))
    assert p["gender"] == "male"
    assert p["birthDate"] == "1980-01-02"
    assert p["_birthDate"]["extension"][0]["valueDateTime"] == "1980-01-02T12:30:00+00:00"
    assert p["maritalStatus"]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
        "code": "S",
        "display": "Never Married",
    }
    assert p["multipleBirthInteger"] == 2
    assert p["deceasedDateTime"] == "2020-01-01"


def test_encounter_class_visit_number_period_and_practitioner():
    pv1 = seg(
        "PV1|1|E|ER^1^^EAST||||77^Doc^Dana^^^^^^EAST||||||||||||V9^^^EAST^VN|||||||||||||||||||||||||"
        "20240101080000|20240101120000"
    )
    c = Ctx("s", "u")
    key = encounter.encounter_key(pv1, "EAST|M1", "u")
    assert key == "visit:EAST|V9"
    e = plain(encounter.encounter(c, pv1, None, {"reference": "Patient/p"}, key, "A03"))
    assert e["class"] == {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
        "code": "EMER",
        "display": "emergency",
    }
    assert e["status"] == "finished"
    assert e["period"] == {"start": "2024-01-01T08:00:00+00:00", "end": "2024-01-01T12:00:00+00:00"}
    assert e["identifier"][0]["value"] == "V9"
    assert e["participant"][0]["individual"]["reference"] == "Practitioner/" + warehouse_id(
        "s", "Practitioner", "EAST|77"
    )
    assert ("Practitioner", warehouse_id("s", "Practitioner", "EAST|77")) in c.shared


def test_encounter_key_falls_back_to_patient_and_admit_time_then_unit():
    assert encounter.encounter_key(seg("PV1|1|O" + "|" * 42 + "20240101"), "P", "u") == "admit:P|20240101"
    assert encounter.encounter_key(seg("PV1|1|O"), "P", "u") == "unit:u"


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("F", "final"),
        ("C", "corrected"),
        ("P", "preliminary"),
        ("D", "entered-in-error"),
        ("X", "cancelled"),
        ("I", "registered"),
    ],
)
def test_observation_status(code, status):
    obx = seg(f"OBX|1|NM|1-8^Test^LN||5||||||{code}")
    o = results.observation(Ctx("s", "u"), obx, "k", {"reference": "Patient/p"}, None, None, [])
    assert o["status"] == status


def test_observation_interpretation_range_and_effective_from_obr():
    obr = seg("OBR|1|P1|F1|X^Panel^L|||20240101")
    obx = seg("OBX|1|NM|1-8^Test^LN||5.5|g/L|3.5-5.0|H|||F")
    o = plain(results.observation(Ctx("s", "u"), obx, "k", {"reference": "Patient/p"}, None, obr, []))
    assert o["effectiveDateTime"] == "2024-01-01"
    assert o["referenceRange"][0]["text"] == "3.5-5.0"
    assert o["interpretation"] == [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                    "code": "H",
                    "display": "High",
                }
            ]
        }
    ]
    assert o["valueQuantity"]["code"] == "g/L"


@pytest.mark.parametrize(
    ("pv1_36", "expected"),
    [
        (
            "07^Left AMA",
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/discharge-disposition",
                        "code": "aadvice",
                        "display": "Left against advice",
                    }
                ],
                "text": "Left AMA",
            },
        ),
        # 02 (another short-term hospital) has no one-to-one FHIR code: the table 0112 coding stays.
        ("02", {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0112", "code": "02"}]}),
        # A local "01" is the sender's own code, not table 0112's.
        (
            "01^Home^99DISP",
            {"coding": [{"system": "urn:ehrlift:hl7v2:s:99DISP", "code": "01", "display": "Home"}]},
        ),
    ],
)
def test_discharge_disposition_translates_one_to_one_table_0112_codes(pv1_36, expected):
    pv1 = seg("PV1|1|I" + "|" * 34 + pv1_36)
    e = plain(encounter.encounter(Ctx("s", "u"), pv1, None, {"reference": "Patient/p"}, "k", "A03"))
    assert e["hospitalization"]["dischargeDisposition"] == expected


def test_observation_key_uses_order_code_subid_and_set_id():
    obx = seg("OBX|3|NM|1-8^Test^LN|2|5")
    assert results.observation_key("filler:LAB|F1", obx) == "filler:LAB|F1|obx:1-8|2|3"


def test_immunization_not_done():
    rxa = seg(
        "RXA|0|1|20240101|20240101|998^No vaccine administered^CVX|999||||||||||||00^Refusal^NIP002||RE"
    )
    im = plain(pharmacy.immunization(Ctx("s", "u"), rxa, None, None, {"reference": "Patient/p"}, "EAST|M1"))
    assert im["status"] == "not-done"
    assert im["statusReason"]["coding"][0]["code"] == "00"
    assert im["vaccineCode"]["coding"][0]["system"] == "http://hl7.org/fhir/sid/cvx"
    assert "doseQuantity" not in im
    assert im["id"] == warehouse_id("s", "Immunization", "EAST|M1|2024-01-01|http://hl7.org/fhir/sid/cvx|998")


def test_merge_links_both_ways():
    c = Ctx("s", "u")
    survivor = patient.patient(c, seg("PID|1||NEW1^^^EAST^MR||Roe^Ray"))
    retired = patient.merge_links(c, survivor, seg("MRG|OLD1^^^EAST^MR"))
    old_id = warehouse_id("s", "Patient", "EAST|OLD1")
    assert survivor["link"] == [{"other": {"reference": f"Patient/{old_id}"}, "type": "replaces"}]
    assert retired["link"] == [{"other": {"reference": f"Patient/{survivor['id']}"}, "type": "replaced-by"}]
    assert survivor["identifier"][-1]["use"] == "old"
    assert retired["active"] is False

"""HL7 v2 message mappers: registry, group structure, authority, identity and loss accounting."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import orjson
import pytest

from pipelines.common.unit import Quarantine, Skip
from pipelines.convert.fhir.prepare import warehouse_id
from pipelines.convert.hl7v2.messages import MAPPERS, convert_message
from pipelines.convert.hl7v2.reader import iter_units
from pipelines.convert.hl7v2.tokenizer import Hl7ParseError, parse_message
from tests.conftest import corpus_root

PID = "PID|1||M1^^^EAST^MR||Roe^Ray||19800101|M"
PV1 = "PV1|1|I|W1^1^A||||||||||||||||V1^^^EAST"


def convert(*segments: str, mtype: str = "ADT^A01", ts: str = "20240101120000-0500", source: str = "s"):
    raw = "\r".join([f"MSH|^~\\&|APP|FAC|R|R|{ts}||{mtype}|CTL1|P|2.5.1", *segments]) + "\r"
    return convert_message(parse_message(raw.encode()), source, "sha:1")


def by_type(out) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for r in out.resources:
        found.setdefault(r.resource_type, []).append(orjson.loads(r.json))
    return found


def flags(out) -> dict[str, bool]:
    return {r.resource_type: r.reference_only for r in out.resources}


def test_adt_patient_is_authoritative_with_evn_time():
    out = convert("EVN|A01|20240101115500-0500", PID, PV1)
    assert out.container == "ADT^A01"
    assert flags(out)["Patient"] is False and flags(out)["Encounter"] is False
    p = by_type(out)["Patient"][0]
    assert p["meta"]["lastUpdated"] == "2024-01-01T11:55:00-05:00"
    assert p["meta"]["source"] == "urn:ehrlift:hl7v2:s:msg%3AFAC#CTL1"
    assert by_type(out)["Encounter"][0]["status"] == "in-progress"


def test_results_refer_to_patient_and_encounter_as_stand_ins():
    out = convert(PID, PV1, "OBR|1|P1|F1^LAB|X^Panel^L", "OBX|1|NM|1-8^A^LN||5||||||F", mtype="ORU^R01")
    assert flags(out)["Patient"] is True and flags(out)["Encounter"] is True
    assert flags(out)["Observation"] is False and flags(out)["DiagnosticReport"] is False
    obs = by_type(out)["Observation"][0]
    assert obs["meta"]["lastUpdated"] == "2024-01-01T12:00:00-05:00"
    assert obs["subject"] == {"reference": "Patient/" + warehouse_id("s", "Patient", "EAST|M1")}
    assert obs["id"] == warehouse_id("s", "Observation", "filler:LAB|F1|obx:1-8||1")


def test_oru_groups_obx_and_nte_under_the_preceding_obr():
    out = convert(
        PID,
        "OBR|1||F1^LAB|X^Panel^L",
        "NTE|1||report note",
        "OBX|1|NM|1-8^A^LN||5||||||F",
        "NTE|1||obs note",
        "OBR|2||F2^LAB|Y^Other^L",
        "OBX|1|NM|2-6^B^LN||6||||||P",
        mtype="ORU^R01",
    )
    reports = {r["identifier"][-1]["value"]: r for r in by_type(out)["DiagnosticReport"]}
    assert len(reports["F1"]["result"]) == 1 and len(reports["F2"]["result"]) == 1
    assert reports["F1"]["conclusion"] == "report note"
    notes = [o.get("note") for o in by_type(out)["Observation"]]
    assert [{"text": "obs note"}] in notes and None in notes


def test_same_result_in_two_messages_gets_the_same_id_and_a_later_time():
    segs = (PID, "OBR|1||F1^LAB|X^Panel^L", "OBX|1|NM|1-8^A^LN||5||||||F")
    first = by_type(convert(*segs, mtype="ORU^R01"))["Observation"][0]
    corrected = by_type(
        convert(
            PID,
            "OBR|1||F1^LAB|X^Panel^L",
            "OBX|1|NM|1-8^A^LN||6||||||C",
            mtype="ORU^R01",
            ts="20240102120000-0500",
        )
    )["Observation"][0]
    assert first["id"] == corrected["id"]
    assert corrected["status"] == "corrected"
    assert corrected["meta"]["lastUpdated"] > first["meta"]["lastUpdated"]


def test_source_system_keeps_ids_apart():
    a = by_type(convert(PID, source="east"))["Patient"][0]["id"]
    b = by_type(convert(PID, source="west"))["Patient"][0]["id"]
    assert a != b


def test_z_segments_and_unmapped_segments_are_counted():
    out = convert(PID, "DB1|1|PT||Y", "ZPI|1|x", "ZPI|2|y", "NTE|1||patient note")
    assert out.unconsumed == {"DB1": 1, "ZPI": 2, "NTE": 1}


def test_in1_without_a_company_keeps_coverage_and_says_the_payor_is_unknown():
    out = convert(PID, "IN1|1|PLAN7", "IN2|1|123-45-6789", "IN1|2|PLAN8|||||||||||||||SEL")
    coverages = by_type(out)["Coverage"]
    assert out.unconsumed == {}
    assert [c["identifier"][0]["value"] for c in coverages] == ["PLAN7", "PLAN8"]
    dar = {"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}
    assert coverages[0]["payor"] == [{"extension": [dar]}]
    assert "subscriber" not in coverages[0]  # IN1-16 names no insured: no RelatedPerson is invented
    assert coverages[1]["subscriber"] == coverages[1]["beneficiary"]
    assert "RelatedPerson" not in by_type(out)


def test_roles_count_as_used_only_where_a_mapper_maps_them():
    out = convert(
        PID,
        "IN1|1|PLAN7|C1|Carrier",
        "ROL|1|AD|AT|9^Doc^Dee",  # after IN1: the IG maps no insurance-level role
        PV1,
        "ROL|2|DE|CP|8^Con^Cy",  # withdrawn: understood, and no participant
        "TQ1|1||BID",  # no order to time
    )
    assert out.unconsumed == {"ROL": 1, "TQ1": 1}
    enc = by_type(out)["Encounter"][0]
    assert "participant" not in enc


def test_guarantor_self_is_the_patient_and_the_account_lists_each_coverage_with_its_priority():
    out = convert(
        PID,
        "GT1|1||||||||||SEL",
        "IN1|1|P2|C2|Second||||||||||||||||||2",
        "IN1|2|P1|C1|First||||||||||||||||||1",
    )
    found = by_type(out)
    account = found["Account"][0]
    patient_ref = {"reference": f"Patient/{found['Patient'][0]['id']}"}
    assert account["guarantor"] == [{"party": patient_ref}]
    assert [c["priority"] for c in account["coverage"]] == [2, 1]
    assert account["subject"] == [patient_ref]


def test_invalid_values_are_counted_where_they_were():
    out = convert("PID|1||M1^^^EAST^MR||Roe^Ray||19801345|M")
    assert "birthDate" not in by_type(out)["Patient"][0]
    assert out.unconsumed == {"PID-7": 1}


def test_unsupported_message_type_is_quarantined():
    with pytest.raises(Quarantine) as q:
        convert(PID, mtype="BAR^P01")
    assert q.value.reason == "hl7_unsupported_message_type"
    assert q.value.message == "BAR^P01 is not mapped"


def test_missing_pid3_is_quarantined_without_record_values():
    with pytest.raises(Quarantine) as q:
        convert("PID|1||||Roe^Ray")
    assert (q.value.reason, q.value.message) == ("hl7_missing_required", "PID-3 is empty")


def test_trigger_from_evn_when_msh9_has_none():
    out = convert("EVN|A08|20240101", PID, mtype="ADT")
    assert out.container == "ADT^A08"


def test_a40_merge_links_and_old_identifiers():
    out = convert("EVN|A40|20240101", PID, "MRG|OLD9^^^EAST^MR", mtype="ADT^A40^ADT_A39")
    pats = {p["id"]: p for p in by_type(out)["Patient"]}
    survivor = pats[warehouse_id("s", "Patient", "EAST|M1")]
    retired = pats[warehouse_id("s", "Patient", "EAST|OLD9")]
    assert survivor["link"][0]["type"] == "replaces"
    assert retired["link"][0]["type"] == "replaced-by"
    assert {"OLD9", "M1"} <= {i["value"] for i in survivor["identifier"]}


def test_siu_status_by_event():
    sch = "SCH|A1^EHR|F1^SCHED||||R^Reason^L|||||||||||||||||||Booked"
    assert by_type(convert(sch, PID, mtype="SIU^S12"))["Appointment"][0]["status"] == "booked"
    assert by_type(convert(sch, PID, mtype="SIU^S15"))["Appointment"][0]["status"] == "cancelled"


def test_registry_covers_the_mapped_types():
    assert {f"{c}^{e}" for c, e in MAPPERS} >= {
        "ADT^A01",
        "ADT^A08",
        "ADT^A40",
        "ORU^R01",
        "ORM^O01",
        "OML^O21",
        "SIU^S14",
        "DFT^P03",
        "RDE^O11",
        "RAS^O17",
        "VXU^V04",
        "MDM^T02",
    }


@pytest.mark.corpus
def test_corpus_messages_convert_or_quarantine():
    root = Path(os.environ.get("EHRLIFT_CORPUS") or corpus_root()) / "hl7v2"
    if not root.is_dir():
        pytest.skip(f"HL7 v2 corpus not found at {root}: set EHRLIFT_CORPUS to run corpus tests")
    seen: Counter[str] = Counter()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        for unit in iter_units(path):
            if unit.kind != "hl7_message":
                continue
            try:
                msg = parse_message(unit.data)
            except Hl7ParseError:
                continue
            mapped = ((msg.message_code or "").upper(), (msg.trigger_event or "").upper()) in MAPPERS
            try:
                out = convert_message(msg, "corpus", f"{path.name}:{unit.position}")
            except Quarantine:
                seen["mapped_quarantined" if mapped else "unmapped"] += 1
                continue
            except Skip as s:
                assert s.reason == "hl7_no_clinical_content"
                continue
            assert out.resources, f"{path.relative_to(root)} message {unit.position} yielded nothing"
            seen["converted"] += 1
    mapped_total = seen["converted"] + seen["mapped_quarantined"]
    share = seen["converted"] / mapped_total if mapped_total else 0.0
    print(
        f"HL7 v2 corpus: {seen['converted']}/{mapped_total} messages of mapped types converted ({share:.1%})"
    )
    assert share >= 0.95


def test_siu_start_and_end_come_from_tq1_before_the_deprecated_sch_11():
    out = convert(
        "SCH|A1|F1|||||||30|MIN|^^30^20240320090000-0500^20240320093000-0500",
        "TQ1|||||||20240321100000-0500|20240321103000-0500",
        PID,
        mtype="SIU^S12",
    )
    appt = by_type(out)["Appointment"][0]
    assert (appt["start"], appt["end"]) == ("2024-03-21T10:00:00-05:00", "2024-03-21T10:30:00-05:00")
    assert out.unconsumed == {}


def test_prt_after_ft1_is_a_performer_of_the_charge():
    out = convert(
        PID,
        "FT1|1|T1||20240301|20240301|CG|80053^CMP^C4|||1",
        "PRT||AD||PP^Primary Care Provider^HL70912|77^Doe^Jo",
        mtype="DFT^P03",
    )
    charge = by_type(out)["ChargeItem"][0]
    assert out.unconsumed == {}
    assert charge["performer"][-1]["function"]["coding"][0]["code"] == "PP"
    assert charge["performer"][-1]["actor"]["reference"].startswith("PractitionerRole/")
    assert list(charge)[list(charge).index("performer") - 1] in ("occurrenceDateTime", "occurrencePeriod")

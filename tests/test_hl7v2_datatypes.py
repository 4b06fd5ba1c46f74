"""HL7 v2 data types to FHIR: dates, identifiers, names, contact points, coded values, OBX values."""

from __future__ import annotations

import orjson
import pytest

from pipelines.convert.hl7v2 import vocab
from pipelines.convert.hl7v2.datatypes import (
    Ctx,
    cwe,
    cx,
    decimal,
    dtm,
    first,
    instant,
    language_cc,
    reps,
    translated,
    xad,
    xpn,
    xtn,
)
from pipelines.convert.hl7v2.segments.values import value
from pipelines.convert.hl7v2.tokenizer import parse_message


def seg(text: str):
    """One segment, parsed inside a minimal message."""
    raw = f"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5.1\r{text}\r".encode()
    return parse_message(raw).segments[1]


def ctx() -> Ctx:
    return Ctx("src", "unit")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2024", "2024"),
        ("202403", "2024-03"),
        ("20240315", "2024-03-15"),
        ("202403151230", "2024-03-15T12:30:00+00:00"),
        ("20240315123045.12-0500", "2024-03-15T12:30:45.12-05:00"),
        ("20240315123045+0100", "2024-03-15T12:30:45+01:00"),
    ],
)
def test_dtm_keeps_precision_and_offset(raw, expected):
    assert dtm(ctx(), raw, "X-1") == expected


@pytest.mark.parametrize("raw", ["20240230", "20241301", "2024031525", "Aug 15, 1942", "2024-03-15"])
def test_invalid_dates_are_omitted_and_counted(raw):
    c = ctx()
    assert dtm(c, raw, "PID-7") is None
    assert c.lost == {"PID-7": 1}


def test_instant_reads_offsetless_time_as_utc_and_pads():
    assert instant(ctx(), "20240315", "MSH-7") == "2024-03-15T00:00:00Z"
    assert instant(ctx(), "202403151230-0700", "MSH-7") == "2024-03-15T12:30:00-07:00"


def test_decimal_keeps_its_spelling():
    assert orjson.dumps({"v": decimal("1.50")}) == b'{"v":1.50}'
    assert orjson.dumps({"v": decimal("+.5")}) == b'{"v":0.5}'
    assert orjson.dumps({"v": decimal("-007")}) == b'{"v":-7}'
    assert decimal("POS") is None


def test_cwe_keeps_every_triplet_and_original_text():
    s = seg("OBX|1|CWE|2345-7^Glucose^LN^GLU^Gluc^99LAB^2.68^v1^Glucose level^G1^Glu alt^ZZLOCAL")
    assert cwe(ctx(), first(s, 3)) == {
        "coding": [
            {"system": "http://loinc.org", "version": "2.68", "code": "2345-7", "display": "Glucose"},
            {"system": "urn:ehrlift:hl7v2:src:99LAB", "version": "v1", "code": "GLU", "display": "Gluc"},
            {"system": "urn:ehrlift:hl7v2:src:ZZLOCAL", "code": "G1", "display": "Glu alt"},
        ],
        "text": "Glucose level",
    }


def test_coding_system_names():
    assert vocab.system_uri("SCT", "s") == "http://snomed.info/sct"
    assert vocab.system_uri("I9CM", "s") == "http://hl7.org/fhir/sid/icd-9-cm"
    assert vocab.system_uri("HL70078", "s") == "http://terminology.hl7.org/CodeSystem/v2-0078"
    assert vocab.system_uri("2.16.840.1.113883.6.1", "s") == "urn:oid:2.16.840.1.113883.6.1"
    assert vocab.system_uri("MYLAB", "east") == "urn:ehrlift:hl7v2:east:MYLAB"


def test_cwe_without_system_takes_the_fields_table():
    s = seg("PV1|1|I||||||||MED")
    assert cwe(ctx(), first(s, 10), "0069") == {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0069", "code": "MED"}]
    }


def test_a_field_bound_to_table_0292_holds_cvx_codes():
    s = seg("RXA|0|1|20240101||08^Hep B^^^^")
    assert cwe(ctx(), first(s, 5), "0292")["coding"][0]["system"] == "http://hl7.org/fhir/sid/cvx"
    assert vocab.system_uri("HL70292", "s") == "http://hl7.org/fhir/sid/cvx"


@pytest.mark.parametrize(
    ("field", "codes"),
    [
        ("ENG^English^HL70296", [("urn:ietf:bcp:47", "en", "English")]),
        ("CHI^Chinese", [("urn:ietf:bcp:47", "zh", "Chinese")]),
        ("en_us^English^ISO639", [("urn:ietf:bcp:47", "en-US", "English")]),
        ("SPA^Spanish^HL70296^es^Espanol^ISO639", [("urn:ietf:bcp:47", "es", "Spanish")]),
        ("XX^Other^HL70296", [("http://terminology.hl7.org/CodeSystem/v2-0296", "XX", "Other")]),
        ("E^English^99LANG", [("urn:ehrlift:hl7v2:src:99LANG", "E", "English")]),
    ],
)
def test_language_codes_become_bcp47_tags(field, codes):
    cc = language_cc(ctx(), first(seg(f"PID|1||||||||||||||{field}"), 15))
    assert [(c["system"], c["code"], c["display"]) for c in cc["coding"]] == codes


def test_translation_replaces_the_v2_coding_and_keeps_other_systems_and_the_sent_wording():
    mapped = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "H"}
    s = seg("OBX|1|NM|X^Y^LN||1|||HI^High^HL70078^H^Hoch^99FLAGS")
    cc = translated(cwe(ctx(), first(s, 8), "0078"), "0078", mapped)
    assert cc == {
        "coding": [mapped, {"system": "urn:ehrlift:hl7v2:src:99FLAGS", "code": "H", "display": "Hoch"}],
        "text": "High",
    }
    unmapped = cwe(ctx(), first(seg("OBX|1|NM|X^Y^LN||1|||ZZ"), 8), "0078")
    assert translated(unmapped, "0078", None) == {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0078", "code": "ZZ"}]
    }


def test_cx_identifier_with_authority_type_and_period():
    s = seg("PID|1||A77^^^HOSP&2.16.840.1.113883.19.5&ISO^MR^^20200101^20301231")
    assert cx(ctx(), first(s, 3)) == {
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
        "system": "urn:oid:2.16.840.1.113883.19.5",
        "value": "A77",
        "period": {"start": "2020-01-01", "end": "2030-12-31"},
        "assigner": {"display": "HOSP"},
    }


def test_xpn_xad_xtn():
    s = seg(
        "PID|1||1||Zed^Ann^B^Jr^Dr^^L||||||1 Main St^Unit 4^Town^ST^12345^USA^M|||^WPN^PH^^1^555^1234567^89"
    )
    assert xpn(first(s, 5)) == {
        "use": "official",
        "family": "Zed",
        "given": ["Ann", "B"],
        "prefix": ["Dr"],
        "suffix": ["Jr"],
    }
    assert xad(ctx(), first(s, 11)) == {
        "type": "postal",
        "line": ["1 Main St", "Unit 4"],
        "city": "Town",
        "state": "ST",
        "postalCode": "12345",
        "country": "USA",
    }
    assert xtn(first(s, 14)) == {"system": "phone", "value": "+1 555 1234567 X89", "use": "work"}


def test_xtn_email_and_unknown_system():
    s = seg("PID|1||1||||||||||^NET^Internet^ann@example.org~5551234")
    email, bare = (xtn(r) for r in reps(s, 13))
    assert email == {"system": "email", "value": "ann@example.org"}
    assert bare == {
        "_system": {
            "extension": [
                {"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}
            ]
        },
        "value": "5551234",
    }


@pytest.mark.parametrize(
    ("obx", "expected"),
    [
        (
            "OBX|1|NM|x||7.20|mmol/L^^UCUM",
            {
                "valueQuantity": {
                    "value": 7.2,
                    "unit": "mmol/L",
                    "system": "http://unitsofmeasure.org",
                    "code": "mmol/L",
                }
            },
        ),
        ("OBX|1|NM|x||12|per hpf", {"valueQuantity": {"value": 12, "unit": "per hpf"}}),
        (
            "OBX|1|SN|x||>^200|mg/dL",
            {
                "valueQuantity": {
                    "value": 200,
                    "comparator": ">",
                    "unit": "mg/dL",
                    "system": "http://unitsofmeasure.org",
                    "code": "mg/dL",
                }
            },
        ),
        ("OBX|1|SN|x||^1^:^128", {"valueRatio": {"numerator": {"value": 1}, "denominator": {"value": 128}}}),
        ("OBX|1|SN|x||^2^-^5", {"valueRange": {"low": {"value": 2}, "high": {"value": 5}}}),
        ("OBX|1|TX|x||line one~line two", {"valueString": "line one\nline two"}),
        ("OBX|1|DT|x||20240102", {"valueDateTime": "2024-01-02"}),
        ("OBX|1|TM|x||0930", {"valueTime": "09:30:00"}),
    ],
)
def test_obx_values(obx, expected):
    got = orjson.loads(orjson.dumps(value(ctx(), seg(obx))))
    assert got == expected


def test_obx_ed_value_is_an_attachment():
    got = value(ctx(), seg("OBX|1|ED|x||LAB^AP^PDF^Base64^SGVsbG8="))
    assert got == {
        "extension": [
            {
                "url": "http://hl7.org/fhir/5.0/StructureDefinition/extension-Observation.value",
                "valueAttachment": {"contentType": "application/pdf", "data": "SGVsbG8="},
            }
        ]
    }


def test_blank_repetitions_are_dropped_whatever_they_are_made_of():
    s = seg('PID|1||""~^^~ & ~\\X20\\~"~a^b')
    found = reps(s, 3)
    assert [(c.get(1), c.get(2)) for c in found] == [('"', None), ("a", "b")]
    assert reps(s, 3) is found  # read once per segment
    assert reps(s, 4) == [] and reps(s, 99) == []

"""C-CDA: secure parsing, bad input, data types, entry mappers on the HL7 examples, the whole pipeline."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import orjson
import pytest

from pipelines.common.unit import Quarantine
from pipelines.convert.ccda.converter import convert_document
from pipelines.convert.ccda.datatypes import decimal, effective, system_uri, timing, ts
from pipelines.convert.ccda.parse import CcdaRejected, parse_xml
from pipelines.demo import build_patient
from pipelines.demo.ccda import ccd, discharge
from pipelines.run import run_pipeline
from tests.conftest import ledger

HEAD = (
    '<ClinicalDocument xmlns="urn:hl7-org:v3" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
    'xmlns:sdtc="urn:hl7-org:sdtc">'
)
HEADER = (
    '<templateId root="2.16.840.1.113883.10.20.22.1.1"/><templateId root="2.16.840.1.113883.10.20.22.1.2"/>'
    '<id root="2.16.840.1.113883.19" extension="doc-1"/>'
    '<code code="34133-9" codeSystem="2.16.840.1.113883.6.1"/><effectiveTime value="20240102103000-0500"/>'
    '<recordTarget><patientRole><id root="2.16.840.1.113883.19.5" extension="MRN1"/>'
    "<patient><name><given>Alex</given><family>Testperson</family></name>"
    '<administrativeGenderCode code="F" codeSystem="2.16.840.1.113883.5.1"/><birthTime value="19610203"/>'
    '<raceCode code="2106-3" codeSystem="2.16.840.1.113883.6.238" displayName="White"/>'
    '<sdtc:raceCode code="2108-9" codeSystem="2.16.840.1.113883.6.238" displayName="European"/>'
    '<ethnicGroupCode code="2186-5" codeSystem="2.16.840.1.113883.6.238" displayName="Not Hispanic"/>'
    "</patient></patientRole></recordTarget>"
)


def document(body: str, header: str = HEADER) -> bytes:
    body = f"<component><structuredBody>{body}</structuredBody></component>"
    return f"{HEAD}{header}{body}</ClinicalDocument>".encode()


def convert(data: bytes):
    out, doc = convert_document(data, "test", "f:1", "landing/ab/abc")
    return [orjson.loads(r.json) for r in out.resources], out, doc


def by_type(resources, rtype):
    return [r for r in resources if r["resourceType"] == rtype]


# --- bad input ----------------------------------------------------------------------------------------

XXE = b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>' + document("").replace(
    b"<given>Alex</given>", b"<given>&x;</given>"
)
LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
    + b"".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">'.encode() for i in range(9))
    + b"]>"
    + document("").replace(b"<given>Alex</given>", b"<given>&j;</given>")
)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (XXE, "xml_doctype_forbidden"),
        (LAUGHS, "xml_doctype_forbidden"),
        (b"MSH|^~\\&|not xml", "xml_not_well_formed"),
        (b"<html><body><p>Sign in<br></body></html>", "xml_not_well_formed"),
        (b"<html><body><p>ClinicalDocument urn:hl7-org:v3</p></body></html>", "unknown_format"),
        (document("")[:400], "xml_not_well_formed"),
        (b"<r>" * 300 + b"</r>" * 300, "xml_not_well_formed"),  # deeper than libxml2's bound of 256
        (document("").replace(b'extension="2015-08-01"', b""), None),
        (HEAD.encode() + b"<id root='1.2'/></ClinicalDocument>", "ccda_unknown_document_type"),
        (b"<ClinicalDocument><component/></ClinicalDocument>", "ccda_unknown_document_type"),
        (b'<ClinicalDocument xmlns="urn:example"/>', "ccda_wrong_namespace"),
        (b'<section xmlns="urn:hl7-org:v3"><value xsi:type="PQ"/></section>', "ccda_fragment"),
    ],
)
def test_bad_input_is_rejected_with_a_reason(data, reason, monkeypatch):
    if reason is None:
        convert(data)
        return
    from lxml import etree

    parsed = []
    real = etree.fromstring
    monkeypatch.setattr(etree, "fromstring", lambda *a, **k: parsed.append(1) or real(*a, **k))
    with pytest.raises(CcdaRejected) as exc:
        convert(data)
    assert exc.value.reason == reason
    if b"<!DOCTYPE" in data:
        assert not parsed  # an entity bomb or XXE never reaches the parser, so nothing is expanded
    assert "Alex" not in exc.value.message and "root:" not in exc.value.message


def test_entities_are_never_resolved():
    with pytest.raises(CcdaRejected):
        parse_xml(XXE)
    # Even inside the parser, with the DOCTYPE check aside, nothing is expanded or fetched.
    from lxml import etree

    from pipelines.convert.ccda.parse import _parser

    root = etree.fromstring(XXE, _parser())
    assert "root:" not in etree.tostring(root).decode()


def test_a_document_stripped_of_its_namespace_still_converts_and_says_so():
    data = document("").replace(HEAD.encode(), b"<ClinicalDocument>").replace(b"sdtc:raceCode", b"raceCode")
    resources, out, _ = convert(data)
    assert [r["resourceType"] for r in resources] == ["DocumentReference", "Composition", "Patient"]
    assert out.unconsumed == {"ClinicalDocument without the urn:hl7-org:v3 namespace (adopted)": 1}


def test_missing_record_target_is_quarantined():
    header = re.sub(r"<recordTarget>.*</recordTarget>", "", HEADER)
    with pytest.raises(Quarantine) as exc:
        convert(document("", header))
    assert exc.value.reason == "ccda_missing_record_target"


# --- data types -----------------------------------------------------------------------------------------


def test_timestamps_of_every_precision():
    assert ts("2024") == "2024"
    assert ts("202402") == "2024-02"
    assert ts("20240229") == "2024-02-29"
    assert ts("20230229") is None
    assert ts("2024010210-0500") == "2024-01-02T10:00:00-05:00"
    assert ts("20240102103015.123+0130") == "2024-01-02T10:30:15.123+01:30"
    assert ts("20240102103015") == "2024-01-02"  # no zone: cut to the date, never given one
    assert ts("abcdefg") is None


def test_intervals_center_and_timing():
    from lxml import etree

    def el(xml):
        return etree.fromstring(
            f'<e xmlns="urn:hl7-org:v3" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" {xml}'
        )

    assert effective(el('><low value="20240101"/><high value="20240105"/></e>')) == (
        "Period",
        {"start": "2024-01-01", "end": "2024-01-05"},
    )
    assert effective(el('><center value="20240103"/></e>')) == ("dateTime", "2024-01-03")
    assert effective(el('><low nullFlavor="UNK"/></e>')) is None
    q6h = el('xsi:type="PIVL_TS" operator="A"><period value="6" unit="h"/></e>')
    assert orjson.loads(orjson.dumps(timing([q6h]))) == {
        "repeat": {"period": 6, "periodUnit": "h", "frequency": 1}
    }
    ranged = el(
        'xsi:type="PIVL_TS"><period xsi:type="IVL_PQ">'
        '<low value="4" unit="h"/><high value="6" unit="h"/></period></e>'
    )
    assert orjson.loads(orjson.dumps(timing([ranged])))["repeat"] == {
        "period": 4,
        "periodUnit": "h",
        "frequency": 1,
        "periodMax": 6,
    }
    hs = el('xsi:type="EIVL_TS"><event code="HS"/></e>')
    assert timing([hs]) == {"repeat": {"when": ["HS"]}}


def test_decimals_keep_their_spelling_and_unknown_oids_stay_oids():
    assert orjson.dumps({"v": decimal("1.50")}) == b'{"v":1.50}'
    assert orjson.dumps({"v": decimal(".5")}) == b'{"v":0.5}'
    assert decimal("1,5") is None
    assert system_uri("2.16.840.1.113883.6.96") == "http://snomed.info/sct"
    assert system_uri("1.2.3.4.5") == "urn:oid:1.2.3.4.5"
    assert system_uri("not an oid") is None


# --- the header ---------------------------------------------------------------------------------------


def test_header_patient_race_ethnicity_and_document_reference():
    resources, out, _ = convert(document(""))
    assert out.container == "CCD"
    (patient,) = by_type(resources, "Patient")
    assert patient["gender"] == "female" and patient["birthDate"] == "1961-02-03"
    race = next(e for e in patient["extension"] if e["url"].endswith("us-core-race"))
    assert [(x["url"], x.get("valueCoding", {}).get("code")) for x in race["extension"]] == [
        ("ombCategory", "2106-3"),
        ("detailed", "2108-9"),
        ("text", None),
    ]
    (ref,) = by_type(resources, "DocumentReference")
    att = ref["content"][0]["attachment"]
    assert att["url"] == "landing/ab/abc" and att["size"] == len(document("")) and len(att["hash"]) == 28
    assert ref["subject"] == {"reference": f"Patient/{patient['id']}"}
    assert ref["date"] == "2024-01-02T10:30:00-05:00" and patient["meta"]["lastUpdated"] == ref["date"]


# --- entry mappers on the HL7 C-CDA examples (fragments wrapped in a minimal document) --------------------

# fragment folder -> section templateId, the resource type its entries must yield
FRAGMENTS = {
    "Allergies": ("2.16.840.1.113883.10.20.22.2.6.1", "AllergyIntolerance"),
    "Problems": ("2.16.840.1.113883.10.20.22.2.5.1", "Condition"),
    "Medications": ("2.16.840.1.113883.10.20.22.2.1.1", "MedicationStatement"),
    "Results": ("2.16.840.1.113883.10.20.22.2.3.1", "Observation"),
    "Vital Signs": ("2.16.840.1.113883.10.20.22.2.4.1", "Observation"),
    "Immunizations": ("2.16.840.1.113883.10.20.22.2.2.1", "Immunization"),
    "Procedures": ("2.16.840.1.113883.10.20.22.2.7.1", "Procedure"),
    "Encounters": ("2.16.840.1.113883.10.20.22.2.22.1", "Encounter"),
    "Social History": ("2.16.840.1.113883.10.20.22.2.17", "Observation"),
    "Goals": ("2.16.840.1.113883.10.20.22.2.60", "Goal"),
    "Functional Status": ("2.16.840.1.113883.10.20.22.2.14", "Observation"),
    "Mental Status": ("2.16.840.1.113883.10.20.22.2.56", "Observation"),
    "Family History": ("2.16.840.1.113883.10.20.22.2.15", "FamilyMemberHistory"),
    "Plan of Treatment": ("2.16.840.1.113883.10.20.22.2.10", "ServiceRequest"),
    "Health Concerns": ("2.16.840.1.113883.10.20.22.2.58", "Condition"),
}


def _wrap(fragment: bytes, section_template: str) -> bytes:
    text = re.sub(rb"<\?xml[^>]*\?>", b"", fragment).decode("utf-8")
    text = re.sub(r'\sxmlns(:\w+)?="[^"]*"', "", text)
    root = re.search(r"<(\w+)[\s>]", re.sub(r"<!--.*?-->", "", text, flags=re.S)).group(1)
    if root == "ClinicalDocument":  # a stub document without its header: keep its body
        body = text.split("<structuredBody>", 1)[1].rsplit("</structuredBody>", 1)[0]
    elif root == "section":
        body = f"<component>{text}</component>"
    elif root == "component":
        body = text
    elif root == "entry":
        body = f'<component><section><templateId root="{section_template}"/>{text}</section></component>'
    else:
        text = f"<entry>{text}</entry>"
        body = f'<component><section><templateId root="{section_template}"/>{text}</section></component>'
    return document(body)


@pytest.mark.corpus
@pytest.mark.parametrize("folder", sorted(FRAGMENTS))
def test_every_entry_mapper_on_the_hl7_examples(corpus: Path, folder: str):
    section_template, rtype = FRAGMENTS[folder]
    files = sorted((corpus / "ccda" / "C-CDA-Examples" / folder).rglob("*.xml"))
    assert files, folder
    made: Counter[str] = Counter()
    for path in files:
        resources, out, doc = convert(_wrap(path.read_bytes(), section_template))
        # Every entry found is converted or counted as not consumed, exactly once.
        assert sum(doc.found.values()) == sum(doc.converted.values()) + sum(out.unconsumed.values()), (
            path.name
        )
        made.update(r["resourceType"] for r in resources)
    assert made[rtype] > 0, f"{folder}: no {rtype} from {len(files)} examples"


@pytest.mark.corpus
def test_every_fragment_file_is_skipped_not_failed(corpus: Path, tmp_path, make_config, warehouse):
    src = corpus / "ccda" / "C-CDA-Examples" / "Allergies"
    run = run_pipeline(make_config(src))
    con = warehouse()
    assert run.reconciles
    assert {row[3:5] for row in ledger(con)} == {("skipped", "ccda_fragment")}


# --- the whole pipeline ---------------------------------------------------------------------------------


def test_ccd_and_discharge_summary_through_the_pipeline(tmp_path, make_config, warehouse):
    patient = next(p for i in range(60) if discharge(p := build_patient(5, i), 5) is not None and p.allergies)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a-ccd.xml").write_bytes(ccd(patient, 5)[0])
    (src / "b-ds.xml").write_bytes(discharge(patient, 5)[0])
    (src / "c-fragment.xml").write_bytes(b'<section xmlns="urn:hl7-org:v3"><entry/></section>')
    (src / "d-config.xml").write_bytes(b"<configuration><x/></configuration>")
    (src / "e-xxe.xml").write_bytes(XXE)
    run = run_pipeline(make_config(src, source_system="demo"))
    again = run_pipeline(make_config(src, source_system="demo"))
    assert again.totals.units == 0  # a re-run adds nothing
    con = warehouse()
    assert run.reconciles
    assert [row[:5] for row in ledger(con)] == [
        ("a-ccd.xml", 1, "ccda_document", "converted", None),
        ("b-ds.xml", 1, "ccda_document", "converted", None),
        ("c-fragment.xml", 0, "file", "skipped", "ccda_fragment"),
        ("d-config.xml", 0, "file", "quarantined", "unknown_format"),
        ("e-xxe.xml", 1, "ccda_document", "quarantined", "xml_doctype_forbidden"),
    ]
    assert con.execute('SELECT count(*) FROM fhir."Patient"').fetchone() == (1,)
    assert con.execute('SELECT count(*) FROM fhir."DocumentReference"').fetchone() == (2,)


@pytest.mark.parametrize(
    ("template", "name"),
    [
        ("2.16.840.1.113883.10.20.22.1.2", "CCD"),
        ("2.16.840.1.113883.10.20.22.1.8", "Discharge Summary"),
        ("2.16.840.1.113883.10.20.22.1.14", "Referral Note"),
        ("2.16.840.1.113883.10.20.22.1.9", "Progress Note"),
        ("2.16.840.1.113883.10.20.22.1.3", "History and Physical"),
        ("2.16.840.1.113883.10.20.22.1.4", "Consultation Note"),
        ("2.16.840.1.113883.10.20.22.1.13", "Transfer Summary"),
        ("2.16.840.1.113883.10.20.22.1.15", "Care Plan"),
        ("2.16.840.1.113883.10.20.22.1.7", "Operative Note"),
        ("2.16.840.1.113883.10.20.22.1.6", "Procedure Note"),
        ("2.16.840.1.113883.10.20.22.1.10", "Unstructured Document"),
        ("2.16.840.1.113883.3.88.11.32.1", "CCD"),  # R1.1-era HITSP C32
    ],
)
def test_every_document_type_is_identified(template, name):
    header = HEADER.replace("2.16.840.1.113883.10.20.22.1.2", template)
    _, out, _ = convert(document("", header))
    assert out.container == name


def test_an_unstructured_body_becomes_a_second_attachment():
    header = HEADER.replace("2.16.840.1.113883.10.20.22.1.2", "2.16.840.1.113883.10.20.22.1.10")
    body = '<nonXMLBody><text mediaType="application/pdf" representation="B64">JVBER i0x</text></nonXMLBody>'
    data = f"{HEAD}{header}<component>{body}</component></ClinicalDocument>".encode()
    resources, _, _ = convert(data)
    (ref,) = by_type(resources, "DocumentReference")
    assert [c["attachment"].get("contentType") for c in ref["content"]] == [
        "application/xml",
        "application/pdf",
    ]
    assert ref["content"][1]["attachment"]["data"] == "JVBERi0x"
    assert ref["content"][0]["format"]["code"] == "urn:hl7-org:sdwg:ccda-nonXMLBody:1.1"


def test_a_document_over_the_size_bound_is_quarantined_unparsed(monkeypatch):
    from pipelines.convert.ccda import parse

    monkeypatch.setattr(parse, "MAX_BYTES", 1000)
    with pytest.raises(CcdaRejected) as exc:
        convert(document(""))
    assert exc.value.reason == "ccda_too_large"


def test_entry_counts_per_document_reach_the_warehouse_once_and_only_when_committed(
    tmp_path, make_config, warehouse, monkeypatch
):
    from pipelines import load as load_module
    from tests.ccda_accounting import entry_accounting

    src = tmp_path / "in"
    src.mkdir()
    golden = Path(__file__).parent / "golden" / "ccda" / "sections" / "input" / "document.xml"
    (src / "note.xml").write_bytes(golden.read_bytes())

    def boom(con):
        raise RuntimeError("disk full")

    monkeypatch.setattr(load_module, "_quarantine_conflicts", boom)
    with pytest.raises(RuntimeError):
        run_pipeline(make_config(src))
    monkeypatch.undo()
    run_pipeline(make_config(src))
    run_pipeline(make_config(src))  # the committed file is not counted again
    con = warehouse()
    rows = con.execute(
        "SELECT unit_position, container, part, item, found, converted FROM ops.unit_items "
        "ORDER BY part, item"
    ).fetchall()
    s, t = "2.16.840.1.113883.10.20.22.2.", "2.16.840.1.113883.10.20.22.4."
    assert [r[:2] for r in rows] == [(1, "Progress Note")] * 21
    assert [(p.removeprefix(s), i.removeprefix(t), found, conv) for _, _, p, i, found, conv in rows] == [
        ("1.1", "16", 2, 2),
        ("10", "20", 1, 0),
        ("10", "41", 1, 1),
        ("10", "42", 1, 1),
        ("14", "67", 1, 1),
        ("15", "45", 1, 1),
        ("17", "200", 1, 1),
        ("17", "38", 1, 1),
        ("17", "78", 1, 1),
        ("18", "60", 1, 0),
        ("2.1", "52", 2, 2),
        ("22.1", "49", 1, 1),
        ("3.1", "1", 1, 1),
        ("4.1", "26", 1, 1),
        ("5.1", "3", 2, 2),
        ("5.1", "64", 1, 0),
        ("56", "74", 1, 1),
        ("6.1", "30", 2, 2),
        ("60", "121", 1, 1),
        ("65", "202", 1, 1),
        ("7.1", "14", 2, 1),
    ]
    assert con.execute("SELECT item, count FROM ops.unconsumed ORDER BY item").fetchall() == [
        (f"{t}14 (no procedure code)", 1),
        (f"{t}20", 1),
        (f"{t}60 (no policy with a payer)", 1),
        (f"{t}64", 1),
    ]
    assert entry_accounting(con) == (1, 26)

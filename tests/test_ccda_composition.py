"""C-CDA Composition: R4B-valid resources, section narratives as FHIR xhtml, entries that resolve."""

from __future__ import annotations

import copy
import csv
import json
from collections import Counter
from pathlib import Path

import orjson
import pytest
from lxml import etree

from pipelines.convert.ccda.converter import convert_document
from pipelines.convert.ccda.datatypes import NS
from pipelines.convert.ccda.narrative import Narrative
from pipelines.convert.ccda.parse import CcdaRejected, parse_xml
from tests.conftest import REPO
from tests.test_ccda import by_type, convert, document

GOLDEN = REPO / "tests" / "golden" / "ccda"
XHTML = "{http://www.w3.org/1999/xhtml}"
# FHIR's narrative rules (fhir-xhtml.xsd): the basic formatting elements and attributes of HTML 4, no
# scripts, forms, objects or event attributes.
ELEMENTS = frozenset(
    [
        "a",
        "abbr",
        "acronym",
        "address",
        "b",
        "bdo",
        "big",
        "blockquote",
        "br",
        "caption",
        "cite",
        "code",
        "col",
        "colgroup",
        "dd",
        "dfn",
        "div",
        "dl",
        "dt",
        "em",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "hr",
        "i",
        "img",
        "li",
        "ol",
        "p",
        "pre",
        "q",
        "samp",
        "small",
        "span",
        "strong",
        "sub",
        "sup",
        "table",
        "tbody",
        "td",
        "tfoot",
        "th",
        "thead",
        "tr",
        "tt",
        "ul",
        "var",
    ]
)
ATTRIBUTES = frozenset(
    [
        "abbr",
        "accesskey",
        "align",
        "alt",
        "axis",
        "border",
        "cellpadding",
        "cellspacing",
        "char",
        "charoff",
        "charset",
        "cite",
        "class",
        "colspan",
        "dir",
        "frame",
        "headers",
        "height",
        "href",
        "hreflang",
        "id",
        "lang",
        "name",
        "rel",
        "rev",
        "rowspan",
        "rules",
        "scope",
        "span",
        "src",
        "style",
        "summary",
        "tabindex",
        "title",
        "type",
        "valign",
        "width",
    ]
) | {"{http://www.w3.org/XML/1998/namespace}lang"}


def check_fhir_xhtml(div: str) -> None:
    """Raise AssertionError unless div is a FHIR narrative div (txt-1, txt-2)."""
    root = etree.fromstring(div.encode())
    assert root.tag == XHTML + "div"
    for el in root.iter():
        assert isinstance(el.tag, str) and el.tag.startswith(XHTML), el.tag
        assert el.tag[len(XHTML) :] in ELEMENTS, el.tag
        for name, val in el.attrib.items():
            assert name in ATTRIBUTES, name
            if name == "href":
                assert val.startswith(("http:", "https:", "mailto:", "ftp:", "tel:", "#")), val
            if name == "src":
                assert val.startswith(("data:image/", "#")), val[:30]
    assert "".join(root.itertext()).strip() or root.find(f".//{XHTML}img") is not None


def _golden_resources():
    for case in sorted(GOLDEN.glob("*/expected/resources.json")):
        yield case.parent.parent.name, json.loads(case.read_text())["resources"]


NEW_OR_CHANGED = (
    "Composition",
    "CarePlan",
    "Location",
    "Device",
    "Medication",
    "DocumentReference",
    "Encounter",
    "Procedure",
    "MedicationStatement",
    "MedicationRequest",
    "Observation",
)


@pytest.mark.parametrize(
    ("case", "resources"), list(_golden_resources()), ids=lambda v: v if isinstance(v, str) else ""
)
def test_golden_compositions_are_valid_r4b_and_their_entries_resolve(case, resources):
    from fhir.resources.R4B import get_fhir_model_class

    for res in resources:
        if res["resourceType"] in NEW_OR_CHANGED:
            get_fhir_model_class(res["resourceType"]).model_validate(res)
    have = {f"{r['resourceType']}/{r['id']}" for r in resources}
    (comp,) = [r for r in resources if r["resourceType"] == "Composition"]
    stack = list(comp.get("section", []))
    while stack:
        section = stack.pop()
        if "text" in section:
            check_fhir_xhtml(section["text"]["div"])
        assert "text" in section or "entry" in section or "section" in section  # cmp-1
        assert not ("emptyReason" in section and "entry" in section)  # cmp-2
        for entry in section.get("entry", []):
            assert entry["reference"] in have
        stack.extend(section.get("section", []))
    for ref in [*comp["author"], comp.get("custodian"), comp.get("encounter")]:
        assert ref is None or "reference" not in ref or ref["reference"] in have
    (docref,) = [r for r in resources if r["resourceType"] == "DocumentReference" and "masterIdentifier" in r]
    assert docref["context"]["related"] == [{"reference": f"Composition/{comp['id']}"}]


def test_composition_header_and_narrative_edge_cases():
    resources = json.loads((GOLDEN / "composition_narrative" / "expected" / "resources.json").read_text())
    out = resources["resources"]
    (comp,) = by_type(out, "Composition")
    assert comp["status"] == "final" and comp["confidentiality"] == "R"
    assert [a["mode"] for a in comp["attester"]] == ["legal", "professional"]
    assert comp["relatesTo"] == [
        {
            "code": "replaces",
            "targetIdentifier": {"system": "urn:oid:2.16.840.1.113883.19.5", "value": "narr-000"},
        }
    ]
    assert comp["event"][0]["period"] == {
        "start": "2024-05-02T09:00:00-05:00",
        "end": "2024-05-02T09:30:00-05:00",
    }
    assert {a["reference"].split("/")[0] for a in comp["author"]} == {"Practitioner", "Device"}
    plan = comp["section"][0]
    div = plan["text"]["div"]
    assert "<script" not in div and "onclick" not in div and "javascript:" not in div and "<font" not in div
    assert "<ol><li>Rest<br/>and fluids</li>" in div and '<a href="#fn1">[1]</a>' in div
    assert '<img src="data:image/png;base64,' in div and 'class="strikethrough"' in div
    assert div.count(' id="p1"') == 1 and div.count(' id="fu"') == 1  # repeated IDs kept once
    assert ' id="fu"' not in plan["section"][0]["text"]["div"]
    allergies = comp["section"][-1]
    assert (
        allergies["text"]["status"] == "empty"
        and allergies["emptyReason"]["coding"][0]["code"] == "unavailable"
    )
    unconsumed = resources["entries"]["unconsumed"]
    assert unconsumed["section narrative: <script> unwrapped"] == 1
    assert unconsumed["section narrative: multimedia not embeddable (caption kept)"] == 1
    (proc,) = by_type(out, "Procedure")
    assert proc["location"]["reference"].startswith("Location/")
    assert proc["focalDevice"][0]["manipulated"]["reference"].startswith("Device/")
    (med,) = by_type(out, "Medication")
    assert med["batch"] == {"lotNumber": "4AB12"} and "manufacturer" in med
    (stmt,) = by_type(out, "MedicationStatement")
    assert stmt["medicationReference"] == {"reference": f"Medication/{med['id']}"}
    header_enc = next(e for e in by_type(out, "Encounter") if e["identifier"][0]["value"] == "enc-3003")
    visit = next(e for e in by_type(out, "Encounter") if e["identifier"][0]["value"] == "enc-visit-1")
    assert header_enc["location"] == visit["location"]  # the facility, one Location either way


def test_care_plan_document_yields_a_care_plan():
    out = json.loads((GOLDEN / "care_plan" / "expected" / "resources.json").read_text())["resources"]
    (plan,) = by_type(out, "CarePlan")
    (comp,) = by_type(out, "Composition")
    assert comp["event"][0]["detail"] == [{"reference": f"CarePlan/{plan['id']}"}]
    assert plan["intent"] == "plan" and plan["status"] == "unknown"
    assert [r["reference"].split("/")[0] for r in plan["addresses"]] == ["Condition"]
    assert [r["reference"].split("/")[0] for r in plan["goal"]] == ["Goal"]
    assert plan["activity"][0]["reference"]["reference"].startswith("ServiceRequest/")
    assert plan["activity"][1]["outcomeReference"][0]["reference"].startswith("Observation/")


def test_a_document_without_a_body_still_has_a_composition():
    resources, _, _ = convert(document(""))
    (comp,) = by_type(resources, "Composition")
    assert "section" not in comp
    assert comp["title"] == "CCD"  # no <title> and no display: the document type names it
    assert comp["status"] == "preliminary"  # not legally authenticated
    dar = {"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}
    assert comp["author"] == [{"extension": [dar]}]


def _section_texts(corpus: Path):
    with (corpus / "MANIFEST.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        if r["corpus_path"].startswith("ccda/") and r["description"].startswith("C-CDA document"):
            try:
                root = parse_xml((corpus / r["corpus_path"]).read_bytes())
            except CcdaRejected:
                continue
            for section in root.iter(NS + "section"):
                text = next(section.iterchildren(NS + "text"), None)
                if text is not None and len(text):
                    yield root, text


def _c14n(div: str) -> bytes:
    return etree.tostring(etree.fromstring(div.encode()), method="c14n")


@pytest.mark.corpus
def test_the_fast_path_and_the_walk_render_every_corpus_narrative_alike(corpus: Path):
    paths = Counter()
    for root, text in _section_texts(corpus):
        fast = Narrative(root, Counter())._fast(copy.deepcopy(text))
        walked = Narrative(root, Counter()).walk(copy.deepcopy(text))
        paths["fast" if fast is not None else "walk"] += 1
        if walked is not None:
            check_fhir_xhtml(walked)
        if fast is not None and walked is not None:
            assert _c14n(fast) == _c14n(walked)
    print(f"\nsection narratives: {dict(paths)}")
    assert paths["fast"] > paths["walk"] > 0


@pytest.mark.corpus
def test_every_corpus_composition_is_valid(corpus: Path):
    from fhir.resources.R4B import get_fhir_model_class

    with (corpus / "MANIFEST.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["corpus_path"].startswith("ccda/")]
    made = Counter()
    for r in rows:
        if not r["description"].startswith("C-CDA document"):
            continue
        try:
            out, _ = convert_document((corpus / r["corpus_path"]).read_bytes(), "corpus", r["corpus_path"])
        except Exception:
            continue
        for staged in out.resources:
            if staged.resource_type in ("Composition", "CarePlan", "Location", "Device", "Medication"):
                res = orjson.loads(staged.json)
                get_fhir_model_class(res["resourceType"]).model_validate(res)
                made[res["resourceType"]] += 1
                for section in res.get("section", []):
                    if "text" in section:
                        check_fhir_xhtml(section["text"]["div"])
    print(f"\nnew resources on the corpus: {dict(made)}")
    assert made["Composition"] >= 84 and made["Location"] and made["Device"] and made["Medication"]

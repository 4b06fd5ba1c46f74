"""C-CDA parties, authorship, payers and plans: PractitionerRole, RelatedPerson, Provenance, Coverage,
Appointment, planned requests, and entries nested in encounters, on a golden document and the corpus."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import orjson
import pytest

from pipelines.convert.ccda.converter import convert_document
from tests.conftest import REPO

CASE = REPO / "tests" / "golden" / "ccda" / "parties_and_plans" / "input" / "document.xml"
NEW_TYPES = ("PractitionerRole", "RelatedPerson", "Provenance", "Coverage", "Appointment")
T = "2.16.840.1.113883.10.20.22.4."


def _convert(data: bytes):
    out, doc = convert_document(data, "s", "case:1")
    found: dict[str, list[dict]] = {}
    for r in out.resources:
        found.setdefault(r.resource_type, []).append(orjson.loads(r.json))
    return found, doc, out


def _ref(res: dict) -> dict[str, str]:
    return {"reference": f"{res['resourceType']}/{res['id']}"}


def test_every_new_resource_is_valid_r4b():
    from fhir.resources.R4B import get_fhir_model_class

    found, _, _ = _convert(CASE.read_bytes())
    for rtype in NEW_TYPES:
        assert found[rtype], rtype
        for res in found[rtype]:
            get_fhir_model_class(rtype).model_validate(res)


def test_author_role_relatives_and_document_provenance():
    found, _, _ = _convert(CASE.read_bytes())
    (doctor,) = found["Practitioner"]
    (role,) = found["PractitionerRole"]
    clinic = next(o for o in found["Organization"] if o.get("name") == "Good Health Clinic")
    assert role["practitioner"] == _ref(doctor) and role["organization"] == _ref(clinic)
    assert role["specialty"][0]["coding"][0]["code"] == "207Q00000X"
    relations = sorted(
        tuple(c["coding"][0]["code"] for c in p["relationship"]) for p in found["RelatedPerson"]
    )
    # guardian (mother), next of kin (spouse), emergency contact, the policy holder; not the callback contact
    assert relations == [("ECON",), ("MTH", "GUARD"), ("POLHOLD",), ("SPS", "NOK")]
    assert all(p["patient"] == _ref(found["Patient"][0]) for p in found["RelatedPerson"])
    (composition,) = found["Composition"]
    doc_prov = next(p for p in found["Provenance"] if p["target"] == [_ref(composition)])
    assert doc_prov["recorded"] == "2024-03-15T14:30:00-05:00"
    assert [(a["type"]["coding"][0]["code"], a["who"]) for a in doc_prov["agent"]] == [
        ("author", _ref(doctor)),
        ("legal", _ref(doctor)),
        ("custodian", _ref(clinic)),
    ]
    assert doc_prov["agent"][0]["onBehalfOf"] == _ref(clinic)
    # Provenance, parties and relatives are not section entries of the Composition.
    entries = {e["reference"].split("/")[0] for s in composition["section"] for e in s.get("entry", [])}
    assert not entries & {"Provenance", "RelatedPerson", "PractitionerRole"}


def test_payers_become_coverage_with_payer_member_and_holder():
    found, doc, _ = _convert(CASE.read_bytes())
    (cov,) = found["Coverage"]
    holder = next(p for p in found["RelatedPerson"] if p["relationship"][0]["coding"][0]["code"] == "POLHOLD")
    payer = next(o for o in found["Organization"] if o.get("name") == "Example Health Plan")
    assert cov["status"] == "active"
    assert cov["identifier"] == [{"system": "urn:oid:2.16.840.1.113883.19.9", "value": "policy-1"}]
    assert cov["subscriberId"] == "MEMBER-7"
    assert cov["beneficiary"] == _ref(found["Patient"][0])
    assert cov["relationship"]["coding"][0]["code"] == "SELF"
    assert cov["period"] == {"start": "2024-01-01", "end": "2024-12-31"}
    assert cov["payor"] == [_ref(payer)] and cov["policyHolder"] == _ref(holder)
    # The section's templateId carries a newer release's extension: still the Payers section.
    assert doc.converted[f"{T}60"] == 1
    # policy-2 names no payer: no Coverage, but counted, though its Coverage Activity converted.
    assert doc.unconsumed == {f"{T}61 (policy without a payer)": 1}
    assert (doc.found[f"{T}61"], doc.converted[f"{T}61"]) == (2, 1)


def test_a_coverage_activity_without_any_payer_is_one_skipped_entry():
    data = CASE.read_bytes().replace(
        b'extension="PAYER1"/><code code="PAYOR"', b'extension="PAYER1"/><code code="X"'
    )
    data = data.replace(b'<templateId root="2.16.840.1.113883.10.20.22.4.87"/>', b"")
    found, doc, _ = _convert(data)
    assert "Coverage" not in found
    assert doc.converted[f"{T}60"] == 0
    assert doc.unconsumed == {f"{T}60 (no policy with a payer)": 1, f"{T}61 (policy without a payer)": 2}
    assert (doc.found[f"{T}61"], doc.converted[f"{T}61"]) == (2, 0)


def test_planned_encounters_become_appointments_and_plans_become_requests():
    found, _, out = _convert(CASE.read_bytes())
    appts = {a["identifier"][0]["value"]: a for a in found["Appointment"]}
    booked, asked = appts["appt-1"], appts["appt-2"]
    assert (booked["status"], booked["start"], booked["end"]) == (
        "booked",
        "2024-04-15T09:00:00-05:00",
        "2024-04-15T09:30:00-05:00",
    )
    assert [p["actor"]["reference"].split("/")[0] for p in booked["participant"]] == [
        "Patient",
        "Practitioner",
    ]
    # Only one end of the requested time known: R4 lets only a proposed appointment lack start and end.
    assert asked["status"] == "proposed" and asked["requestedPeriod"] == [{"start": "2024-05-01"}]
    assert "start" not in asked
    (med,) = found["MedicationRequest"]
    assert med["intent"] == "plan"
    requests = {s["code"]["coding"][0]["code"]: s["intent"] for s in found["ServiceRequest"]}
    assert requests == {"73761001": "order", "4548-4": "plan"}
    # The only thing the document does not carry is the payer-less policy, counted on its own.
    assert out.unconsumed == {f"{T}61 (policy without a payer)": 1}


def test_entries_nested_in_an_encounter_are_found_and_converted():
    found, doc, _ = _convert(CASE.read_bytes())
    assert doc.found[f"{T}3"] == doc.converted[f"{T}3"] == 1  # problem concern inside the encounter
    assert doc.found[f"{T}14"] == doc.converted[f"{T}14"] == 1  # procedure inside the encounter
    assert [c["code"]["coding"][0]["code"] for c in found["Condition"]] == ["38341003"]
    assert [p["code"]["coding"][0]["code"] for p in found["Procedure"]] == ["80146002"]
    (enc,) = found["Encounter"]
    entry_prov = next(p for p in found["Provenance"] if p["target"] == [_ref(enc)])
    assert entry_prov["recorded"] == "2024-03-10T10:30:00-05:00"


@pytest.mark.corpus
def test_corpus_new_resources_per_vendor_layout(corpus: Path):
    """Count, per source of the corpus's documents, the new resource types and plan entries; all valid."""
    from fhir.resources.R4B import get_fhir_model_class

    with (corpus / "MANIFEST.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["corpus_path"].startswith("ccda/")]
    per: dict[str, Counter[str]] = {}
    for r in rows:
        if not r["description"].startswith("C-CDA document"):
            continue
        try:
            out, doc = convert_document((corpus / r["corpus_path"]).read_bytes(), "corpus", r["corpus_path"])
        except Exception:  # rejected documents are the ledger tests' business
            continue
        counts = per.setdefault(r["source_repo"], Counter())
        counts["documents"] += 1
        for staged in out.resources:
            if staged.resource_type in NEW_TYPES or staged.resource_type == "MedicationRequest":
                res = orjson.loads(staged.json)
                get_fhir_model_class(res["resourceType"]).model_validate(res)
                kind = res["resourceType"]
                if kind == "MedicationRequest":
                    kind += f" ({res['intent']})"
                counts[kind] += 1
        for template in ("39", "40", "41", "42", "44"):  # plan of treatment entries found and converted
            counts["planned entries found"] += doc.found[T + template]
            counts["planned entries converted"] += doc.converted[T + template]
    print("\nC-CDA new resources per vendor layout:")
    for repo, counts in sorted(per.items()):
        print(f"  {repo}: {dict(sorted(counts.items()))}")
    total = sum(per.values(), Counter())
    assert total["Provenance"] >= total["documents"] * 0.8  # documents with a zoned author time
    assert total["PractitionerRole"] and total["RelatedPerson"] and total["Coverage"] and total["Appointment"]
    assert total["planned entries converted"] >= 0.9 * total["planned entries found"] > 0

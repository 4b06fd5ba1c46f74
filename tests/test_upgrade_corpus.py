"""The upgrade on third-party DSTU2 data: Synthea Bundles against the same patients' R4 Bundles, and the
official DSTU2 examples (each converted or quarantined with a documented reason)."""

from __future__ import annotations

import orjson
import pytest
from fhir.resources.R4B import get_fhir_model_class

from pipelines.common.reasons import check_reason
from pipelines.common.unit import Quarantine
from pipelines.convert.fhir.upgrade import upgrade
from pipelines.convert.fhir.upgrade.agreement import Agreement, compare_bundles
from pipelines.run import run_pipeline

# Fields where the two Synthea exports themselves differ, not the upgrade: the DSTU2 writer puts an
# internal counter ("110") where the R4 writer puts a 10-digit NPI, and lists one result of a panel.
SOURCE_DIFFERENCES = {
    ("Practitioner", "identity", "identifier"),
    ("DiagnosticReport", "values", "result"),
}


@pytest.fixture(scope="module")
def agreement(corpus) -> Agreement:
    left, right = corpus / "fhir-dstu2" / "synthea-bundles", corpus / "fhir-r4" / "synthea-bundles"
    result = Agreement()
    pairs = [(p, right / p.name) for p in sorted(left.glob("*.json")) if (right / p.name).exists()]
    assert len(pairs) == 14
    for dstu2, r4 in pairs:
        compare_bundles(orjson.loads(dstu2.read_bytes()), orjson.loads(r4.read_bytes()), result)
    return result


def test_paired_synthea_agreement(agreement):
    # Measured 98.56% over every field both releases carry; the target of 99% is missed only through
    # the source differences above (311 of 21,553 compared fields), and every other field agrees fully.
    assert agreement.rate() >= 0.985
    misses = sum(agreement.both[k] - agreement.agree[k] for k in agreement.both)
    assert misses == sum(agreement.both[k] for k in SOURCE_DIFFERENCES) == 311
    others = [k for k in agreement.both if k not in SOURCE_DIFFERENCES]
    assert agreement.rate(others) == 1.0, [k for k in others if agreement.agree[k] != agreement.both[k]]
    assert sum(agreement.both[k] for k in others) > 20_000
    assert sum(agreement.paired.values()) >= 3_250
    assert set(agreement.quarantined) == {"Claim", "ImagingStudy", "Device"}


def test_patient_identifiers_compare_over_the_systems_both_exports_carry(agreement):
    # The R4 export adds a passport number the DSTU2 one never had; SSN, MRN, licence and Synthea ids
    # are in both and all agree.
    key = ("Patient", "identity", "identifier")
    assert agreement.both[key] == agreement.agree[key] == 12


def test_intent_is_derived_not_compared(agreement):
    # DSTU2 has no intent: HL7's map says "order" for MedicationOrder (as Synthea's R4 writer does) and
    # "plan" for CarePlan (where Synthea's R4 writer says "order"). Reported apart, never in the rate.
    assert dict(agreement.derived_both) == {
        ("MedicationRequest", "status", "intent"): 406,
        ("CarePlan", "status", "intent"): 29,
    }
    assert agreement.derived_agree[("MedicationRequest", "status", "intent")] == 406
    assert agreement.derived_agree[("CarePlan", "status", "intent")] == 0
    assert not any(k[2] == "intent" for k in agreement.both)


def test_every_upgraded_synthea_resource_has_a_valid_r4_shape(corpus):
    checked = 0
    for path in sorted((corpus / "fhir-dstu2" / "synthea-bundles").glob("*.json")):
        for entry in orjson.loads(path.read_bytes())["entry"]:
            try:
                upgraded = upgrade(entry["resource"], "1.0")
            except Quarantine:
                continue
            for res in upgraded:
                get_fhir_model_class(res["resourceType"]).model_validate(res)
                checked += 1
    assert checked == 3_314  # before the warehouse folds the bundles' shared Practitioners


def test_every_official_dstu2_example_is_converted_or_quarantined_with_a_reason(corpus):
    outcomes = {"converted": 0, "quarantined": 0}
    for path in sorted((corpus / "fhir-dstu2" / "dstu2-examples" / "dist" / "examples").glob("*.json")):
        source = orjson.loads(path.read_bytes())
        try:
            upgraded = upgrade(source, "1.0")
        except Quarantine as q:
            check_reason(q.reason, "quarantined")
            assert q.message.startswith("DSTU2 ")  # names the release and the element, never a value
            outcomes["quarantined"] += 1
            continue
        for res in upgraded:  # fhir.resources' R4B models: the closest pydantic check of R4 shapes
            get_fhir_model_class(res["resourceType"]).model_validate(res)
        outcomes["converted"] += 1
    assert outcomes["converted"] == 124 and sum(outcomes.values()) == 322


def test_official_dstu2_examples_through_the_pipeline(corpus, make_config, warehouse):
    run = run_pipeline(make_config(corpus / "fhir-dstu2" / "dstu2-examples" / "dist" / "examples"))
    con = warehouse()
    assert run.reconciles
    errors = con.execute("SELECT count(*) FROM ops.ledger WHERE reason = 'converter_error'").fetchone()
    assert errors == (0,)
    upgraded = con.execute(
        "SELECT count(*) FROM ops.ledger l JOIN ops.files f USING (file_sha256) "
        "WHERE f.format LIKE '%dstu2' AND l.outcome = 'converted'"
    ).fetchone()[0]
    assert upgraded >= 100

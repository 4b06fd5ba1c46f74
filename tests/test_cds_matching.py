"""Order matching beyond exact codes: terminology maps, retired-code remaps, RxNorm ingredients, mappings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.cds import config as cds_config
from pipelines.cds.app import call as call_app
from pipelines.cds.app import create_app
from pipelines.cds.matching import Matching
from pipelines.common.errors import ConfigError
from pipelines.common.paths import shipped
from terminology.loaders import load_release
from tests.cds_builders import LOCAL, LOINC, RECENT, RXNORM, Client, WarehouseBuilder, write_config
from tests.cds_requests import ORDERS, order

RRF = Path(__file__).parent / "fixtures" / "terminology" / "rxnorm" / "RxNorm_full_07072025" / "rrf"
NDC = "http://hl7.org/fhir/sid/ndc"
# A product chain the RxNorm fixture lacks, as RXNREL would give it: SBD tradename_of SCD consists_of SCDC
# has_ingredient IN (codes in the fixture's fictional 99000xx range).
CHAIN = [
    ("9900020", "TTY", "SBD"),
    ("9900021", "TTY", "SCD"),
    ("9900022", "TTY", "SCDC"),
    ("9900023", "TTY", "IN"),
    ("9900020", "tradename_of", "9900021"),
    ("9900021", "consists_of", "9900022"),
    ("9900022", "has_ingredient", "9900023"),
]


def _coded(rtype: str, rid: str, system: str, code: str, **extra) -> dict:
    field = {"AllergyIntolerance": "code", "Observation": "code"}.get(rtype, "medicationCodeableConcept")
    subject = "patient" if rtype == "AllergyIntolerance" else "subject"
    res = {"resourceType": rtype, "id": rid, subject: {"reference": "Patient/p1"}, **extra}
    res[field] = {"coding": [{"system": system, "code": code, "display": f"{rtype} {rid}"}]}
    return res


@pytest.fixture
def state(tmp_path: Path):
    """p1 (MRN 1001): an allergy to fictiprofen (IN 9900001) and to the chain's ingredient, an active
    order for fictiprofen 200 MG (SCD 9900005), and a recent lab result coded only with a local code that
    normalization mapped to LOINC 4548-4. The RxNorm fixture release is loaded by its own loader."""
    wh = tmp_path / "wh.duckdb"
    w = WarehouseBuilder(wh)
    w.patient("p1", "1001")
    active = {"clinicalStatus": {"coding": [{"code": "active"}]}}
    w.add(_coded("AllergyIntolerance", "a1", RXNORM, "9900001", **active))
    w.add(_coded("AllergyIntolerance", "a2", RXNORM, "9900023", **active))
    w.add(_coded("MedicationRequest", "m1", RXNORM, "9900005", status="active", authoredOn="2024-01-02"))
    lab = {"status": "final", "effectiveDateTime": RECENT, "category": [{"coding": [{"code": "laboratory"}]}]}
    w.add(_coded("Observation", "o1", LOCAL, "A1C", **lab))
    w.con.execute(
        "INSERT INTO ops.mapping_log (run_id, source_system, source_code, target_system, target_code, "
        "method, data_source, kind) VALUES ('run-20250101T000000Z-aaaaaa', ?, 'A1C', ?, '4548-4', "
        "'crosswalk', 'legacy', 'coding')",
        [LOCAL, LOINC],
    )
    load_release(w.con, "rxnorm", RRF)
    w.con.executemany(
        "INSERT INTO terminology.properties (system, code, property, value) VALUES (?, ?, ?, ?)",
        [(RXNORM, *row) for row in CHAIN],
    )
    w.close()
    cfg = cds_config.load(
        write_config(tmp_path, "http://127.0.0.1:1", Client.rsa()), warehouse=wh, host=None, port=None
    )

    def make(matching: Matching | None = None):
        st = create_app(cfg, matching=matching).state.cds
        st.refresh()
        return st

    return make


def _cards(st, resource: dict) -> list[tuple[str, str]]:
    """(card type, matched-record lines) for an order-sign call drafting `resource`."""
    result = call_app(st, ORDERS, order("order-sign", resource), "iss")
    assert result is not None
    return [
        (c["source"]["topic"]["code"], c["detail"].split("legacy record:\n", 1)[1]) for c in result["cards"]
    ]


def _med(system: str, code: str) -> dict:
    return {
        "resourceType": "MedicationRequest",
        "id": "d1",
        "status": "draft",
        "intent": "order",
        "subject": {"reference": "Patient/ehr-1"},
        "medicationCodeableConcept": {"coding": [{"system": system, "code": code}]},
    }


def test_an_ndc_order_is_the_rxnorm_product_and_its_ingredient(state):
    # NDC 00000000001 is SCD 9900005 (RXNSAT), which has ingredient 9900001 (RXNREL).
    cards = _cards(state(), _med(NDC, "00000000001"))
    assert cards == [
        ("order_allergy_conflict", "- AllergyIntolerance a1 (AllergyIntolerance, same ingredient)"),
        (
            "order_duplicate_medication",
            "- MedicationRequest m1 (MedicationRequest, same code, last 2024-01-02)",
        ),
    ]


def test_a_retired_rxcui_is_matched_through_its_remap(state):
    # 9900002 was retired and remapped to 9900005 (RXNCUI).
    assert [t for t, _ in _cards(state(), _med(RXNORM, "9900002"))] == [
        "order_allergy_conflict",
        "order_duplicate_medication",
    ]


def test_an_unrelated_product_matches_nothing(state):
    assert _cards(state(), _med(RXNORM, "9900003")) == []  # another SCD, no relation to fictiprofen


def test_a_brand_product_reaches_its_ingredient_over_three_relations_only_when_the_rules_allow(
    state, tmp_path
):
    assert _cards(state(), _med(RXNORM, "9900020")) == [
        ("order_allergy_conflict", "- AllergyIntolerance a2 (AllergyIntolerance, same ingredient)")
    ]
    data = json.loads((shipped("schemas") / "cds" / "matching.json").read_text())
    data["ingredients"]["max_depth"] = 2
    assert _cards(state(Matching(data)), _med(RXNORM, "9900020")) == []


def test_a_lab_order_matches_a_local_result_through_normalization(state):
    lab = {
        "resourceType": "ServiceRequest",
        "id": "s1",
        "status": "draft",
        "intent": "order",
        "subject": {"reference": "Patient/ehr-1"},
        "code": {"coding": [{"system": LOINC, "code": "4548-4"}], "text": "HbA1c"},
    }
    assert _cards(state(), lab) == [
        ("order_duplicate_lab", f"- Observation o1 (Observation, same code, last {RECENT})")
    ]


def test_matching_rules_are_checked(tmp_path):
    data = json.loads((shipped("schemas") / "cds" / "matching.json").read_text())
    data["checks"][0]["levels"] = ["code", "class"]
    path = tmp_path / "m.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="unknown record kind or level"):
        Matching.load(path)

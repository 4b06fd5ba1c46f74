"""CDS Hooks service over loopback: discovery, golden review cards, order checks, resolution, audit."""

from __future__ import annotations

from pathlib import Path

import duckdb
import httpx
import pytest

from pipelines.cds.app import conforms, validator
from tests.cds_builders import ISSUER, LOINC, RXNORM, Client, issues_warehouse, service
from tests.cds_requests import ORDERS, REVIEW, call, cards_of, golden, order, patient_view, stable


@pytest.fixture
def client() -> Client:
    return Client.rsa()


@pytest.fixture
def wh(tmp_path: Path) -> Path:
    path = tmp_path / "wh.duckdb"
    issues_warehouse(path)
    return path


def test_discovery_lists_services_and_validates(tmp_path, wh, client):
    with service(tmp_path, wh, client) as base:
        url = f"{base}/cds-services"
        resp = httpx.get(url, headers={"Authorization": f"Bearer {client.token(url)}"}, timeout=10)
    assert resp.status_code == 200
    body = resp.json()
    assert not list(validator("discovery").iter_errors(body))
    assert [(s["id"], s["hook"]) for s in body["services"]] == [
        (REVIEW, "patient-view"),
        (ORDERS, "order-select"),
        (ORDERS, "order-sign"),
    ]
    assert body["services"][0]["prefetch"] == {"patient": "Patient/{{context.patientId}}"}


def test_patient_view_golden_cards_for_a_patient_with_every_issue(tmp_path, wh, client):
    with service(tmp_path, wh, client) as base:
        cards = cards_of(call(base, client, REVIEW, patient_view("EHR-77")))  # found through ops.backload_ids
        by_mrn = cards_of(call(base, client, REVIEW, patient_view("other-ehr-id", "1001")))
    golden("patient_view_p1", cards)
    assert stable(by_mrn) == stable(cards)
    assert [c["source"]["topic"]["code"] for c in cards] == [
        "unmapped_code",
        "remapped_code",
        "conflicting_duplicate",
        "quarantined",
        "identity_review",
        "migration_summary",
        "duplicate_fact",
    ]
    assert cards[0]["indicator"] == "warning"
    assert all(
        c["source"]["label"] == "ehrlift migration review (run run-20250101T000000Z-aaaaaa)" for c in cards
    )


def test_clean_patient_gets_only_the_summary_and_unknown_patient_none(tmp_path, wh, client):
    with service(tmp_path, wh, client) as base:
        clean = cards_of(call(base, client, REVIEW, patient_view("ehr-2", "1002")))
        unknown = cards_of(call(base, client, REVIEW, patient_view("ehr-9", "99999")))
        no_prefetch = call(base, client, REVIEW, patient_view("ehr-9"))
    assert [c["source"]["topic"]["code"] for c in clean] == ["migration_summary"]
    assert "Condition 1, Patient 1" in clean[0]["detail"]
    assert unknown == []
    assert no_prefetch.status_code == 412 and no_prefetch.json()["resourceType"] == "OperationOutcome"


def test_review_page_lists_items_and_needs_its_token(tmp_path, wh, client):
    with service(tmp_path, wh, client) as base:
        cards = cards_of(call(base, client, REVIEW, patient_view("EHR-77")))
        page = httpx.get(cards[0]["links"][0]["url"], timeout=10)
        missing = httpx.get(f"{base}/cds-services/{REVIEW}/review/not-a-token", timeout=10)
    assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
    assert "Diabetes type 2" in page.text and "hl7_bad_value_type" in page.text
    assert "Essential hypertension" not in page.text  # another patient's record
    assert missing.status_code == 404


def test_order_duplicating_a_migrated_medication_warns(tmp_path, wh, client):
    draft = {
        "resourceType": "MedicationRequest",
        "id": "draft-1",
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "860975"}], "text": "metformin"},
    }
    with service(tmp_path, wh, client) as base:
        sign = cards_of(call(base, client, ORDERS, order("order-sign", draft)))
        select = cards_of(call(base, client, ORDERS, order("order-select", draft)))
        other_selected = cards_of(
            call(base, client, ORDERS, order("order-select", draft, selections=["X/1"]))
        )
        clean = cards_of(call(base, client, ORDERS, order("order-sign", draft, mrn="1002")))
    golden("order_duplicate_medication", sign)
    assert stable(select) == stable(sign)
    card = sign[0]
    assert card["indicator"] == "warning" and card["selectionBehavior"] == "at-most-one"
    assert card["suggestions"][0]["actions"][0] == {
        "type": "delete",
        "description": "Remove the draft MedicationRequest that repeats the migrated record",
        "resourceId": "MedicationRequest/draft-1",
    }
    assert all(r["display"] for r in card["overrideReasons"])
    assert other_selected == [] and clean == []


def test_order_conflicting_with_allergy_and_recent_lab(tmp_path, wh, client):
    penicillin = {
        "resourceType": "MedicationRequest",
        "id": "d2",
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "7984"}]},
    }
    a1c = {
        "resourceType": "ServiceRequest",
        "id": "d3",
        "status": "draft",
        "intent": "order",
        "code": {"coding": [{"system": LOINC, "code": "4548-4"}]},
    }
    glucose = {**a1c, "code": {"coding": [{"system": LOINC, "code": "2345-7"}]}}  # migrated, but not recent
    with service(tmp_path, wh, client) as base:
        allergy = cards_of(call(base, client, ORDERS, order("order-sign", penicillin)))
        lab = cards_of(call(base, client, ORDERS, order("order-select", a1c)))
        old_lab = cards_of(call(base, client, ORDERS, order("order-sign", glucose)))
    assert [(c["source"]["topic"]["code"], c["indicator"]) for c in allergy] == [
        ("order_allergy_conflict", "critical")
    ]
    assert "penicillin V" in allergy[0]["detail"]
    assert [(c["source"]["topic"]["code"], c["indicator"]) for c in lab] == [("order_duplicate_lab", "info")]
    assert old_lab == []


def test_wrong_hook_and_bad_request_are_refused(tmp_path, wh, client):
    with service(tmp_path, wh, client) as base:
        wrong = call(base, client, ORDERS, patient_view("EHR-77"))
        url = f"{base}/cds-services/{REVIEW}"
        bad = httpx.post(
            url,
            json={"hook": "patient-view"},
            timeout=10,
            headers={"Authorization": f"Bearer {client.token(url)}"},
        )
        unknown = httpx.post(f"{base}/cds-services/nope", json={}, timeout=10)
    assert wrong.status_code == 400 and wrong.json()["resourceType"] == "OperationOutcome"
    assert bad.status_code == 400 and unknown.status_code == 404


def test_feedback_and_invocations_are_audited_without_values(tmp_path, wh, client):
    with service(tmp_path, wh, client) as base:
        cards = cards_of(call(base, client, REVIEW, patient_view("EHR-77")))
        cards_of(call(base, client, REVIEW, patient_view("ehr-9", "99999")))
        url = f"{base}/cds-services/{REVIEW}/feedback"
        feedback = {
            "feedback": [
                {
                    "card": cards[0]["uuid"],
                    "outcome": "overridden",
                    "outcomeTimestamp": "2026-01-02T03:04:05Z",
                    "overrideReason": {
                        "reason": {"system": "urn:x", "code": "r1"},
                        "userComment": "SECRET COMMENT",
                    },
                },
                {
                    "card": cards[1]["uuid"],
                    "outcome": "accepted",
                    "outcomeTimestamp": "2026-01-02T03:04:06Z",
                    "acceptedSuggestions": [{"id": "s1"}],
                },
            ]
        }
        assert not list(validator("feedback").iter_errors(feedback))
        resp = httpx.post(
            url, json=feedback, headers={"Authorization": f"Bearer {client.token(url)}"}, timeout=10
        )
        bad = httpx.post(
            url,
            json={"feedback": [{"card": "x"}]},
            timeout=10,
            headers={"Authorization": f"Bearer {client.token(url)}"},
        )
        spool = (tmp_path / "wh.duckdb.cds-spool.jsonl").read_text()
    assert resp.status_code == 200 and bad.status_code == 400
    for value in ("1001", "EHR-77", "Diabetes", "SECRET", "p1"):
        assert value not in spool
    con = duckdb.connect(str(wh), read_only=True)
    audit = con.execute(
        "SELECT detail->>'$.hook', detail->>'$.issuer', detail->>'$.patient_resolved', detail->>'$.cards' "
        "FROM ops.phi_access WHERE command = 'cds-hooks' AND detail->>'$.kind' = 'invocation' ORDER BY 4 DESC"
    ).fetchall()
    assert audit == [
        ("patient-view", ISSUER, "true", str(len(cards))),
        ("patient-view", ISSUER, "false", "0"),
    ]
    counts = con.execute(
        "SELECT c.card_type, f.outcome, f.accepted_suggestions, f.override_code FROM ops.cds_feedback f "
        "JOIN ops.cds_cards c USING (card_uuid) ORDER BY 2"
    ).fetchall()
    assert counts == [
        (cards[1]["source"]["topic"]["code"], "accepted", 1, None),
        (cards[0]["source"]["topic"]["code"], "overridden", 0, "r1"),
    ]
    assert not (tmp_path / "wh.duckdb.cds-spool.jsonl").exists()


def test_order_with_a_contained_medication_and_orders_without_codes(tmp_path, wh, client):
    contained = {
        "resourceType": "MedicationRequest",
        "id": "d5",
        "status": "draft",
        "intent": "order",
        "contained": [
            {
                "resourceType": "Medication",
                "id": "med",
                "code": {"coding": [{"system": RXNORM, "code": "860975", "display": "metformin 500 MG"}]},
            }
        ],
        "medicationReference": {"reference": "#med"},
    }
    uncoded = {
        "resourceType": "MedicationRequest",
        "id": "d6",
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": {"text": "free text only"},
    }
    body = order("order-sign", contained)
    body["context"]["draftOrders"]["entry"].append({"resource": uncoded})
    body["context"]["draftOrders"]["entry"].append(
        {"resource": {"resourceType": "NutritionOrder", "id": "n1"}}
    )
    with service(tmp_path, wh, client) as base:
        cards = cards_of(call(base, client, ORDERS, body))
    assert [c["source"]["topic"]["code"] for c in cards] == ["order_duplicate_medication"]
    assert cards[0]["suggestions"][0]["actions"][0]["resourceId"] == "MedicationRequest/d5"
    assert "metformin 500 MG" in cards[0]["detail"]


def test_schemas_hold_the_specification_invariants():
    def errors(name: str, body: dict) -> list[str]:
        found = [e.message for e in validator(name).iter_errors(body)]
        assert conforms(name, body) == (not found)  # the service's compiled validator agrees
        return found

    draft = {"resourceType": "MedicationRequest", "id": "d1"}
    select = order("order-select", draft)
    assert errors("request", select) == []
    assert errors("request", {**select, "context": {**select["context"], "selections": ["d1"]}})  # ord-1
    assert errors("request", {**select, "context": {"patientId": "x", "userId": "u"}})  # no draftOrders
    no_user = patient_view("x")
    del no_user["context"]["userId"]
    assert errors("request", no_user)
    assert errors("request", {**patient_view("x"), "fhirAuthorization": {}})  # cds-r-1 and its fields
    card = {"summary": "s", "indicator": "info", "source": {"label": "l"}, "selectionBehavior": "at-most-one"}
    one = {"label": "a", "isRecommended": True}
    assert errors("response", {"cards": [{**card, "suggestions": [one, {"label": "b"}]}]}) == []
    assert errors("response", {"cards": [{**card, "suggestions": [one, {**one, "label": "b"}]}]})  # resp-1
    delete = {"type": "delete", "description": "remove"}
    assert errors("response", {"cards": [{**card, "suggestions": [{"label": "a", "actions": [delete]}]}]})
    ok = {**delete, "resourceId": "MedicationRequest/d1"}
    assert errors("response", {"cards": [{**card, "suggestions": [{"label": "a", "actions": [ok]}]}]}) == []
    no_behavior = {k: v for k, v in card.items() if k != "selectionBehavior"}
    assert errors("response", {"cards": [{**no_behavior, "suggestions": [{"label": "a"}]}]})  # resp-6

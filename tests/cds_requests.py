"""The CDS Hooks tests' request builders and response checks: hook bodies, signed calls, golden cards."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import httpx

from pipelines.cds.app import validator
from tests.cds_builders import MRN_SYSTEM, RECENT, Client

GOLDEN = Path(__file__).parent / "golden" / "cds"
REGENERATE = os.environ.get("EHRLIFT_REGENERATE_GOLDEN") == "1"
REVIEW = "ehrlift-migration-review"
ORDERS = "ehrlift-order-check"


def patient_view(
    patient_id: str,
    mrn: str | None = None,
    *,
    identifiers: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A patient-view request; with an MRN (or identifiers) it carries the `patient` prefetch."""
    body: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/u1", "patientId": patient_id},
        **extra,
    }
    if mrn is not None:
        identifiers = [{"type": {"coding": [{"code": "MR"}]}, "system": MRN_SYSTEM, "value": mrn}]
    if identifiers is not None:
        body["prefetch"] = {
            "patient": {"resourceType": "Patient", "id": patient_id, "identifier": identifiers}
        }
    return body


def order(
    hook: str,
    resource: dict[str, Any],
    mrn: str | None = "1001",
    selections: list[str] | None = None,
    *,
    identifiers: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """An order-select or order-sign request drafting one resource."""
    body = patient_view("ehr-1", mrn, identifiers=identifiers)
    body["hook"] = hook
    body["context"]["draftOrders"] = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": resource}],
    }
    if hook == "order-select":
        body["context"]["selections"] = selections or [f"{resource['resourceType']}/{resource['id']}"]
    return body


def call(base: str, client: Client, service_id: str, body: dict[str, Any]) -> httpx.Response:
    """POST a request (checked against the request schema first) with a freshly signed token."""
    url = f"{base}/cds-services/{service_id}"
    assert not list(validator("request").iter_errors(body))
    return httpx.post(url, json=body, headers={"Authorization": f"Bearer {client.token(url)}"}, timeout=10)


def cards_of(resp: httpx.Response) -> list[dict[str, Any]]:
    """The cards of a 200 response that follows the response schema."""
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert not [e.message for e in validator("response").iter_errors(body)]
    return body["cards"]


def stable(cards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cards with their per-call values (uuids, link tokens, ports, run ids) replaced, for comparison."""
    text = json.dumps(cards, indent=2, sort_keys=True)
    text = re.sub(r'"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"', '"<uuid>"', text)
    text = re.sub(r'/review/[A-Za-z0-9_-]+"', '/review/<token>"', text)
    text = re.sub(r"http://127\.0\.0\.1:\d+", "<base>", text).replace(RECENT, "<recent>")
    text = re.sub(r"run-\d{8}T\d{6}Z-[0-9a-f]{6}", "<run>", text)
    return json.loads(text)


def golden(name: str, cards: list[dict[str, Any]]) -> None:
    """Compare with tests/golden/cds/NAME.json (EHRLIFT_REGENERATE_GOLDEN=1 rewrites it)."""
    path = GOLDEN / f"{name}.json"
    text = json.dumps(stable(cards), indent=2, sort_keys=True) + "\n"
    if REGENERATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs: regenerate with EHRLIFT_REGENERATE_GOLDEN=1"

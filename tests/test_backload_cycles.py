"""Reference cycles on Millennium: broken by create, then a documented JSON Patch, where allowed."""

from __future__ import annotations

import os
from pathlib import Path

from pipelines.backload.runner import backload_status, plan_backload
from pipelines.common.warehouse import open_warehouse
from tests.backload_builders import SNOMED, build_warehouse, cc, condition, patient
from tests.backload_server import FhirServer
from tests.test_backload_send import _send
from tests.test_backload_site import site_file

GOLDEN = Path(__file__).parent / "golden" / "backload" / "millennium-r4-cycles.ndjson"
REGENERATE = os.environ.get("EHRLIFT_REGENERATE_GOLDEN") == "1"
EXT = "https://example.org/fhir/StructureDefinition/"
ROLE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"


def resources() -> list[dict]:
    """Two cycles. Encounter e1 <-> Condition c1 closes through an Encounter extension, which Millennium
    documents `add /extension/-` for (encounter_patch.yaml). RelatedPerson rp1 <-> Coverage cov1 closes
    through a RelatedPerson extension and Coverage.subscriber, neither of which a documented patch adds."""
    return [
        patient("p1", "M1"),
        {"resourceType": "Organization", "id": "o1", "name": "Payer"},
        {
            "resourceType": "Encounter",
            "id": "e1",
            "status": "finished",
            "type": [cc(SNOMED, "185349003")],
            "subject": {"reference": "Patient/p1"},
            "extension": [{"url": EXT + "reason-condition", "valueReference": {"reference": "Condition/c1"}}],
        },
        condition("c1", "p1", encounter={"reference": "Encounter/e1"}),
        {
            "resourceType": "RelatedPerson",
            "id": "rp1",
            "patient": {"reference": "Patient/p1"},
            "name": [{"family": "R"}],
            "relationship": [cc(ROLE, "WIFE")],
            "extension": [{"url": EXT + "coverage", "valueReference": {"reference": "Coverage/cov1"}}],
        },
        {
            "resourceType": "Coverage",
            "id": "cov1",
            "status": "active",
            "beneficiary": {"reference": "Patient/p1"},
            "payor": [{"reference": "Organization/o1"}],
            "subscriber": {"reference": "RelatedPerson/rp1"},
        },
    ]


def test_golden_plan_breaks_the_patchable_cycle_and_refuses_the_other(tmp_path):
    wh = build_warehouse(tmp_path / "w.duckdb", resources())
    plan = plan_backload(wh, "millennium-r4", tmp_path / "out", site_file=site_file(tmp_path))
    text = (plan.folder / "entries.ndjson").read_text()
    if REGENERATE:
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "the cycle plan differs: run `make golden`"
    with open_warehouse(wh, read_only=True) as con:
        rows = con.execute(
            "SELECT resource_type || '/' || warehouse_id, status, step, reason, detail, deferred "
            "FROM ops.backload_plan WHERE plan_id = ? ORDER BY seq",
            [plan.plan_id],
        ).fetchall()
    assert rows == [
        ("Organization/o1", "send", "create", None, None, None),
        ("Patient/p1", "send", "create", None, None, None),
        ("Encounter/e1", "send", "create", None, None, '["extension"]'),
        ("Condition/c1", "send", "create", None, None, None),
        ("Encounter/e1", "send", "patch", None, None, None),
        ("RelatedPerson/rp1", "not_sendable", "none", "backload_reference_cycle",
         "extension[0].valueReference", None),
        ("Coverage/cov1", "not_sendable", "none", "backload_reference_not_sendable", "subscriber", None),
    ]  # fmt: skip


def test_the_cycle_is_sent_as_create_then_patch_to_the_millennium_server(tmp_path):
    wh = build_warehouse(tmp_path / "w.duckdb", resources())
    with FhirServer("millennium") as server:
        loc, org = server.seed([{"resourceType": "Location", "name": "ED"}, {"resourceType": "Organization"}])
        plan_backload(wh, "millennium-r4", tmp_path / "out", site_file=site_file(tmp_path, loc, org))
        assert _send(wh, server, concurrency=4) == {"created": 4, "updated": 1}
        [enc] = server.search("Encounter")
        [cond] = server.search("Condition")
        # Each side points at the other's server id: the Encounter's extension came by `add /extension/-`.
        assert enc["extension"][0]["valueReference"] == {"reference": f"Condition/{cond['id']}"}
        assert cond["encounter"] == {"reference": f"Encounter/{enc['id']}"}
        assert len(server.search(f"Encounter/{enc['id']}/_history")) == 2  # created, then patched
        assert _send(wh, server) == {}  # a re-send after success sends nothing
        assert server.writes() == 5
    status = backload_status(wh, "millennium-r4")
    assert status["reconciles"] and status["complete"]
    assert {t["resource_type"]: t["created"] for t in status["types"] if t["created"]} == {
        "Condition": 1,
        "Encounter": 1,
        "Organization": 1,
        "Patient": 1,
    }
    assert status["totals"]["not_sendable"] == 2


def test_a_replan_after_only_the_create_went_still_patches_the_closing_reference(tmp_path):
    """A kill between a cycle's create and its patch, then a re-plan: the server has the Encounter without
    its extension, so the new plan patches it (never `unchanged`)."""
    wh = build_warehouse(tmp_path / "w.duckdb", resources())
    site = site_file(tmp_path)
    plan_id = plan_backload(wh, "millennium-r4", tmp_path / "out", site_file=site).plan_id
    with open_warehouse(wh) as con:  # as the journal's fold leaves it: everything but the patch went
        con.execute(
            "INSERT INTO ops.backload_ids SELECT target, resource_type, warehouse_id, 'srv-' || seq, '1', "
            "now(), 'http://127.0.0.1:1/fhir', content_sha256 FROM ops.backload_plan JOIN ops.backload_plans "
            "USING (plan_id) WHERE plan_id = ? AND status = 'send' AND step = 'create'",
            [plan_id],
        )
    again = plan_backload(wh, "millennium-r4", tmp_path / "out2", site_file=site)
    with open_warehouse(wh, read_only=True) as con:
        rows = con.execute(
            "SELECT resource_type || '/' || warehouse_id, status, step FROM ops.backload_plan "
            "WHERE plan_id = ? AND status <> 'not_sendable' ORDER BY seq",
            [again.plan_id],
        ).fetchall()
    assert rows == [
        ("Encounter/e1", "send", "patch"),
        ("Organization/o1", "unchanged", "none"),
        ("Patient/p1", "unchanged", "none"),
        ("Condition/c1", "unchanged", "none"),
    ]

"""Changed resources after a send: JSON Patch (Millennium Patient, Encounter), PUT with If-Match, 412."""

from __future__ import annotations

import httpx
import orjson

from pipelines.backload.patch import not_patchable, operations_for
from pipelines.backload.plan import build_plan
from pipelines.backload.profiles import target_profile
from pipelines.backload.runner import backload_status, plan_backload
from pipelines.common.reasons import reason_codes
from pipelines.common.warehouse import open_warehouse
from tests.backload_builders import MRN, build_warehouse, condition, ident, patient
from tests.backload_server import FhirServer
from tests.test_backload_send import _send

PATIENT_OPS = target_profile("millennium-r4").rule("Patient").patch


def test_operations_are_only_the_documented_ones_and_touch_only_what_was_sent():
    old = patient("p", "M1", telecom=[{"system": "phone", "value": "1"}])
    new = patient("p", "M1", gender="male", telecom=[{"system": "phone", "value": "2"}])
    new["identifier"].append(ident("M9"))
    new["name"][0]["family"] = "Other"
    # The server holds what was sent plus what the EHR added itself (ids, an identifier of its own).
    server = patient("p", "M1", telecom=[{"system": "phone", "value": "1", "id": "t0"}])
    server["identifier"].insert(0, {"system": "urn:ehr", "value": "E1", "id": "i0"})
    assert operations_for(old, new, server, PATIENT_OPS) == [
        {"op": "replace", "path": "/gender", "value": "male"},
        {"op": "add", "path": "/identifier/-", "value": {"system": MRN, "value": "M9"}},
        {"op": "replace", "path": "/name/0/family", "value": "Other"},
        {"op": "remove", "path": "/telecom/0"},
        {"op": "add", "path": "/telecom/-", "value": {"system": "phone", "value": "2"}},
    ]
    assert not_patchable(old, new, PATIENT_OPS) == []
    gone = {k: v for k, v in old.items() if k != "gender"}
    assert not_patchable(old, gone, PATIENT_OPS) == ["gender"]  # no documented remove of gender
    two_names = {**new, "name": [*new["name"], {"family": "B"}]}
    assert not_patchable(old, {**two_names, "active": True}, PATIENT_OPS) == ["active", "name"]
    encounter_ops = target_profile("millennium-r4").rule("Encounter").patch
    enc = {"status": "in-progress", "period": {"start": "2024-01-01"}}
    assert not_patchable(enc, {**enc, "status": "finished"}, encounter_ops) == ["status"]
    assert not_patchable(enc, {**enc, "period": {"start": "2024-01-02"}}, encounter_ops) == []
    assert not_patchable(enc, {**enc, "period": {"start": "2024-01-01", "end": "x"}}, encounter_ops) == [
        "period"
    ]


def _change(wh, resources):
    with open_warehouse(wh) as con:
        for r in resources:
            con.execute(
                f'UPDATE fhir."{r["resourceType"]}" SET resource = ? WHERE id = ?',
                [orjson.dumps(r).decode(), r["id"]],
            )


def test_millennium_patch_put_and_version_conflicts(tmp_path):
    p1 = patient("p1", "M1")
    wh = build_warehouse(tmp_path / "w.duckdb", [p1, patient("p2", "M2"), condition("c1", "p1")])
    plan_backload(wh, "millennium-r4", tmp_path / "out")
    with FhirServer("millennium") as server:
        assert _send(wh, server) == {"created": 3}
        changed = patient("p1", "M1", gender="male")
        changed["identifier"].append(ident("M1-B"))
        cond = condition("c1", "p1", code="73211009")
        no_gender = {k: v for k, v in patient("p2", "M2").items() if k != "gender"}
        _change(wh, [changed, no_gender, cond])
        entries = {e.key: e for e in plan_backload(wh, "millennium-r4", tmp_path / "o2").entries}
        assert (entries["Patient/p1"].status, entries["Patient/p1"].step) == ("send", "patch")
        assert (entries["Patient/p2"].reason, entries["Patient/p2"].detail) == (
            "backload_change_not_patchable",
            "gender",
        )
        assert entries["Condition/c1"].step == "update"
        # Someone edits the Patient in the EHR after our create: the recorded version is stale (412), the
        # sender re-reads, takes the difference again and patches the current version.
        (sid,) = [r["id"] for r in server.search("Patient?identifier=M1")]
        version = httpx.get(f"{server.base}/Patient/{sid}").json()["meta"]["versionId"]
        edit = [{"op": "add", "path": "/telecom/-", "value": {"system": "phone", "value": "555"}}]
        patch = {"Content-Type": "application/json-patch+json"}
        url = f"{server.base}/Patient/{sid}"
        assert httpx.patch(url, json=edit, headers=patch).status_code == 412  # If-Match is required
        bump = httpx.patch(url, json=edit, headers={**patch, "If-Match": f'W/"{version}"'})
        assert bump.status_code == 200 and bump.content == b""  # Millennium: an empty body, the ETag
        assert httpx.patch(url, json=edit, headers={**patch, "If-Match": f'W/"{version}"'}).status_code == 412
        assert _send(wh, server) == {"updated": 2}
        after = httpx.get(f"{server.base}/Patient/{sid}").json()
        assert after["gender"] == "male" and after["telecom"] == [edit[0]["value"]]  # the EHR's edit stays
        assert [i["value"] for i in after["identifier"]] == ["M1", "M1-B"]
        assert server.search("Condition")[0]["code"]["coding"][0]["code"] == "73211009"
    status = backload_status(wh, "millennium-r4")
    assert status["totals"]["updated"] == 2 and status["totals"]["not_sendable"] == 1
    assert status["reconciles"] and status["complete"]
    assert "backload_change_not_patchable" in reason_codes()


def test_conflicts_are_bounded_then_failed_with_a_reason(tmp_path):
    wh = build_warehouse(tmp_path / "w.duckdb", [patient("p1", "M1")])
    plan_backload(wh, "generic-r4", tmp_path / "out")
    with FhirServer("generic") as server:
        assert _send(wh, server, "generic-r4") == {"created": 1}
        _change(wh, [patient("p1", "M1", gender="male")])
        plan_backload(wh, "generic-r4", tmp_path / "o2")
        server.faults(status=412, count=100)  # every write answers 412: re-read, retry, give up
        assert _send(wh, server, "generic-r4") == {"failed": 1}
        server.faults(status=0, count=0)
        with open_warehouse(wh, read_only=True) as con:
            row = con.execute(
                "SELECT http_status, issue_codes, attempts FROM ops.backload_results WHERE state = 'failed'"
            ).fetchone()
        profile = target_profile("generic-r4")
        assert row[:2] == (412, "version-conflict") and row[2] >= profile.conflict_retries + 1
        assert _send(wh, server, "generic-r4", failed_only=True) == {"updated": 1}  # PUT with If-Match
        assert server.search("Patient")[0]["gender"] == "male"
    assert backload_status(wh, "generic-r4")["totals"]["updated"] == 1


def test_a_change_with_no_earlier_body_or_no_update_is_refused(tmp_path):
    org = {"resourceType": "Organization", "id": "o1", "name": "General"}
    wh = build_warehouse(tmp_path / "w.duckdb", [org, patient("p1", "M1")])
    mill = target_profile("millennium-r4")
    with open_warehouse(wh) as con:
        sent = {"Organization/o1": "older", "Patient/p1": "older"}
        got = {e.key: (e.reason, e.detail) for e in build_plan(con, mill, sent, lambda _k: None)}
    assert got == {
        "Organization/o1": ("backload_update_not_supported", "update"),  # create only on Millennium
        "Patient/p1": ("backload_update_not_supported", "patch"),
    }

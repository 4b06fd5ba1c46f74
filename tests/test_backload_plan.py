"""Back-load plans: golden plans per profile, every not_sendable reason, determinism and the gate."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import orjson
import pytest

from pipelines.backload.plan import build_plan
from pipelines.backload.profiles import target_profile
from pipelines.backload.runner import plan_backload
from pipelines.common.errors import ConfigError, ExitCode
from pipelines.common.reasons import reason_codes
from pipelines.common.warehouse import open_warehouse
from pipelines.quality.gate import GateBlocked
from pipelines.report.render import write_report
from terminology.normalize import EXT_METHOD
from tests.backload_builders import (
    CODESET,
    LOINC,
    build_warehouse,
    condition,
    patient,
    small_resources,
    vital,
)

GOLDEN = Path(__file__).parent / "golden" / "backload"
REGENERATE = os.environ.get("EHRLIFT_REGENERATE_GOLDEN") == "1"


def _reasons(entries) -> dict[str, tuple[str, str | None]]:
    return {e.key: (e.reason, e.detail) for e in entries if e.status == "not_sendable"}


@pytest.mark.parametrize("profile", ["millennium-r4", "generic-r4"])
def test_golden_plan(tmp_path, profile):
    wh = build_warehouse(tmp_path / "w.duckdb", small_resources())
    first = plan_backload(wh, profile, tmp_path / "out")
    text = (first.folder / "entries.ndjson").read_text()
    golden = GOLDEN / f"{profile}.ndjson"
    if REGENERATE:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text(), f"{profile} plan differs: run `make golden`"
    # Deterministic: a second plan of the same warehouse is the same plan, stored once.
    again = plan_backload(wh, profile, tmp_path / "out2")
    assert again.plan_id == first.plan_id and (again.folder / "entries.ndjson").read_text() == text
    with open_warehouse(wh, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM ops.backload_plans").fetchone()[0] == 1
        stored = con.execute("SELECT count(*) FROM ops.backload_plan").fetchone()[0]
    assert stored == len(small_resources())  # every stored resource has exactly one plan entry
    summary = orjson.loads((first.folder / "summary.json").read_bytes())
    assert sum(summary["totals"].values()) == len(small_resources())


def test_every_millennium_refusal_has_its_reason(tmp_path):
    wh = build_warehouse(tmp_path / "w.duckdb", small_resources(), stand_ins=("p1",))
    with open_warehouse(wh) as con:
        entries = build_plan(con, target_profile("millennium-r4"))
    assert _reasons(entries) == {
        "Patient/p1": ("backload_stand_in", None),
        "Patient/p2": ("backload_element_not_accepted", "deceasedBoolean"),
        "Patient/p3": ("backload_required_element_missing", "identifier"),
        "Location/loc1": ("backload_type_not_writable", None),
        "Encounter/enc1": ("backload_reference_not_sendable", "location[0].location, subject"),
        "Observation/obs1": ("backload_reference_not_sendable", "subject"),
        "Observation/obs-social": ("backload_observation_category", "category"),
        "Observation/obs-mixed": ("backload_would_mix_codings", "code.coding"),
        "Observation/obs-p2": ("backload_reference_not_sendable", "subject"),
        "Condition/cond1": ("backload_reference_not_sendable", "subject"),
        "Condition/cond-missing": ("backload_required_element_missing", "category, clinicalStatus"),
    }
    with open_warehouse(wh) as con:
        generic = {e.key: e for e in build_plan(con, target_profile("generic-r4"))}
    assert generic["Patient/p1"].status == "send"  # a generic server takes the stand-in as it is
    documented = {c for c, e in reason_codes().items() if e["outcome"] == "not_sendable"}
    used = {r for r, _d in _reasons(entries).values()}
    assert used <= documented


def test_codings_are_made_target_appropriate_and_added_ones_never_count_as_a_mix(tmp_path):
    added = {"system": LOINC, "code": "8867-4", "extension": [{"url": EXT_METHOD, "valueCode": "crosswalk"}]}
    obs = vital("o1", "p1")
    obs["code"] = {"coding": [{"system": CODESET, "code": "703511"}, added]}
    wh = build_warehouse(tmp_path / "w.duckdb", [patient("p1", "M1"), obs])
    with open_warehouse(wh) as con:
        mill = build_plan(con, target_profile("millennium-r4"))
        generic = build_plan(con, target_profile("generic-r4"))
    sent = next(e for e in mill if e.key == "Observation/o1")
    assert sent.status == "send" and sent.body["code"] == {"coding": [{"system": LOINC, "code": "8867-4"}]}
    kept = next(e for e in generic if e.key == "Observation/o1")
    assert kept.body["code"]["coding"] == obs["code"]["coding"]  # a generic server takes every coding


def test_dependency_order_and_cycles_broken_by_create_then_update(tmp_path):
    enc = {
        "resourceType": "Encounter",
        "id": "e1",
        "status": "finished",
        "subject": {"reference": "Patient/p1"},
        "diagnosis": [{"condition": {"reference": "Condition/c1"}}],
    }
    cond = condition("c1", "p1", encounter={"reference": "Encounter/e1"})
    org = {"resourceType": "Organization", "id": "o1", "name": "Org"}
    pat = patient("p1", "M1", managingOrganization={"reference": "Organization/o1"})
    wh = build_warehouse(tmp_path / "w.duckdb", [cond, enc, pat, org])
    with open_warehouse(wh) as con:
        entries = build_plan(con, target_profile("generic-r4"))
        # A profile where neither side of the cycle can be updated refuses both, and says why.
        generic = target_profile("generic-r4")
        create_only = dataclasses.replace(generic, default_interactions=("create",))
        refused = build_plan(con, create_only)
    order = [(e.key, e.step, e.deferred) for e in entries]
    assert order == [
        ("Organization/o1", "create", []),
        ("Patient/p1", "create", []),
        ("Encounter/e1", "create", ["diagnosis"]),
        ("Condition/c1", "create", []),
        ("Encounter/e1", "update", []),
    ]
    assert "diagnosis" not in entries[2].body and entries[4].body["diagnosis"]
    assert _reasons(refused) == {
        "Encounter/e1": ("backload_reference_cycle", "diagnosis[0].condition"),
        "Condition/c1": ("backload_reference_not_sendable", "encounter"),
    }


def test_unchanged_and_changed_after_send(tmp_path):
    wh = build_warehouse(tmp_path / "w.duckdb", [patient("p1", "M1"), condition("c1", "p1")])
    mill = target_profile("millennium-r4")
    with open_warehouse(wh) as con:
        first = {e.key: e for e in build_plan(con, mill)}
        sent = {k: e.content_sha256 for k, e in first.items()}
        assert {e.status for e in build_plan(con, mill, sent)} == {"unchanged"}
        sent["Patient/p1"] = sent["Condition/c1"] = "an older content"
        again = {e.key: e for e in build_plan(con, mill, sent)}
    # Millennium updates Condition (PUT) but has only patch for Patient: without the body sent before (no
    # stored plan carried it) there is nothing to take a JSON Patch from (test_backload_update has the rest).
    assert again["Condition/c1"].step == "update" and again["Condition/c1"].status == "send"
    assert (again["Patient/p1"].reason, again["Patient/p1"].detail) == (
        "backload_update_not_supported",
        "patch",
    )


def test_blocked_run_needs_a_recorded_override(tmp_path, capsys):
    from pipelines.cli import main

    wh = build_warehouse(tmp_path / "w.duckdb", [patient("p1", "M1")], status="blocked")
    with pytest.raises(GateBlocked):
        plan_backload(wh, "millennium-r4", tmp_path / "out")
    args = ["backload", "plan", "--warehouse", str(wh), "--out", str(tmp_path / "out")]
    assert main(args) == ExitCode.GATE_BLOCKED
    assert main([*args, "--override-gate"]) == ExitCode.CONFIG  # a reason is required
    assert main([*args, "--override-gate", "--reason", "signed off by the data steward"]) == 0
    with open_warehouse(wh, read_only=True) as con:
        assert con.execute("SELECT override_reason FROM ops.backload_plans").fetchall() == [
            ("signed off by the data steward",)
        ]
    with pytest.raises(ConfigError):
        target_profile("millennium")  # coding rules only: not a back-load profile
    assert "M1" not in capsys.readouterr().err


def test_report_has_a_plan_section_without_values(tmp_path):
    wh = build_warehouse(tmp_path / "w.duckdb", small_resources())
    plan_backload(wh, "millennium-r4", tmp_path / "out")
    files = write_report(wh, tmp_path / "report")
    data = orjson.loads(files.data.read_bytes())
    (section,) = data["backload"]
    assert section["target"] == "millennium-r4" and section["status"]["reconciles"]
    rows = {(r["resource_type"], r["status"], r["reason"]): r["count"] for r in section["plan"]}
    assert rows[("Observation", "not_sendable", "backload_reference_not_sendable")] == 1  # obs-p2
    html = files.html.read_text()
    assert 'id="backload"' in html
    for value in ("M1", "M2", "8867-4", "p1", "General"):
        assert value not in files.data.read_text() and f">{value}<" not in html

"""The person record in a back-load: one Patient per person, every identifier kept, references re-pointed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import orjson
import pytest

from pipelines.backload.checks import references
from pipelines.backload.runner import backload_status, plan_backload
from pipelines.cli import main
from pipelines.common.reasons import reason_codes
from pipelines.common.warehouse import open_warehouse
from tests.backload_server import FhirServer
from tests.test_backload_send import _send

GOLDEN = Path(__file__).parent / "golden" / "backload"
SITES = Path(__file__).parent.parent / "terminology" / "targets" / "sites"
REGENERATE = os.environ.get("EHRLIFT_REGENERATE_GOLDEN") == "1"


@pytest.fixture(scope="module")
def noisy(tmp_path_factory) -> Path:
    """A demo warehouse whose sources record the same people differently (the identity stage links them)."""
    root = tmp_path_factory.mktemp("identity-noise")
    assert main(["demo-data", str(root / "demo"), "--patients", "6", "--identity-noise", "--seed", "7"]) == 0
    wh = root / "wh.duckdb"
    assert (
        main(["run", str(root / "demo" / "sources"), "--warehouse", str(wh), "--source-system", "demo"]) == 0
    )
    return wh


def _persons(wh: Path) -> tuple[dict[str, str], dict[str, set[tuple[str, str]]]]:
    """(source Patient -> person, person -> every identifier its source Patients carry)."""
    with open_warehouse(wh, read_only=True) as con:
        person_of = dict(con.execute("SELECT patient_id, person_id FROM ops.person_map").fetchall())
        rows = con.execute('SELECT id, resource FROM fhir."Patient"').fetchall()
    idents: dict[str, set[tuple[str, str]]] = {}
    for pid, text in rows:
        for i in orjson.loads(text).get("identifier") or []:
            idents.setdefault(person_of.get(pid, pid), set()).add((i.get("system"), i.get("value")))
    return person_of, idents


def _compact(entries) -> bytes:
    """The plan without bodies: each entry's outcome, the Patients its body refers to, and for a Patient the
    identifiers it carries (count), so a change in who is sent or what points where shows as a diff."""
    lines = []
    for e in entries:
        row = {"seq": e.seq, "key": e.key, "status": e.status, "step": e.step, "reason": e.reason}
        row["detail"] = e.detail
        if e.body is not None:
            row["patients"] = sorted({ref for _p, ref in references(e.body) if ref.startswith("Patient/")})
            if e.resource_type == "Patient":
                row["identifiers"] = len(e.body.get("identifier") or [])
        lines.append(orjson.dumps(row, option=orjson.OPT_SORT_KEYS))
    return b"\n".join(lines) + b"\n"


@pytest.mark.parametrize("profile", ["millennium-r4", "generic-r4"])
def test_golden_person_plan(noisy, tmp_path, profile):
    result = plan_backload(noisy, profile, tmp_path / "out")
    golden = GOLDEN / f"person-{profile}.ndjson"
    if REGENERATE:
        golden.write_bytes(_compact(result.entries))
    assert _compact(result.entries) == golden.read_bytes(), (
        f"{profile} person plan differs: run `make golden`"
    )
    person_of, idents = _persons(noisy)
    persons = set(person_of.values())
    patients = {e.warehouse_id: e for e in result.entries if e.resource_type == "Patient"}
    merged = {k for k, e in patients.items() if e.status == "merged"}
    # Every source Patient is accounted for: its person's survivor, or merged into it (a documented outcome).
    assert merged == {p for p, person in person_of.items() if p != person} and merged
    assert all(patients[p].reason == "backload_merged_into_person" for p in merged)
    assert reason_codes()["backload_merged_into_person"]["outcome"] == "merged"
    for e in result.entries:
        refs = {ref for _p, ref in references(e.body or {})}
        assert not {f"Patient/{m}" for m in merged} & refs, "a reference still points at a merged Patient"
        if e.resource_type == "Patient" and e.status == "send":
            assert e.warehouse_id in persons and "link" not in e.body
            kept = {(i.get("system"), i.get("value")) for i in e.body["identifier"]}
            assert kept == idents[e.warehouse_id]  # every source identifier of the person, once
    assert len(persons) < len(person_of)


def test_send_gives_one_server_patient_per_person(noisy, tmp_path):
    noisy = Path(shutil.copy(noisy, tmp_path / "sent.duckdb"))  # the shared warehouse stays unsent
    plan = plan_backload(noisy, "millennium-r4", tmp_path / "out")
    person_of, idents = _persons(noisy)
    sendable = {e.warehouse_id for e in plan.entries if e.resource_type == "Patient" and e.status == "send"}
    with FhirServer("millennium") as server:
        counts = _send(noisy, server)
        assert counts.get("failed", 0) == 0 and counts["created"] == plan.summary["writes"]
        on_server = server.search("Patient")
        assert len(on_server) == len(sendable) == len(set(person_of.values()) & sendable)
        server_ids = {p["id"] for p in on_server}
        for person in on_server:  # found by each of its source identifiers, and only it
            for system, value in list(idents[_warehouse_id(noisy, person["id"])])[:3]:
                found = server.search(f"Patient?identifier={system}|{value}")
                assert [p["id"] for p in found] == [person["id"]]
        for rtype, key in (("Observation", "subject"), ("Condition", "subject"), ("Encounter", "subject")):
            for r in server.search(rtype):
                assert r[key]["reference"].split("/")[1] in server_ids
    status = backload_status(noisy, "millennium-r4")
    assert status["totals"]["merged"] == len(person_of) - len(set(person_of.values()))
    assert status["reconciles"] and status["complete"]


def test_the_demo_site_profile_sends_most_of_the_demo(noisy, tmp_path):
    """The documented demo site profile (drops, defaults, existing Locations and Practitioners) against the
    same plan without it: most resources become sendable, and the rest keep a reason."""
    plain = plan_backload(noisy, "millennium-r4", tmp_path / "plain")
    site = plan_backload(noisy, "millennium-r4", tmp_path / "site", site_file=SITES / "demo-millennium.json")
    total = sum(site.summary["totals"].values())
    assert site.summary["totals"]["send"] > total / 2 > plain.summary["totals"].get("send", 0)
    assert site.summary["totals"]["mapped"] > 0 and site.summary["site_changes"]
    assert sum(plain.summary["totals"].values()) == total  # every resource in both plans, once


def _warehouse_id(wh: Path, server_id: str) -> str:
    with open_warehouse(wh, read_only=True) as con:
        return con.execute(
            "SELECT warehouse_id FROM ops.backload_ids WHERE resource_type = 'Patient' AND server_id = ?",
            [server_id],
        ).fetchone()[0]

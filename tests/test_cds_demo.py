"""Golden CDS Hooks cards for demo patients with known migration issues, from `demo-data` + `run`."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from pipelines.cds import review
from pipelines.cds.rules import Rules
from pipelines.cds.snapshot import Snapshot, build
from pipelines.cli import main
from tests.cds_builders import Client, service
from tests.cds_requests import ORDERS, REVIEW, call, cards_of, golden, order, patient_view


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Snapshot]]:
    """The project's own demo (deliberate defects, identity noise) migrated into a fresh warehouse."""
    root = tmp_path_factory.mktemp("cdsdemo")
    assert main(["demo-data", "--patients", "12", "--seed", "5", "--identity-noise", str(root / "demo")]) == 0
    wh = root / "wh.duckdb"
    code = main(
        [
            "run",
            "--warehouse",
            str(wh),
            "--source-system",
            "demo",
            "--no-progress",
            str(root / "demo" / "sources"),
        ]
    )
    assert code == 0
    snap = build(wh, Rules.load().data)
    yield wh, snap
    snap.con.close()


def _persons_with(snap: Snapshot, card_type: str) -> list[str]:
    rules = Rules.load()
    return sorted(p for p in snap.docs if card_type in review.find(snap, p, rules).items)


def _identifiers(snap: Snapshot, person: str) -> list[dict[str, str]]:
    """An identifier that names only this person: what the EHR's Patient would carry."""
    for value, entries in sorted(snap.identifiers.items()):
        if {p for _s, p in entries} == {person}:
            return [{"system": entries[0][0], "value": value}]
    raise AssertionError("the person has no identifier of its own")


def _review(tmp_path: Path, wh: Path, snap: Snapshot, person: str) -> list[dict]:
    client = Client.rsa()
    with service(tmp_path, wh, client) as base:
        body = patient_view("ehr-demo", identifiers=_identifiers(snap, person))
        return cards_of(call(base, client, REVIEW, body))


def test_the_demo_conflicting_duplicate_reaches_its_patients_review(tmp_path, demo):
    wh, snap = demo
    persons = _persons_with(snap, "conflicting_duplicate")
    assert len(persons) == 1  # the demo writes exactly one conflicting duplicate of a patient's record
    cards = _review(tmp_path, wh, snap, persons[0])
    golden("demo_conflicting_duplicate", cards)
    assert "conflicting_duplicate" in [c["source"]["topic"]["code"] for c in cards]


def test_the_demo_release_upgrade_failures_reach_their_patients_review(tmp_path, demo):
    wh, snap = demo
    persons = _persons_with(snap, "quarantined")
    assert len(persons) == 1
    cards = _review(tmp_path, wh, snap, persons[0])
    golden("demo_quarantined", cards)
    quarantined = next(c for c in cards if c["source"]["topic"]["code"] == "quarantined")
    assert "upgrade\\_unmappable\\_code" in quarantined["detail"]


def test_a_demo_patient_without_findings_gets_the_summary_only(tmp_path, demo):
    wh, snap = demo
    rules = Rules.load()
    clean = [p for p in sorted(snap.docs) if not review.find(snap, p, rules).items]
    smallest = min(clean, key=lambda p: (review.find(snap, p, rules).total, p))  # the fewest records
    cards = _review(tmp_path, wh, snap, smallest)
    golden("demo_summary_only", cards)
    assert [c["source"]["topic"]["code"] for c in cards] == ["migration_summary"]


def test_a_demo_order_repeating_a_migrated_medication_warns(tmp_path, demo):
    wh, snap = demo
    # The person with the most active migrated medications; the order repeats the first one's code.
    meds = {p: [f for f in facts if f.kind == "medication"] for p, facts in snap.facts.items()}
    person = max(sorted(meds), key=lambda p: len(meds[p]))
    fact = meds[person][0]
    coding = sorted(k for k in fact.keys if k.startswith("code "))[0][len("code ") :]
    system, _, code = coding.partition("|")
    draft = {
        "resourceType": "MedicationRequest",
        "id": "draft-1",
        "status": "draft",
        "intent": "order",
        "subject": {"reference": "Patient/ehr-demo"},
        "medicationCodeableConcept": {
            "coding": [{"system": system, "code": code}],
            "text": "the drafted drug",
        },
    }
    client = Client.rsa()
    with service(tmp_path, wh, client) as base:
        body = order("order-sign", draft, None, identifiers=_identifiers(snap, person))
        cards = cards_of(call(base, client, ORDERS, body))
    golden("demo_order_duplicate_medication", cards)
    assert [c["source"]["topic"]["code"] for c in cards] == ["order_duplicate_medication"]


def test_the_demo_identity_noise_merges_source_patients_into_one_review_each(demo):
    """Identity noise records each person once per source; the review is per person, not per record."""
    wh, snap = demo
    con = duckdb.connect(str(wh), read_only=True)
    try:
        persons = con.execute("SELECT count(DISTINCT person_id) FROM ops.person_map").fetchone()[0]
        patients = con.execute("SELECT count(*) FROM fhir.Patient WHERE NOT reference_only").fetchone()[0]
        review_pairs = con.execute(
            "SELECT count(*) FROM ops.identity_links WHERE decision = 'review'"
        ).fetchone()[0]
    finally:
        con.close()
    assert snap.persons == persons < patients
    assert bool(_persons_with(snap, "identity_review")) == bool(review_pairs)


def test_without_the_landing_zone_those_lines_stay_unattributed(tmp_path, demo):
    wh, _snap = demo
    copy = tmp_path / "copy.duckdb"
    shutil.copy(wh, copy)
    con = duckdb.connect(str(copy))
    con.execute("UPDATE ops.runs SET config = json_object('landing', ?)", [str(tmp_path / "pruned")])
    con.close()
    snap = build(copy, Rules.load().data)
    try:
        assert _persons_with(snap, "conflicting_duplicate") == []  # no crash, nothing guessed
        assert snap.persons == _snap.persons
    finally:
        snap.con.close()

"""The identity stage inside a whole run of noisy demo data, checked against the truth written beside it."""

from __future__ import annotations

import csv
import logging
from collections import defaultdict

import orjson
import pytest

from pipelines.demo import generate_demo_data
from pipelines.demo.identity import TRUTH_NAME
from pipelines.run import run_pipeline
from tests.conftest import REPO
from tests.identity_digest import linking_digest


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("identity-demo")
    generate_demo_data(root / "demo", patients=20, seed=4, hl7v2=True, ccda=True, identity=True)
    from pipelines.common.config import RunConfig

    config = RunConfig(
        sources=(str(root / "demo" / "sources"),), warehouse=root / "wh.duckdb", progress=False
    )
    handler = _Capture()
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.addHandler(handler)
    root_logger.setLevel(logging.DEBUG)
    try:
        run_pipeline(config)
    finally:
        root_logger.removeHandler(handler)
        root_logger.setLevel(level)
    return root, config, handler.lines


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _truth(root) -> tuple[dict[tuple[str, str], dict[str, str]], list[dict[str, str]]]:
    rows = list(csv.DictReader((root / "demo" / TRUTH_NAME).open()))
    return {(r["identifier_system"], r["identifier_value"]): r for r in rows}, rows


def _true_person(con, truth) -> dict[str, str]:
    rows = con.execute(
        "SELECT p.id, i ->> 'system', i ->> 'value' FROM fhir.\"Patient\" p, "
        "unnest(CAST(json_extract(p.resource, '$.identifier[*]') AS JSON[])) AS t(i) "
        "WHERE NOT p.reference_only"
    ).fetchall()
    return {pid: truth[(s, v)]["person"] for pid, s, v in rows if (s, v) in truth}


def test_persons_match_the_truth_and_lookalikes_stay_apart(demo_run, warehouse):
    from pipelines.common.warehouse import open_warehouse

    root, config, _ = demo_run
    truth, rows = _truth(root)
    with open_warehouse(config.warehouse, read_only=True) as con:
        person = _true_person(con, truth)
        mapped = dict(con.execute("SELECT patient_id, person_id FROM ops.person_map").fetchall())
        pending = con.execute(
            "SELECT left_patient_id, right_patient_id FROM ops.identity_links WHERE decision = 'review'"
        ).fetchall()
    assert len(person) >= 55  # 20 people x 3 sources, less the few with an unparseable demographic
    clusters: dict[str, set[str]] = defaultdict(set)
    for pid, true in person.items():
        clusters[mapped[pid]].add(true)
    assert all(len(c) == 1 for c in clusters.values()), "a person record mixes two true people"
    lookalikes = {(r["person"], r["lookalike_of"]) for r in rows if r["lookalike_of"]}
    assert lookalikes
    for a, b in lookalikes:
        assert {mapped[p] for p, t in person.items() if t == a}.isdisjoint(
            {mapped[p] for p, t in person.items() if t == b}
        )
    split = {t for t in person.values() if len({mapped[p] for p, u in person.items() if u == t}) > 1}
    in_review = {person.get(a) for a, b in pending if person.get(a) == person.get(b)}
    assert split <= in_review, "a person is split without a pair awaiting review"


def test_views_are_per_person_and_duplicates_are_marked(demo_run):
    from pipelines.common.warehouse import open_warehouse

    _, config, _ = demo_run
    with open_warehouse(config.warehouse, read_only=True) as con:
        one = lambda sql: con.execute(sql).fetchall()[0][0]  # noqa: E731
        persons = one("SELECT count(DISTINCT person_id) FROM ops.person_map")
        assert one("SELECT count(*) FROM views.patient") == persons
        assert one("SELECT count(*) FROM views.patient_source") == one("SELECT count(*) FROM ops.person_map")
        assert (
            one(
                "SELECT count(*) FROM views.observation o "
                "WHERE o.patient_id NOT IN (SELECT id FROM views.patient)"
            )
            == 0
        )
        assert one("SELECT count(*) FROM ops.fact_duplicates WHERE resource_type = 'Observation'") > 0
        assert (
            one(
                "SELECT count(*) FROM ops.fact_duplicates d "
                'LEFT JOIN fhir."Observation" o ON o.id = d.resource_id '
                "WHERE d.resource_type = 'Observation' AND o.id IS NULL"
            )
            == 0
        )
        assert one("SELECT count(*) FROM ops.identity_models") == 1


def test_no_record_values_in_the_run_logs(demo_run):
    root, _, lines = demo_run
    _, rows = _truth(root)
    text = "\n".join(lines)
    assert any("identity:" in line for line in lines)
    for r in rows:
        assert r["identifier_value"] not in text


def test_the_demo_links_as_before_one_memory_cap(demo_run):
    """The same links, rules, scores (to 6 places) and person ids as the linking with two DuckDBs."""
    from pipelines.common.warehouse import open_warehouse

    _, config, _ = demo_run
    golden = orjson.loads((REPO / "tests" / "golden" / "identity" / "decisions.json").read_bytes())
    with open_warehouse(config.warehouse, read_only=True) as con:
        assert linking_digest(con) == golden["demo"]

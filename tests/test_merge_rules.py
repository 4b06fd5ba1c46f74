"""Merge rules for reference-only stand-ins, unconsumed-item counts, and the contract migration."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import orjson
import pytest

from pipelines import formats
from pipelines.common.unit import Converted, Converter, FileContext, Unit, stage_dict
from pipelines.common.warehouse import SCHEMA_VERSION, open_warehouse
from pipelines.convert import CONVERTERS
from pipelines.run import run_pipeline
from tests.conftest import write_ndjson


class StandInConverter(Converter):
    """Test converter: each NDJSON line {"full": bool, "family": ..., "t": ...} becomes a Patient p1.

    Lines carry resourceType "Basic" only so that format detection calls one-line files NDJSON.
    """

    name = "test-stand-in"
    formats = frozenset({formats.FHIR_NDJSON})

    def units(self, ctx: FileContext) -> Iterator[Unit]:
        for position, line in enumerate(ctx.path.read_bytes().splitlines(), 1):
            yield Unit(position, "ndjson_line", orjson.loads(line))

    def convert(self, unit: Unit, ctx: FileContext) -> Converted:
        spec = unit.payload
        patient = {"resourceType": "Patient", "id": "p1", "name": [{"family": spec["family"]}]}
        if spec.get("t"):
            patient["meta"] = {"lastUpdated": spec["t"]}
        obs = {
            "resourceType": "Observation",
            "id": f"o{ctx.file_sha256[:8]}{unit.position}",
            "status": "final",
            "subject": {"reference": "Patient/p1"},
        }
        return Converted(
            [stage_dict(patient, reference_only=not spec["full"]), obs],
            container="TEST^T01",
            unconsumed={"ZPI": 1} if spec.get("z") else {},
        )


def _spec(**fields) -> dict:
    return {"resourceType": "Basic", **fields}


@pytest.fixture
def stand_in(monkeypatch):
    monkeypatch.setattr("pipelines.convert.CONVERTERS", (StandInConverter(), *CONVERTERS[1:]))


def _family(con) -> list[tuple]:
    return con.execute(
        """SELECT resource->'name'->0->>'family', reference_only FROM fhir."Patient" """
    ).fetchall()


def test_stand_in_is_stored_when_nothing_better_exists_and_yields_to_a_full_version(
    tmp_path, make_config, warehouse, stand_in
):
    first = write_ndjson(
        tmp_path / "a" / "results.ndjson",
        _spec(full=False, family="Thin"),
        _spec(full=False, family="Other thin"),
    )
    run_pipeline(make_config(first))
    second = write_ndjson(
        tmp_path / "b" / "adt.ndjson", _spec(full=True, family="Full", t="2024-01-01T00:00:00Z")
    )
    run_pipeline(make_config(second))
    third = write_ndjson(
        tmp_path / "c" / "more-results.ndjson", _spec(full=False, family="Late thin", z=True)
    )
    run_pipeline(make_config(third))
    con = warehouse()
    assert _family(con) == [("Full", False)]
    # Units keep converting: their observations are new even when their stand-in is not needed.
    outcomes = con.execute(
        "SELECT f.original_name, l.unit_position, l.resource_count, l.reason FROM ops.ledger l "
        "JOIN ops.files f USING (file_sha256) ORDER BY 1, 2"
    ).fetchall()
    assert outcomes == [
        ("adt.ndjson", 1, 2, "newer_version"),
        ("more-results.ndjson", 1, 1, None),
        ("results.ndjson", 1, 2, None),
        ("results.ndjson", 2, 1, None),
    ]
    assert con.execute("SELECT count(*) FROM ops.quarantine").fetchone()[0] == 0
    assert con.execute("SELECT container, item, count FROM ops.unconsumed").fetchall() == [
        ("TEST^T01", "ZPI", 1)
    ]


def test_a_unit_whose_only_resource_is_an_unneeded_stand_in_is_skipped_with_that_reason(tmp_path):
    from pipelines.load import create_stage, merge_stage

    con = duckdb.connect()
    from pipelines.common.warehouse import apply_contract

    apply_contract(con)
    create_stage(con)
    base = ("run-1", 1, "f" * 64)
    rows = [
        (*base, 1, 0, "Patient", "p1", "s", "p1", "h-full", "2024-01-01T00:00:00Z", '{"a":1}', False),
        (*base, 2, 0, "Patient", "p1", "s", "p1", "h-thin", None, '{"a":2}', True),
    ]
    con.executemany("INSERT INTO _stage VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    con.executemany(
        "INSERT INTO ops.ledger VALUES (?, ?, ?, 'x', 'converted', NULL, 1, NULL, NULL)",
        [("run-1", "f" * 64, 1), ("run-1", "f" * 64, 2)],
    )
    result = merge_stage(con)
    assert (result.resources_loaded, result.reference_only) == ({"Patient": 1}, 1)
    assert con.execute(
        "SELECT unit_position, outcome, reason, resource_count FROM ops.ledger ORDER BY 1"
    ).fetchall() == [(1, "converted", None, 1), (2, "skipped", "reference_only_present", 0)]


def test_a_version_1_warehouse_migrates_in_place(tmp_path: Path):
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    con.execute(
        "CREATE SCHEMA ops; CREATE SCHEMA fhir; "
        "CREATE TABLE ops.schema_version (version INTEGER NOT NULL, applied_at TIMESTAMPTZ NOT NULL); "
        "INSERT INTO ops.schema_version VALUES (1, now()); "
        'CREATE TABLE fhir."Patient" (id VARCHAR NOT NULL, resource JSON NOT NULL, source_system VARCHAR '
        "NOT NULL, source_id VARCHAR, file_sha256 VARCHAR NOT NULL, unit_position BIGINT NOT NULL, run_id "
        "VARCHAR NOT NULL, content_sha256 VARCHAR NOT NULL, last_updated VARCHAR); "
        "INSERT INTO fhir.\"Patient\" VALUES ('x', '{}', 's', 'x', 'f', 1, 'r', 'h', NULL)"
    )
    con.close()
    with open_warehouse(path) as con:
        found = con.execute("SELECT max(version) FROM ops.schema_version").fetchone()[0]
        assert found == SCHEMA_VERSION == 18
        assert con.execute('SELECT id, reference_only FROM fhir."Patient"').fetchall() == [("x", False)]
        assert con.execute("SELECT count(*) FROM ops.unconsumed").fetchone()[0] == 0


def test_a_version_2_warehouse_gains_the_version_3_tables_and_columns(tmp_path: Path):
    path = tmp_path / "v2.duckdb"
    with open_warehouse(path) as con:
        for column in ("decision_id", "data_source", "kind"):
            con.execute(f"ALTER TABLE ops.mapping_log DROP COLUMN {column}")
        con.execute("DROP SCHEMA terminology CASCADE; DROP TABLE ops.phi_access")
        con.execute("DELETE FROM ops.schema_version; INSERT INTO ops.schema_version VALUES (2, now())")
    with open_warehouse(path) as con:
        columns = [r[0] for r in con.execute("DESCRIBE ops.mapping_log").fetchall()]
        assert columns[-3:] == ["decision_id", "data_source", "kind"]
        assert con.execute("SELECT count(*) FROM terminology.releases").fetchone()[0] == 0
        assert con.execute("SELECT count(*) FROM ops.phi_access").fetchone()[0] == 0
        assert con.execute("SELECT max(version) FROM ops.schema_version").fetchone()[0] == SCHEMA_VERSION


def test_a_version_3_warehouse_gains_the_unit_items_table(tmp_path: Path):
    path = tmp_path / "v3.duckdb"
    with open_warehouse(path) as con:
        con.execute("DROP TABLE ops.unit_items")
        con.execute("DELETE FROM ops.schema_version; INSERT INTO ops.schema_version VALUES (3, now())")
    with open_warehouse(path) as con:
        columns = [r[0] for r in con.execute("DESCRIBE ops.unit_items").fetchall()]
        assert columns == [
            "run_id",
            "file_sha256",
            "unit_position",
            "container",
            "part",
            "item",
            "found",
            "converted",
        ]
        assert con.execute("SELECT max(version) FROM ops.schema_version").fetchone()[0] == SCHEMA_VERSION


def test_a_version_4_warehouse_gains_the_release_declarations_table(tmp_path: Path):
    path = tmp_path / "v4.duckdb"
    with open_warehouse(path) as con:
        con.execute("DROP TABLE ops.fhir_release_declarations")
        con.execute("DELETE FROM ops.schema_version; INSERT INTO ops.schema_version VALUES (4, now())")
    with open_warehouse(path) as con:
        columns = [r[0] for r in con.execute("DESCRIBE ops.fhir_release_declarations").fetchall()]
        assert columns == ["run_id", "file_sha256", "release", "declared_by", "format", "format_detail"]
        assert con.execute("SELECT max(version) FROM ops.schema_version").fetchone()[0] == SCHEMA_VERSION

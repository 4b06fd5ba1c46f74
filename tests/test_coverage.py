"""Coverage is computed on the whole warehouse before any filter, per system and per source."""

from __future__ import annotations

import pytest

from pipelines.cli import main
from pipelines.common.warehouse import open_warehouse
from pipelines.run import run_pipeline
from terminology.coverage import coverage
from tests.conftest import resource, write_ndjson
from tests.terminology_builders import LOINC, SNOMED, fixture_terminology_only, load_terms  # noqa: F401

pytestmark = pytest.mark.usefixtures("fixture_terminology_only")


def _cond(rid: str, system: str | None, code: str) -> dict:
    coding = {"code": code} if system is None else {"system": system, "code": code}
    return resource("Condition", rid, subject={"reference": "Patient/p1"}, code={"coding": [coding]})


def test_coverage_counts_every_coding_of_every_run_and_stand_in(tmp_path, make_config, warehouse, capsys):
    a = make_config(
        write_ndjson(
            tmp_path / "a" / "Condition.ndjson",
            _cond("c1", SNOMED, "44054006"),
            _cond("c2", "http://clinic.example.org/dx", "DM"),
            _cond("c3", None, "E11"),
        ),
        source_system="clinic",
    )
    with open_warehouse(a.warehouse) as con:
        load_terms(con, [(SNOMED, "44054006", "Diabetes mellitus type 2", "active")])
    run_pipeline(a)
    b = make_config(
        write_ndjson(
            tmp_path / "b" / "Observation.ndjson",
            resource(
                "Observation", "o1", status="final", code={"coding": [{"system": LOINC, "code": "2345-7"}]}
            ),
        ),
        source_system="lab",
    )
    run_pipeline(b)
    con = warehouse()
    # Every resource of the warehouse counts, including the Patient stand-in made for c1's reference.
    total = sum(
        con.execute(f'SELECT count(*) FROM fhir."{t}"').fetchone()[0] for t in ("Condition", "Observation")
    )
    cov = coverage(con)
    assert cov.resources >= total == 4
    # Standard: the SNOMED CT code and the LOINC code (well-formed, standard, not in the loaded subset).
    assert (cov.codings.total, cov.codings.standard) == (4, 2)
    assert {k: (s.total, s.standard) for k, s in cov.by_source.items()} == {"clinic": (3, 1), "lab": (1, 1)}
    assert {k: (s.total, s.standard) for k, s in cov.by_system.items()} == {
        "(no system)": (1, 0),
        "http://clinic.example.org/dx": (1, 0),
        LOINC: (1, 1),
        SNOMED: (1, 1),
    }
    assert cov.unmapped_reasons == {"no_system": 1, "unknown_system": 1}
    con.close()
    assert main(["terminology", "coverage", "--warehouse", str(a.warehouse)]) == 0
    printed = capsys.readouterr().out
    assert "4 codings: 2 standard after normalization (50.0%)" in printed

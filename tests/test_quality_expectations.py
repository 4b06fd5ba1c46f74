"""Every expectation in expectations/suites fires on a crafted bad row and stays quiet on good data."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipelines.common.warehouse import open_warehouse
from pipelines.quality.engine import Validator, run_mapping_suite, run_view_suite
from pipelines.quality.frames import prepare
from pipelines.quality.settings import load_settings
from tests.quality_data import RUN, good_warehouse, insert_mappings

SETTINGS = load_settings()
SUITES = {s.name: s for s in SETTINGS.suites}
CASES = [(s.name, e) for s in SETTINGS.suites for e in s.expectations]
# A bad row that also (rightly) trips a second expectation of the same suite.
ALSO = {
    "encounter.period_start_not_in_future": {"encounter.period_end_not_before_start"},
    "condition.onset_date_time_not_in_future": {"condition.abatement_not_before_onset"},
    "patient.id_unique": {"patient.mrn_unique"},  # a copied patient row copies its MRN too
}
_VALIDATOR: list[Validator] = []


def _validator() -> Validator:
    # One GX context for the module: creating one costs more than validating these small frames.
    if not _VALIDATOR:
        _VALIDATOR.append(Validator(SETTINGS))
    return _VALIDATOR[0]


def _failures(con, suite_name: str) -> dict[str, object]:
    suite = SUITES[suite_name]
    validator = _validator()
    if suite.source.get("source") == "mapping_log":
        outcomes = run_mapping_suite(con, validator, suite, RUN)
    else:
        outcomes = run_view_suite(con, validator, suite)
    return {o.name: o for o in outcomes if not o.success}


def _first(view: str) -> str:
    return f"rowid = (SELECT min(rowid) FROM views.{view})"


def _raw_time_column(suite, derived: str) -> str:
    return suite.source["derive"][derived]["timestamp"][0]


def _break(con, suite_name: str, exp: dict) -> None:
    """Make exactly the data this expectation guards wrong, in one row where possible."""
    suite = SUITES[suite_name]
    view = suite.source.get("view")
    kw, kind, name = exp["kwargs"], exp["type"], exp["meta"]["name"]
    if suite_name == "mapping_coverage":
        insert_mappings(
            con,
            [
                ("http://corrupt-lab.example.org/codes", "unmapped", 7),
                ("http://corrupt-lab.example.org/codes", "crosswalk", 3),
            ],
        )
    elif kind == "expect_column_values_to_not_be_null":
        con.execute(f'UPDATE views.{view} SET "{kw["column"]}" = NULL')
    elif kind == "expect_column_values_to_be_in_set" and kw["column"].endswith("__resolves"):
        ref = kw["column"].removesuffix("__resolves")
        con.execute(f"UPDATE views.{view} SET {ref} = 'no-such-target' WHERE {ref} IS NOT NULL")
    elif kind == "expect_column_values_to_be_in_set":
        con.execute(f"UPDATE views.{view} SET \"{kw['column']}\" = 'not-in-the-value-set'")
    elif kind == "expect_column_values_to_match_regex" and "row_condition" in kw:
        column, system = kw["row_condition"].split("==")
        con.execute(
            f"UPDATE views.{view} SET {column} = {system.replace(chr(34), chr(39))}, "
            f"\"{kw['column']}\" = 'not a code!' WHERE {_first(view)}"
        )
    elif kind == "expect_column_values_to_match_regex":
        con.execute(f"UPDATE views.{view} SET \"{kw['column']}\" = '1980-13-01' WHERE {_first(view)}")
    elif kind == "expect_column_values_to_be_between" and kw["column"].endswith("__at"):
        raw = _raw_time_column(suite, kw["column"])
        value = "2999-01-01" if "max_value" in kw else "1850-01-01"
        con.execute(f"UPDATE views.{view} SET {raw} = '{value}' WHERE {_first(view)}")
    elif kind == "expect_column_values_to_be_between":
        con.execute(f'UPDATE views.{view} SET "{kw["column"]}" = 0 WHERE {_first(view)}')
    elif kind == "expect_column_pair_values_a_to_be_greater_than_b":
        a, b = kw["column_A"], kw["column_B"]
        if b.endswith("__physiologic_min"):
            con.execute(f"UPDATE views.{view} SET {a} = 0.001 WHERE {_first(view)}")
        elif a.endswith("__physiologic_max"):
            con.execute(f"UPDATE views.{view} SET {b} = 99999 WHERE {_first(view)}")
        elif b == "patient_id__birth_at":
            con.execute(
                f"UPDATE views.{view} SET {_raw_time_column(suite, a)} = '1900-01-01' WHERE {_first(view)}"
            )
        else:  # A must not be before B: move A to before B's earliest value
            raw = _raw_time_column(suite, a)
            con.execute(f"UPDATE views.{view} SET {raw} = '1960-01-01' WHERE {raw} IS NOT NULL")
    elif kind == "expect_column_values_to_be_unique":
        con.execute(f"INSERT INTO views.{view} SELECT * FROM views.{view} WHERE {_first(view)}")
    elif kind == "expect_compound_columns_to_be_unique":
        sets = ", ".join(
            f"{c} = (SELECT {c} FROM views.{view} WHERE {_first(view)})" for c in kw["column_list"]
        )
        con.execute(f"UPDATE views.{view} SET {sets}")
    else:
        raise AssertionError(f"no bad-row recipe for {name} ({kind}): add one")


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    return good_warehouse(tmp_path_factory.mktemp("good") / "w.duckdb")


def _copy(template: Path, tmp_path: Path) -> Path:
    return Path(shutil.copyfile(template, tmp_path / "w.duckdb"))


def test_good_data_passes_every_expectation(tmp_path, template):
    with open_warehouse(_copy(template, tmp_path)) as con:
        prepare(con, SETTINGS)
        failed = {name for suite in SUITES for name in _failures(con, suite)}
    assert failed == set()


@pytest.mark.parametrize(("suite_name", "exp"), CASES, ids=[e["meta"]["name"] for _, e in CASES])
def test_expectation_fires_on_a_bad_row(tmp_path, template, suite_name, exp):
    name = exp["meta"]["name"]
    with open_warehouse(_copy(template, tmp_path)) as con:
        prepare(con, SETTINGS)
        _break(con, suite_name, exp)
        failed = _failures(con, suite_name)
    assert set(failed) == {name} | ALSO.get(name, set())
    outcome = failed[name]
    assert outcome.unexpected_count >= 1 and outcome.error is None
    # Pointers name records by warehouse id (or code system for coverage), never by a value.
    assert outcome.pointers and all(
        p.split("/", 1)[0]
        in {
            "Patient",
            "Encounter",
            "Observation",
            "Condition",
            "MedicationRequest",
            "AllergyIntolerance",
            "Immunization",
            "Procedure",
            "DiagnosticReport",
        }
        or p.startswith("code-system:")
        for p in outcome.pointers
    )
    assert not any("not a code!" in p or "1980-13-01" in p for p in outcome.pointers)

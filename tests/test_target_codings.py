"""Target-aware codings: Millennium never gets standard and code-set codes in one array (it answers 422)."""

from __future__ import annotations

import pytest

from pipelines.common.errors import ConfigError
from pipelines.common.warehouse import open_warehouse
from terminology.normalize import EXT_METHOD
from terminology.target_codings import (
    code_values,
    codings_for_target,
    load_code_values,
    mixed_arrays,
    profile,
)
from tests.terminology_builders import LOINC

CODESET = "https://fhir.cerner.com/ec2458f2-1e24-41c8-b71b-0e701af7583d/codeSet/72"
LOCAL = "urn:ehrlift:hl7v2:lab:99LAB"
ADDED = {"extension": [{"url": EXT_METHOD, "valueCode": "crosswalk"}], "system": LOINC, "code": "2345-7"}


def _obs(*codings: dict, text: str | None = None) -> dict:
    code: dict = {"coding": list(codings)}
    if text:
        code["text"] = text
    return {
        "resourceType": "Observation",
        "code": code,
        "category": [{"coding": [{"system": LOCAL, "code": "X"}]}],
    }


def test_millennium_never_receives_a_mixed_array():
    mill = profile("millennium")
    mixed = _obs(
        {"system": LOCAL, "code": "GLU"}, {"system": CODESET, "code": "2700655"}, ADDED, text="Glucose"
    )
    assert mixed_arrays(mixed, mill) == ["code.coding"]  # this is what the server rejects with 422
    out, issues = codings_for_target(mixed, mill)
    assert out["code"] == {"coding": [{"system": LOINC, "code": "2345-7"}], "text": "Glucose"}
    assert mixed_arrays(out, mill) == []
    # A category with only a local code cannot go: sent as text when there is text, and reported.
    assert "coding" not in out["category"][0] and issues == ["category[0].coding"]
    assert mixed["code"]["coding"][2] == ADDED  # the input is not changed


def test_codeset_preference_derives_code_values_from_concept_cki(tmp_path):
    extract = tmp_path / "code_value.csv"
    extract.write_text(
        "CODE_VALUE,CODE_SET,DISPLAY,CDF_MEANING,CONCEPT_CKI,ACTIVE_IND\n"
        "2700655,72,Glucose Level,,LOINC!2345-7,1\n"
        "2700656,72,Old glucose,,LOINC!2345-7,0\n"
        "4001,72,Internal,,CKI.CODEVALUE!4001,1\n"
    )
    with open_warehouse(tmp_path / "w.duckdb") as con:
        assert load_code_values(con, extract) == 3
        assert load_code_values(con, extract) == 3  # a re-load replaces, never doubles
        cv = code_values(con)
    assert cv == {(LOINC, "2345-7"): [(72, "2700655", "Glucose Level")]}
    mill = profile("millennium")
    codeset_first = type(mill)(**{**mill.__dict__, "prefer": "codeset"})
    out, issues = codings_for_target(
        _obs({"system": LOCAL, "code": "GLU"}, ADDED), codeset_first, cv, "tenant-1"
    )
    assert out["code"]["coding"] == [
        {
            "system": "https://fhir.cerner.com/tenant-1/codeSet/72",
            "code": "2700655",
            "display": "Glucose Level",
        }
    ]
    assert mixed_arrays(out, mill) == [] and issues == ["category[0].coding"]


def test_generic_target_keeps_every_coding_and_bad_extracts_name_the_line(tmp_path):
    obs = _obs({"system": LOCAL, "code": "GLU"}, ADDED)
    out, issues = codings_for_target(obs, profile("generic"))
    assert out == obs and issues == []
    bad = tmp_path / "cv.csv"
    bad.write_text("CODE_VALUE,CODE_SET,DISPLAY,CONCEPT_CKI,ACTIVE_IND\n1,72,a,LOINC!1-8,1\n2,seventy,b,,1\n")
    with (
        open_warehouse(tmp_path / "w.duckdb") as con,
        pytest.raises(ConfigError, match=r"cv\.csv:3: CODE_SET"),
    ):
        load_code_values(con, bad)
    with pytest.raises(ConfigError, match="no target profile 'epic'"):
        profile("epic")

"""Terminology fetched as system x code products, and the walk's change count that spares unchanged text."""

from __future__ import annotations

import duckdb
import orjson

from terminology.normalize import Normalizer
from terminology.terms import WarehouseTerminology
from tests.terminology_builders import LOINC, load_terms


def _terms() -> WarehouseTerminology:
    con = duckdb.connect()
    load_terms(
        con,
        [(LOINC, "2345-7", "Glucose", "active"), (LOINC, "1111-4", "Retired", "inactive")],
        replacements=[(LOINC, "1111-4", "2345-7", "MAP_TO")],
        maps=[("icd-map", LOINC, "1111-4", LOINC, "2345-7")],
    )
    return WarehouseTerminology(con)


def test_a_product_fetch_adds_no_row_twice_for_a_pair_fetched_before():
    terms = _terms()
    terms.prefetch([(LOINC, "1111-4")])
    terms.prefetch_sets({LOINC, "urn:other"}, {"1111-4", "2345-7", "9999-9"})
    assert terms.replacements(LOINC, "1111-4") == [("2345-7", "MAP_TO")]
    assert [m.target_code for m in terms.mappings(LOINC, "1111-4")] == ["2345-7"]
    assert terms.concept(LOINC, "2345-7") == ("Glucose", "active")
    assert terms.fetched("urn:other", "9999-9") and not terms.fetched("urn:other", "0000-0")


def test_a_pair_of_the_product_is_answered_without_a_query():
    terms = _terms()
    terms.prefetch_sets({LOINC}, {"2345-7", "9999-9"})
    terms.con.close()  # any query now would fail
    assert terms.concept(LOINC, "2345-7") == ("Glucose", "active")
    assert terms.concept(LOINC, "9999-9") is None
    assert terms.replacements(LOINC, "9999-9") == []


def test_changes_count_only_walks_that_strip_or_add():
    normalizer = Normalizer(_terms())
    standard = {"resourceType": "Observation", "code": {"coding": [{"system": LOINC, "code": "2345-7"}]}}
    before = normalizer.changes
    normalizer.normalize(standard, "s")
    assert normalizer.changes == before  # a standard code needs nothing added
    retired = {
        "resourceType": "Observation",
        "code": {"coding": [{"system": LOINC, "code": "1111-4"}]},
        "valueQuantity": {"value": 1, "unit": "mg/dl"},
    }
    normalizer.normalize(retired, "s")
    assert normalizer.changes == before + 2  # the remapped coding and the UCUM unit
    normalized = orjson.loads(orjson.dumps(retired))
    again = normalizer.changes
    normalizer.normalize(normalized, "s")
    assert normalizer.changes > again  # what was added is stripped and derived again: a candidate
    assert normalized == retired


def test_reapply_normalizes_the_same_way_but_counts_once():
    normalizer = Normalizer(_terms())
    doc = {"resourceType": "Observation", "code": {"coding": [{"system": LOINC, "code": "1111-4"}]}}
    normalizer.normalize(orjson.loads(orjson.dumps(doc)), "s")
    counted = dict(normalizer.counts)
    twin = normalizer.reapply(orjson.loads(orjson.dumps(doc)), "s")
    assert dict(normalizer.counts) == counted
    assert [c["code"] for c in twin["code"]["coding"]] == ["1111-4", "2345-7"]

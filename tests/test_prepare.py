"""Deterministic ids and reference rewriting on JSON text, with decimal spelling preserved."""

from __future__ import annotations

import orjson
import pytest

from pipelines.common.unit import Quarantine
from pipelines.convert.fhir.prepare import ResourcePreparer, parse_line, warehouse_id


def prepare(raw: bytes, urn_map: dict[str, str] | None = None, position: int = 1):
    return ResourcePreparer("sys-a", "f" * 64, urn_map).prepare(raw, orjson.loads(raw), position)


def test_warehouse_id_is_deterministic_and_namespaced_by_system_and_type():
    assert warehouse_id("sys-a", "Patient", "1") == warehouse_id("sys-a", "Patient", "1")
    assert len(warehouse_id("sys-a", "Patient", "1")) == 32
    assert warehouse_id("sys-a", "Patient", "1") != warehouse_id("sys-b", "Patient", "1")
    assert warehouse_id("sys-a", "Patient", "1") != warehouse_id("sys-a", "Group", "1")


def test_top_level_id_and_references_are_rewritten_and_decimals_keep_their_spelling():
    raw = (
        b'{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/p1"},'
        b'"valueQuantity":{"value":1.50,"unit":"mg/dL"},"meta":{"lastUpdated":"2024-01-02T03:04:05Z"}}'
    )
    staged = prepare(raw)
    pid = warehouse_id("sys-a", "Patient", "p1")
    oid = warehouse_id("sys-a", "Observation", "o1")
    assert staged.id == oid
    assert staged.source_id == "o1"
    assert staged.last_updated == "2024-01-02T03:04:05Z"
    assert staged.json == raw.replace(b'"o1"', f'"{oid}"'.encode()).replace(
        b"Patient/p1", f"Patient/{pid}".encode()
    )
    assert b'"value":1.50' in staged.json


def test_nested_ids_before_the_top_level_id_are_left_alone():
    raw = b'{"resourceType":"Patient","meta":{"id":"meta-1"},"name":[{"id":"n1","family":"X"}],"id":"p1"}'
    staged = prepare(raw)
    doc = orjson.loads(staged.json)
    assert doc["id"] == warehouse_id("sys-a", "Patient", "p1")
    assert doc["meta"]["id"] == "meta-1"
    assert doc["name"][0]["id"] == "n1"


def test_braces_inside_strings_do_not_confuse_the_depth_count():
    raw = b'{"resourceType":"Patient","text":{"div":"<div>{{ not json [</div>"},"id":"p1"}'
    assert orjson.loads(prepare(raw).json)["id"] == warehouse_id("sys-a", "Patient", "p1")


def test_missing_id_gets_one_from_file_and_position():
    staged = prepare(b'{"resourceType":"Patient","gender":"female"}', position=7)
    assert staged.id == warehouse_id("sys-a", "Patient", f"{'f' * 64}:7")
    assert staged.source_id is None
    assert orjson.loads(staged.json) == {"id": staged.id, "resourceType": "Patient", "gender": "female"}


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("Patient/p1", "Patient/" + warehouse_id("sys-a", "Patient", "p1")),
        ("Encounter\\/e1", "Encounter/" + warehouse_id("sys-a", "Encounter", "e1")),
        ("Patient/p1/_history/3", "Patient/" + warehouse_id("sys-a", "Patient", "p1") + "/_history/3"),
        ("#contained-1", "#contained-1"),
        ("Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|9999", None),
        ("https://other.example.org/fhir/Patient/p1", None),
        ("urn:uuid:0a1b", None),
        ("urn:uuid:mapped", "Patient/abc"),
    ],
)
def test_reference_forms(reference: str, expected: str | None):
    raw = b'{"resourceType":"Observation","id":"o","subject":{"reference":"' + reference.encode() + b'"}}'
    staged = prepare(raw, urn_map={"urn:uuid:mapped": "Patient/abc"})
    got = orjson.loads(staged.json)["subject"]["reference"]
    assert got == (expected if expected is not None else reference.replace("\\/", "/"))


def test_references_inside_contained_resources_are_rewritten_too():
    raw = (
        b'{"resourceType":"MedicationRequest","id":"m","contained":[{"resourceType":"Medication","id":"med"}],'
        b'"medicationReference":{"reference":"#med"},"subject":{"reference":"Patient/p1"},'
        b'"requester":{"reference":"Practitioner/d1"}}'
    )
    doc = orjson.loads(prepare(raw).json)
    assert doc["contained"][0]["id"] == "med"
    assert doc["medicationReference"]["reference"] == "#med"
    assert doc["requester"]["reference"] == "Practitioner/" + warehouse_id("sys-a", "Practitioner", "d1")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"[1, 2]", "not_an_object"),
        (b'{"id": "x"}', "missing_resource_type"),
        (b'{"resourceType": "patient lower"}', "invalid_resource_type"),
        (b'{"resourceType": 5}', "invalid_resource_type"),
        (b'{"resourceType": "Patient", "id": "has space"}', "invalid_id"),
        (b'{"resourceType": "Patient", "id": 12}', "invalid_id"),
    ],
)
def test_non_resources_are_quarantined_with_a_reason(raw: bytes, reason: str):
    with pytest.raises(Quarantine) as info:
        prepare(raw)
    assert info.value.reason == reason


def test_parse_errors_name_the_reason_and_position_but_not_the_data():
    with pytest.raises(Quarantine) as info:
        parse_line(b'{"resourceType":"Patient","name":"Sm\xfcller"}')
    assert info.value.reason == "invalid_encoding"
    assert info.value.message == "byte 36 is not valid UTF-8"
    with pytest.raises(Quarantine) as info:
        parse_line(b'{"resourceType":"Patient","name":"Secret Name"')
    assert info.value.reason == "invalid_json"
    assert "Secret" not in info.value.message
    assert info.value.message.startswith("JSON syntax error at byte")

"""Authors and custodians seen by several documents merge into one resource; a clean demo run is clean."""

from __future__ import annotations

import itertools

import orjson

from pipelines.demo import generate_demo_data
from pipelines.parties import merge_resources
from pipelines.run import run_pipeline

A = {
    "resourceType": "Organization",
    "id": "o1",
    "meta": {"lastUpdated": "2024-01-02T10:00:00-05:00"},
    "identifier": [{"system": "urn:oid:1.2.3", "value": "org-1"}],
    "name": "Demo General Hospital",
    "telecom": [{"system": "phone", "value": "555-0100"}],
}
B = {
    "resourceType": "Organization",
    "id": "o1",
    "meta": {"lastUpdated": "2024-01-02T16:00:00Z"},
    "identifier": [{"system": "urn:oid:1.2.3", "value": "org-1"}, {"system": "urn:oid:9.9", "value": "X"}],
    "name": "Demo General",
    "address": [{"city": "Springfield"}],
}
C = {"resourceType": "Organization", "id": "o1", "telecom": [{"system": "email", "value": "a@b.example"}]}


def test_merge_unions_lists_keeps_the_latest_instant_and_makes_other_names_aliases():
    merged = merge_resources([A, B, C], alias="alias")
    assert merged == {
        "resourceType": "Organization",
        "id": "o1",
        "meta": {"lastUpdated": "2024-01-02T16:00:00Z"},  # 16:00Z is later than 10:00-05:00 (15:00Z)
        "address": [{"city": "Springfield"}],
        "alias": ["Demo General"],
        "identifier": [
            {"system": "urn:oid:1.2.3", "value": "org-1"},
            {"system": "urn:oid:9.9", "value": "X"},
        ],
        "name": "Demo General Hospital",  # the smallest canonical JSON: ' ' sorts before '"'
        "telecom": [{"system": "email", "value": "a@b.example"}, {"system": "phone", "value": "555-0100"}],
    }


def test_merge_does_not_depend_on_order_and_merging_again_changes_nothing():
    results = {orjson.dumps(merge_resources(list(p), "alias")) for p in itertools.permutations([A, B, C])}
    assert len(results) == 1
    once = merge_resources([A, B, C], "alias")
    assert merge_resources([once, B], "alias") == once
    assert merge_resources([merge_resources([A, B], "alias"), C], "alias") == once
    # One instant written in two zones: the same choice whichever comes first.
    west = {**C, "meta": {"lastUpdated": "2025-06-29T07:01:46-08:00"}}
    east = {**C, "meta": {"lastUpdated": "2025-06-29T10:01:46-05:00"}}
    assert merge_resources([west, east]) == merge_resources([east, west])


def _author_with_phone(path, phone: str) -> None:
    text = path.read_text(encoding="utf-8")
    marker = "<assignedPerson><name><given>Dana</given>"
    assert text.count(marker) == 1
    path.write_text(
        text.replace(marker, f'<telecom use="WP" value="tel:{phone}"/>' + marker), encoding="utf-8"
    )


def test_an_author_with_different_phones_in_two_documents_is_one_practitioner(
    tmp_path, make_config, warehouse
):
    generate_demo_data(tmp_path / "demo", patients=3, seed=5, ccda=True)
    docs = sorted((tmp_path / "demo" / "sources" / "ccda").glob("*.xml"))
    _author_with_phone(docs[0], "+1-555-0101")
    _author_with_phone(docs[1], "+1-555-0102")
    source = tmp_path / "only-ccda"
    source.mkdir()
    for doc in docs:
        (source / doc.name).write_bytes(doc.read_bytes())
    run = run_pipeline(make_config(source, source_system="demo"))
    con = warehouse()
    assert run.reconciles
    assert con.execute("SELECT count(*) FROM ops.quarantine").fetchone()[0] == 0
    rows = con.execute(
        "SELECT resource FROM fhir.Practitioner WHERE resource::VARCHAR LIKE '%Dana%'"
    ).fetchall()
    assert len(rows) == 1
    author = orjson.loads(rows[0][0])
    phones = [t["value"] for t in author.get("telecom", [])]
    assert phones == ["+1-555-0101", "+1-555-0102"]
    # A re-run of the same files changes nothing.
    con.close()
    run_pipeline(make_config(source, source_system="demo"))
    con = warehouse()
    again = con.execute("SELECT resource FROM fhir.Practitioner WHERE resource::VARCHAR LIKE '%Dana%'")
    assert [orjson.loads(r[0]) for r in again.fetchall()] == [author]


# Code systems only ehrlift itself writes (never copied from a source): none may be counted unmapped.
OWN_SYSTEMS = (
    "http://hl7.org/fhir/us/core/CodeSystem/%",
    "http://terminology.hl7.org/CodeSystem/v2-0360",
)


def test_a_clean_demo_run_has_only_its_one_deliberate_conflict_and_no_self_inflicted_unmapped_codes(
    tmp_path, make_config, warehouse
):
    demo = generate_demo_data(tmp_path / "demo", patients=30, seed=21, hl7v2=True, ccda=True, dstu2=True)
    run = run_pipeline(make_config(tmp_path / "demo" / "sources", source_system="demo"))
    con = warehouse()
    assert run.reconciles
    conflicts = con.execute(
        "SELECT f.original_name, q.unit_position FROM ops.quarantine q JOIN ops.files f USING (file_sha256) "
        "WHERE q.reason_code = 'conflicting_duplicate'"
    ).fetchall()
    deliberate = [
        (d.file.rsplit("/", 1)[1], d.position) for d in demo.defects if d.reason == "conflicting_duplicate"
    ]
    assert len(deliberate) == 1 and conflicts == deliberate  # the demo's one deliberate defect, nothing else
    own_unmapped = con.execute(
        "SELECT source_system, source_code, reason FROM ops.mapping_log WHERE method = 'unmapped' "
        "AND (source_system IS NULL OR source_system LIKE $1 OR source_system = $2)",
        list(OWN_SYSTEMS),
    ).fetchall()
    assert own_unmapped == []
    category = con.execute(
        "SELECT DISTINCT method, reason FROM ops.mapping_log WHERE source_code = 'clinical-note'"
    ).fetchall()
    assert category == [("exact", None)]


def _practitioners(path) -> list[tuple]:
    import duckdb

    with duckdb.connect(str(path), read_only=True) as con:
        return con.execute(
            'SELECT id, content_sha256, resource::VARCHAR FROM fhir."Practitioner" ORDER BY id'
        ).fetchall()


def test_retracting_a_document_rebuilds_the_merged_author_from_the_other_documents(tmp_path, make_config):
    from pipelines.retract import retract

    generate_demo_data(tmp_path / "demo", patients=3, seed=5, ccda=True)
    docs = sorted((tmp_path / "demo" / "sources" / "ccda").glob("*.xml"))[:3]
    folders = []
    for n, (doc, phone) in enumerate(zip(docs, ("+1-555-0101", "+1-555-0102", "+1-555-0103"), strict=True)):
        _author_with_phone(doc, phone)
        folder = tmp_path / f"batch-{n}"
        folder.mkdir()
        (folder / doc.name).write_bytes(doc.read_bytes())
        folders.append(folder)
    warehouse = tmp_path / "w1.duckdb"
    runs = [run_pipeline(make_config(f, source_system="demo", warehouse=warehouse)) for f in folders]
    merged = [r for r in _practitioners(warehouse) if "Dana" in r[2]]
    assert len(merged) == 1 and all(p in merged[0][2] for p in ("0101", "0102", "0103"))

    result = retract(warehouse, reason="wrong document", run_id=runs[1].run_id)
    assert result.rebuilt >= 1
    clean = tmp_path / "w2.duckdb"
    for folder in (folders[0], folders[2]):
        run_pipeline(make_config(folder, source_system="demo", warehouse=clean))
    assert _practitioners(warehouse) == _practitioners(clean)  # as if the middle document never came

    retract(warehouse, reason="wrong document too", run_id=runs[2].run_id)
    only_first = tmp_path / "w3.duckdb"
    run_pipeline(make_config(folders[0], source_system="demo", warehouse=only_first))
    assert _practitioners(warehouse) == _practitioners(only_first)  # one version left: as it arrived

"""Deeply nested JSON is refused on its bytes (json_too_deep) in every FHIR reader, in bounded memory."""

from __future__ import annotations

import io

import ijson
import orjson
import pytest

from pipelines.intake import jsondepth
from pipelines.run import run_pipeline
from tests.conftest import ledger, resource, write_ndjson
from tests.hostile import deep_bundle, deep_resource, nested, run_bounded


@pytest.mark.parametrize(
    ("text", "deepest"),
    [
        (b"{}", 1),
        (b'{"a":[1,{"b":[]}]}', 4),
        (b'{"a":"[[[[[[[[[[","b":{}}', 2),  # brackets inside strings do not nest
        (b'{"a":"\\"[[[[[[","b":[[]]}', 3),  # nor after an escaped quote
        (nested(50, '{"a":', "}").encode(), 50),
    ],
)
def test_exceeds_measures_nesting_not_brackets_in_strings(text, deepest):
    assert not jsondepth.exceeds(text, deepest)
    assert jsondepth.exceeds(text, deepest - 1) or deepest == 1
    assert jsondepth.exceeds(text.decode(), deepest - 1) or deepest == 1


def test_bounded_parse_matches_ijson_within_the_bound():
    doc = orjson.dumps(
        {
            "resourceType": "Bundle",
            "meta": {"profile": ["p"]},
            "entry": [{"resource": {"a": [1, {"b": 2.5}]}}, 3],
        }
    )
    assert list(jsondepth.parse(io.BytesIO(doc), 100)) == list(ijson.parse(io.BytesIO(doc), use_float=False))
    assert list(jsondepth.items(io.BytesIO(doc), "entry.item", 100)) == list(
        ijson.items(io.BytesIO(doc), "entry.item", use_float=False)
    )
    # Past the bound an item is never built: one stand-in takes its place, its siblings go on.
    shallow = list(jsondepth.items(io.BytesIO(doc), "entry.item", 4))
    assert shallow == [jsondepth.TOO_DEEP_ITEM, 3]


def test_too_deep_units_are_quarantined_and_their_neighbours_converted(tmp_path, make_config, warehouse):
    src = tmp_path / "src"
    write_ndjson(
        src / "lines.ndjson",
        resource("Patient", "p1"),
        deep_resource(101),
        deep_resource(100 - 1),  # the outermost object is level 1: 99 arrays inside it reach 100
        resource("Patient", "p2"),
    )
    (src / "bundle.json").write_bytes(deep_bundle(5000, resource("Patient", "b1"), resource("Patient", "b2")))
    (src / "pretty.json").write_bytes(
        b'{\n  "resourceType": "Basic",\n  "x": ' + nested(5000).encode() + b"\n}\n"
    )
    run = run_pipeline(make_config(src))
    con = warehouse()
    assert ledger(con) == [
        ("bundle.json", 1, "bundle_entry", "converted", None, 1),
        ("bundle.json", 2, "bundle_entry", "quarantined", "json_too_deep", 0),
        ("bundle.json", 3, "bundle_entry", "converted", None, 1),
        ("lines.ndjson", 1, "ndjson_line", "converted", None, 1),
        ("lines.ndjson", 2, "ndjson_line", "quarantined", "json_too_deep", 0),
        ("lines.ndjson", 3, "ndjson_line", "converted", None, 1),
        ("lines.ndjson", 4, "ndjson_line", "converted", None, 1),
        ("pretty.json", 1, "resource", "quarantined", "json_too_deep", 0),
    ]
    messages = {r[0] for r in con.execute("SELECT message FROM ops.quarantine").fetchall()}
    assert messages == {"JSON nests deeper than 100 levels"}
    assert run.reconciles


def test_the_bound_is_a_setting(tmp_path, make_config, warehouse, monkeypatch):
    monkeypatch.setenv("EHRLIFT_LIMIT_JSON_MAX_DEPTH", "3")
    src = write_ndjson(
        tmp_path / "a.ndjson", resource("Patient", "p1", name=[{"given": ["A"]}]), resource("Basic", "b")
    )
    run_pipeline(make_config(src))
    assert [r[4] for r in ledger(warehouse())] == ["json_too_deep", None]


def test_100000_deep_inputs_stay_in_bounded_memory(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    deep = 100_000
    (src / "bundle.json").write_bytes(deep_bundle(deep, resource("Patient", "b1")))
    (src / "line.ndjson").write_bytes(
        orjson.dumps(resource("Patient", "p1")) + b"\n" + deep_resource(deep) + b"\n"
    )
    (src / "pretty.json").write_bytes(
        b'{\n "resourceType": "Basic",\n "x": ' + nested(deep).encode() + b"\n}\n"
    )
    (src / "first.json").write_bytes(b'{"x": ' + nested(deep).encode() + b', "resourceType": "Bundle"}')
    proc, peak = run_bounded(
        ["run", str(src), "--warehouse", str(tmp_path / "w" / "w.duckdb"), "--no-progress"]
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert b"Traceback" not in proc.stderr
    assert 0 < peak < 1 << 30
    assert b"json_too_deep 4" in proc.stdout


def test_every_bound_is_documented_with_a_documented_reason():
    from pipelines.common.paths import shipped
    from pipelines.common.reasons import check_reason
    from pipelines.intake.limits import limit

    bounds = orjson.loads((shipped("schemas") / "input_limits.json").read_bytes())["limits"]
    for name, entry in bounds.items():
        assert limit(name) == entry["value"] > 0
        assert entry["description"]
        if entry["reason"] is not None:
            check_reason(entry["reason"], "quarantined")


def test_a_repeated_member_name_is_quarantined_at_any_depth_on_every_path(tmp_path, make_config, warehouse):
    src = tmp_path / "src"
    nested_code = b'"code":{"coding":[{"system":"http://loinc.org","code":"1","code":"2"}]}'
    write_ndjson(
        src / "lines.ndjson",
        b'{"resourceType":"Patient","id":"a","id":"b"}',  # the DuckDB fast path
        b'{"resourceType":"Patient","gender":"male","active":true,"id":"c","gender":"female"}',  # Python path
        b'{"resourceType":"Patient","id":"d","name":[{"given":["A"],"given":["B"]}]}',  # nested, fast path
        b'{"resourceType":"Observation","id":"m","status":"final",' + nested_code + b"}",  # three deep
        # lenient JSON (NaN) and a late id go to the Python path; "given" in two objects is no repeat
        b'{"resourceType":"Patient","id":"n","name":[{"given":["A"]},{"given":["B"]}],"active":NaN}',
        b'{"resourceType":"Patient","id":"o","name":[{"given":["A"]},{"given":["B"]}]}',
        b'{"resourceType":"Patient","name":[{"given":["A"],"given":["B"]}],"id":"p"}',
        b'{"resourceType":"Patient","id":',  # broken JSON in the same batch
        resource("Patient", "e"),
        b'{"resourceType":"Patient","id":"r","x":' + b"9" * 100 + b',"name":[{"given":["A"],"given":["B"]}]}',
    )
    (src / "bundle.json").write_bytes(
        b'{"resourceType":"Bundle","type":"collection","entry":['
        b'{"resource":{"resourceType":"Patient","id":"f","id":"g"}},'
        b'{"resource":{"resourceType":"Patient","id":"h"},"resource":{"resourceType":"Patient","id":"i"}},'
        b'{"resource":{"resourceType":"Observation","id":"q","status":"final",' + nested_code + b"}},"
        b'{"resource":{"resourceType":"Patient","id":"j","name":[{"given":["A"]},{"given":["B"]}]}}]}'
    )
    (src / "one.json").write_bytes(
        b'{\n "resourceType": "Observation",\n "id": "k", "status": "final",\n ' + nested_code + b"\n}\n"
    )
    run = run_pipeline(make_config(src))
    con = warehouse()
    assert [(r[0], r[1], r[4]) for r in ledger(con)] == [
        ("bundle.json", 1, "json_duplicate_key"),
        ("bundle.json", 2, "json_duplicate_key"),
        ("bundle.json", 3, "json_duplicate_key"),
        ("bundle.json", 4, None),
        ("lines.ndjson", 1, "json_duplicate_key"),
        ("lines.ndjson", 2, "json_duplicate_key"),
        ("lines.ndjson", 3, "json_duplicate_key"),
        ("lines.ndjson", 4, "json_duplicate_key"),
        ("lines.ndjson", 5, ledger_reason(con, "lines.ndjson", 5)),
        ("lines.ndjson", 6, None),
        ("lines.ndjson", 7, "json_duplicate_key"),
        ("lines.ndjson", 8, "invalid_json"),
        ("lines.ndjson", 9, None),
        ("lines.ndjson", 10, "json_duplicate_key"),  # an integer past 64 bits does not hide it
        ("one.json", 1, "json_duplicate_key"),
    ]
    assert ledger_reason(con, "lines.ndjson", 5) != "json_duplicate_key"
    messages = {
        r[0]
        for r in con.execute(
            "SELECT message FROM ops.quarantine WHERE reason_code = 'json_duplicate_key'"
        ).fetchall()
    }
    assert messages == {"a member name appears twice in one object of the resource"}
    assert run.reconciles


def ledger_reason(con, name: str, position: int) -> str | None:
    return con.execute(
        "SELECT l.reason FROM ops.ledger l JOIN ops.files f USING (file_sha256) "
        "WHERE f.original_name = ? AND l.unit_position = ?",
        [name, position],
    ).fetchone()[0]

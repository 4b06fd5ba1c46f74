"""A run's fixed cost: what a one-file run imports, which views it rebuilds (and by rows), one connection."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from pipelines.cli import main
from pipelines.common.paths import shipped
from pipelines.common.warehouse import held_warehouse, open_warehouse
from pipelines.identity.views import resolve_person_views
from pipelines.run import narrow_refresh
from pipelines.views.materialize import _definitions, materialize_views, resource_key, view_stamps
from tests.conftest import resource, write_ndjson

# Libraries a one-file NDJSON run has no use for: other formats' parsers, the GX engine, the identity
# model, pydantic models, report rendering, the back-load client, and pandas: the stages hand rows to
# DuckDB as Arrow tables built without pyarrow's pandas probe (pipelines.common.arrow).
NOT_NEEDED = (
    "pandas",
    "lxml",
    "hl7",
    "hl7apy",
    "great_expectations",
    "splink",
    "fhir",
    "pydantic",
    "jsonschema",
    "jinja2",
    "httpx",
    "openpyxl",
    "sqlalchemy",
    "altair",
)


def _obs(rid: str, code: str = "8867-4", patient: str = "p1") -> dict:
    return resource(
        "Observation",
        rid,
        status="final",
        code={"coding": [{"system": "http://loinc.org", "code": code}]},
        subject={"reference": f"Patient/{patient}"},
        effectiveDateTime="2020-05-05T00:00:00Z",
        component=[{"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]}}],
    )


def _base(tmp_path: Path) -> Path:
    """A warehouse holding two patients, a condition and observations, linked into persons."""
    wh = tmp_path / "data" / "warehouse.duckdb"
    src = write_ndjson(
        tmp_path / "base" / "a.ndjson",
        resource("Patient", "p1", gender="female", birthDate="1970-01-02"),
        resource("Patient", "p2", gender="male", birthDate="1980-03-04"),
        resource(
            "Condition",
            "c1",
            subject={"reference": "Patient/p1"},
            code={"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]},
        ),
        _obs("o1"),
        _obs("o2", "29463-7", "p2"),
        _obs("o3", "8310-5"),
        _obs("o4", "29463-7"),
        _obs("o5", "8867-4", "p2"),
    )
    assert main(["run", str(src), "--warehouse", str(wh), "--no-progress"]) in (0, 7)
    return wh


def _views(wh: Path) -> dict[str, list[tuple]]:
    """Every view's rows, sorted (row order is not part of a view's meaning)."""
    with open_warehouse(wh, read_only=True) as con:
        names = [
            n
            for (n,) in con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'views' ORDER BY 1"
            ).fetchall()
        ]
        return {n: sorted(map(repr, con.execute(f'SELECT * FROM views."{n}"').fetchall())) for n in names}


def test_a_one_file_ndjson_run_imports_no_library_it_does_not_need(tmp_path):
    wh = _base(tmp_path)
    src = write_ndjson(tmp_path / "inc" / "one.ndjson", _obs("o-new"))
    # Printed by an exit handler: the console script ends the process without returning.
    code = (
        "import atexit, sys; from pipelines.entry import main; "
        f"atexit.register(lambda: print('LOADED', sorted(m for m in {NOT_NEEDED!r} if m in sys.modules))); "
        f"sys.argv = ['ehrlift', 'run', {str(src)!r}, '--warehouse', {str(wh)!r}, '--no-progress']; "
        "sys.exit(main())"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "LOADED []"


def test_the_cli_loads_no_converter_until_a_file_needs_it():
    code = (
        "import sys; import pipelines.cli; "
        "print(sorted(m for m in ('lxml', 'hl7', 'pipelines.convert.hl7v2.converter', "
        "'pipelines.convert.ccda.converter') if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert proc.stdout.strip() == "[]"


def test_the_converter_registry_names_each_converters_own_formats():
    from pipelines.convert import CONVERTERS, REGISTRY, handler_for

    assert [type(c).__name__ for c in CONVERTERS] == [cls for _, cls, _ in REGISTRY]
    for converter, (_, _, reads) in zip(CONVERTERS, REGISTRY, strict=True):
        assert converter.formats == reads
        for fmt in reads:
            assert handler_for(fmt) is converter
    every = [fmt for _, _, reads in REGISTRY for fmt in reads]
    assert len(every) == len(set(every))  # each format has exactly one converter


def test_a_one_file_run_rebuilds_only_its_types_rows_and_equals_a_full_rebuild(tmp_path, monkeypatch):
    wh = _base(tmp_path)
    import pipelines.views.materialize as materialize

    narrowed_views = []
    build = materialize.create_view_table

    def spy(con, view, target, **kwargs):
        if kwargs.get("only"):
            narrowed_views.append(view["name"])
        return build(con, view, target, **kwargs)

    monkeypatch.setattr(materialize, "create_view_table", spy)
    with open_warehouse(wh) as con:
        before = view_stamps(con)
        # A resource removed from its table since the views were built (as a merged party is).
        con.execute("""DELETE FROM fhir."Observation" WHERE CAST(resource AS VARCHAR) LIKE '%8310-5%'""")
    # A new observation and a new version of a stored one (its rows must be replaced, not added).
    src = write_ndjson(tmp_path / "inc" / "one.ndjson", _obs("o-new"), {**_obs("o1"), "status": "amended"})
    assert main(["run", str(src), "--warehouse", str(wh), "--no-progress"]) in (0, 7)
    with open_warehouse(wh, read_only=True) as con:
        after = view_stamps(con)
        statuses = con.execute(
            "SELECT status, count(*) FROM views.observation GROUP BY 1 ORDER BY 1"
        ).fetchall()
        assert statuses == [("amended", 1), ("final", 4)]
        (run,) = con.execute("SELECT run_id FROM ops.runs ORDER BY started_at DESC LIMIT 1").fetchone()
        count = con.execute("SELECT count(*) FROM views.observation").fetchone()[0]
    # Rebuilt: exactly the views over the type the run wrote; the others keep their earlier build.
    assert {v for v, (_, r) in after.items() if r == run} == {
        "observation",
        "observation_coding",
        "observation_component",
    }
    assert {v: s for v, s in after.items() if not v.startswith("observation")} == {
        v: s for v, s in before.items() if not v.startswith("observation")
    }
    assert count == 5
    assert narrowed_views == ["observation", "observation_component"]  # rows replaced, not whole tables
    narrowed = _views(wh)
    # What a full rebuild of every view (and the person resolution) gives is what the run left.
    with open_warehouse(wh) as con:
        materialize_views(con, shipped("schemas") / "views")
        resolve_person_views(con, shipped("schemas") / "views")
    assert _views(wh) == narrowed


def test_a_changed_terminology_decision_rebuilds_whole_views(tmp_path):
    wh = _base(tmp_path)
    views = shipped("schemas") / "views"
    with open_warehouse(wh) as con:
        runs = [r for (r,) in con.execute("SELECT run_id FROM ops.runs").fetchall()]
        logged = con.execute("SELECT count(*) FROM ops.mapping_log WHERE run_id = ?", runs).fetchone()[0]
        assert logged  # the base run logged its decisions
        # A later run repeating the same decisions: only its own resources' rows are replaced.
        con.execute(
            "UPDATE fhir.Observation SET run_id = 'later' WHERE id = (SELECT min(id) FROM fhir.Observation)"
        )
        con.execute("INSERT INTO ops.mapping_log SELECT * REPLACE ('later' AS run_id) FROM ops.mapping_log")
        assert set(narrow_refresh(con, ["later"], {"Observation"})) == {"Observation"}
        # ... a decision that differs from the logged one (or is new) may change any row: nothing narrowed.
        con.execute(
            "INSERT INTO ops.mapping_log (run_id, source_system, source_code, method) "
            "VALUES ('later', 'urn:x', 'new', 'unmapped')"
        )
        assert narrow_refresh(con, ["later"], {"Observation"}) == {}
        # Most of a table written: a full rebuild is cheaper than replacing rows.
        con.execute("DELETE FROM ops.mapping_log WHERE source_code = 'new'")
        con.execute("UPDATE fhir.Observation SET run_id = 'later'")
        assert narrow_refresh(con, ["later"], {"Observation"}) == {}
    key = {"name": "k", "path": "getResourceKey()"}
    assert resource_key({"select": [{"column": [key]}]}) == "k"
    assert resource_key({"select": [{"forEach": "x", "column": [key]}]}) is None
    assert all(resource_key(v) for _, v in _definitions(views))  # every shipped view can be narrowed


def test_inside_a_held_warehouse_every_open_is_a_cursor_of_one_connection(tmp_path):
    wh = tmp_path / "wh.duckdb"
    with held_warehouse(wh):
        with open_warehouse(wh) as con:
            con.execute("CREATE TABLE ops.t (x INTEGER)")
            con.execute("INSERT INTO ops.t VALUES (1)")
        # Closing a cursor leaves the held connection open; a read-only open is a cursor too.
        with open_warehouse(wh, read_only=True) as con:
            assert con.execute("SELECT x FROM ops.t").fetchall() == [(1,)]
        with held_warehouse(wh), open_warehouse(wh) as con:  # nested: the same connection
            con.execute("INSERT INTO ops.t VALUES (2)")
    # Released: the file opens on its own again, with everything committed.
    with open_warehouse(wh, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM ops.t").fetchone() == (2,)


@pytest.mark.parametrize("files", [1, 450])
def test_landing_records_every_file_whatever_the_number_of_rows_per_statement(tmp_path, make_config, files):
    from pipelines.run import land_stage

    for i in range(files):
        write_ndjson(tmp_path / "src" / f"f{i:04d}.ndjson", _obs(f"o{i}"))
    config = make_config(tmp_path / "src")
    land_stage(config)
    with open_warehouse(config.warehouse, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM ops.files").fetchone() == (files,)
        rows = con.execute(
            "SELECT count(*), count(DISTINCT seq), count(DISTINCT file_sha256) FROM ops.run_files"
        )
        assert rows.fetchone() == (files, files, files)


def test_the_console_script_ends_without_teardown_yet_runs_exit_handlers_and_flushes(tmp_path):
    code = (
        "import atexit, sys; from pipelines.entry import main; "
        "atexit.register(lambda: sys.stderr.write('HANDLER RAN')); "
        "sys.argv = ['ehrlift', 'terminology', 'status', '--warehouse', sys.argv[1]]; "
        "sys.exit(main())"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "none.duckdb")],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 4, proc.stderr[-2000:]  # no warehouse there: a coded exit, as before
    assert proc.stderr.endswith("HANDLER RAN") and "no warehouse" in proc.stderr


def test_structure_validation_compiles_the_schema_only_for_types_a_run_stored(tmp_path, monkeypatch):
    from pipelines.quality import structure

    wh = _base(tmp_path)
    compiled = []
    build = structure._validator
    monkeypatch.setattr(structure, "_validator", lambda t, nested: compiled.append(t) or build(t, nested))
    with open_warehouse(wh, read_only=True) as con:
        assert structure.validate_structure(con, ["a-run-that-stored-nothing"], 5) == []
        assert compiled == []
        (run,) = con.execute("SELECT run_id FROM ops.runs").fetchone()
        checked = {t.resource_type: t.checked for t in structure.validate_structure(con, [run], 5)}
    assert checked == {"Condition": 1, "Observation": 5, "Patient": 2}
    assert sorted(compiled) == ["Condition", "Observation", "Patient"]  # one type at a time


def _threads_after_landing(make_config, src: Path, name: str, *, resume: bool = False, **changes) -> int:
    import dataclasses

    from pipelines.run import fit_threads, land_stage
    from pipelines.scale import limits as scale_limits

    config = make_config(src, warehouse=src.parents[1] / name / "warehouse.duckdb")
    shipped_limits = scale_limits.limits()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(scale_limits, "limits", lambda: dataclasses.replace(shipped_limits, **changes))
        with held_warehouse(config.warehouse):
            land_stage(config)
            # A resume of another run: its files are converted, nothing of this run is pending.
            fit_threads(dataclasses.replace(config, run_id="run-resumed") if resume else config)
            with open_warehouse(config.warehouse) as con:  # another cursor: the setting is the database's
                return int(con.execute("SELECT current_setting('threads')").fetchall()[0][0])


def test_a_small_run_works_on_one_duckdb_thread_and_a_larger_one_keeps_them(
    tmp_path, make_config, monkeypatch
):
    monkeypatch.delenv("EHRLIFT_DUCKDB_THREADS", raising=False)
    src = write_ndjson(tmp_path / "in" / "a.ndjson", _obs("o1"), _obs("o2"))
    size = src.stat().st_size
    assert _threads_after_landing(make_config, src, "small", small_run_bytes=size + 1) == 1
    default = int(duckdb.connect().execute("SELECT current_setting('threads')").fetchall()[0][0])
    assert _threads_after_landing(make_config, src, "large", small_run_bytes=size) == default
    assert (
        _threads_after_landing(make_config, src, "resume", resume=True, small_run_bytes=size + 1) == default
    )


def test_the_operators_thread_count_wins(tmp_path, make_config, monkeypatch):
    monkeypatch.setenv("EHRLIFT_DUCKDB_THREADS", "3")
    src = write_ndjson(tmp_path / "in" / "a.ndjson", _obs("o1"))
    assert _threads_after_landing(make_config, src, "set", small_run_bytes=1 << 30) == 3

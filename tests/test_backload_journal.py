"""The FHIR send journal: what it holds, a torn last line, and folds that never double a row."""

from __future__ import annotations

import shutil

import pytest

from pipelines.backload.journal import Journal, fold, outcome_line, read, recover
from pipelines.backload.journal import folder as journal_folder
from pipelines.backload.runner import plan_backload
from pipelines.common.errors import EhrliftError
from pipelines.common.warehouse import open_warehouse
from tests.backload_builders import build_warehouse, condition, patient

SERVER = "http://127.0.0.1:1/fhir"


def _planned(tmp_path):
    wh = build_warehouse(tmp_path / "w.duckdb", [patient("p1", "M1"), condition("c1", "p1")])
    plan_id = plan_backload(wh, "millennium-r4", tmp_path / "out").plan_id
    return wh, plan_id


def _journal(wh, plan_id) -> Journal:
    j = Journal(journal_folder(wh) / f"{plan_id}.jnl", plan_id, "millennium-r4", SERVER)
    j.intents([1, 2])
    j.outcomes([outcome_line(1, "created", 201, [], 1, "srv-1", "3")])
    j.outcomes([outcome_line(2, "failed", 422, ["business-rule", "extension"], 1, None, None)])
    return j


def _rows(wh):
    with open_warehouse(wh, read_only=True) as con:
        results = con.execute(
            "SELECT seq, resource_type, step, state, http_status, issue_codes, attempts, server_id "
            "FROM ops.backload_results ORDER BY seq, recorded_at, state"
        ).fetchall()
        ids = con.execute(
            "SELECT target, resource_type, warehouse_id, server_id, version_id, server, "
            "content_sha256 IS NOT NULL "
            "FROM ops.backload_ids"
        ).fetchall()
    return results, ids


def test_fold_writes_results_and_ids_once_and_removes_the_file(tmp_path):
    wh, plan_id = _planned(tmp_path)
    j = _journal(wh, plan_id)
    j.close()
    assert oct(j.path.stat().st_mode & 0o777) == "0o600"
    fields = set(j.path.read_text().replace("\n", "\t").split("\t"))
    assert not fields & {"M1", "p1", "c1", "Patient", "Condition"}  # no record values, no warehouse ids
    copy = tmp_path / "copy.jnl"
    shutil.copy(j.path, copy)
    with open_warehouse(wh) as con:
        assert fold(con, j.path) == 4
    assert not j.path.exists()
    expected = (
        [
            (1, "Patient", "create", "intent", None, None, None, None),
            (1, "Patient", "create", "created", 201, None, 1, "srv-1"),
            (2, "Condition", "create", "intent", None, None, None, None),
            (2, "Condition", "create", "failed", 422, "business-rule,extension", 1, None),
        ],
        [("millennium-r4", "Patient", "p1", "srv-1", "3", SERVER, True)],
    )
    assert _rows(wh) == expected
    # A crash between the fold's commit and the file's removal folds it again: nothing is doubled.
    with open_warehouse(wh) as con:
        fold(con, copy)
    assert _rows(wh) == expected


def test_a_torn_last_line_is_ignored_and_a_damaged_journal_is_refused(tmp_path):
    wh, plan_id = _planned(tmp_path)
    j = _journal(wh, plan_id)
    j.outcomes([b"R\t2\tcreat"])  # a kill in the middle of a write
    j.close()
    head, intents, results, torn = read(j.path)
    assert torn and len(intents) == 2 and len(results) == 2 and head[2] == plan_id
    with open_warehouse(wh) as con:
        assert recover(con, wh) == 1  # what the next send does first
    results, _ids = _rows(wh)
    assert [r[3] for r in results] == ["intent", "created", "intent", "failed"]
    damaged = journal_folder(wh) / "other.jnl"
    damaged.write_bytes(b"H\tehrlift-fhir-journal\t1\tx\tmillennium-r4\ts\nZ\tnot a line\n")
    with open_warehouse(wh) as con, pytest.raises(EhrliftError, match="damaged at line 2"):
        recover(con, wh)
    assert damaged.exists()  # kept as it is, for the operator

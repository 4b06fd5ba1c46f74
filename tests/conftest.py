"""Shared fixtures: the third-party corpus (skipped with a reason when absent) and small data builders."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import orjson
import pytest

from pipelines.common.config import RunConfig
from pipelines.common.warehouse import open_warehouse

REPO = Path(__file__).resolve().parents[1]


def corpus_root() -> Path:
    return Path(os.environ.get("EHRLIFT_CORPUS") or REPO.parent / "shared" / "corpus")


@pytest.fixture(scope="session")
def corpus() -> Path:
    root = corpus_root()
    if not root.is_dir():
        pytest.skip(f"third-party corpus not found at {root}: set EHRLIFT_CORPUS to run corpus tests")
    return root


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., RunConfig]:
    """RunConfig for sources under a per-test warehouse (progress bars off)."""

    def build(*sources: Path | str, **kwargs) -> RunConfig:
        kwargs.setdefault("warehouse", tmp_path / "data" / "warehouse.duckdb")
        kwargs.setdefault("progress", False)
        return RunConfig(sources=tuple(str(s) for s in sources), **kwargs)

    return build


@pytest.fixture
def warehouse(tmp_path: Path) -> Iterator[Callable[[], duckdb.DuckDBPyConnection]]:
    """Opens the per-test warehouse read-only after a run, closing every connection at the end."""
    opened: list[duckdb.DuckDBPyConnection] = []

    def connect() -> duckdb.DuckDBPyConnection:
        con = open_warehouse(tmp_path / "data" / "warehouse.duckdb", read_only=True)
        opened.append(con)
        return con

    yield connect
    for con in opened:
        con.close()


def resource(rtype: str, rid: str | None = None, **fields) -> dict:
    """A tiny FHIR resource for tests."""
    out: dict = {"resourceType": rtype}
    if rid is not None:
        out["id"] = rid
    out.update(fields)
    return out


def write_ndjson(path: Path, *lines: dict | bytes | str) -> Path:
    """Each dict becomes one compact JSON line; bytes and str are written as given (plus a newline)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        for line in lines:
            if isinstance(line, dict):
                fh.write(orjson.dumps(line) + b"\n")
            elif isinstance(line, str):
                fh.write(line.encode() + b"\n")
            else:
                fh.write(line + b"\n")
    return path


def read_ndjson(path: Path) -> list[dict]:
    """Every line of an NDJSON file, parsed."""
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def write_json(path: Path, obj: object, indent: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(obj, option=orjson.OPT_INDENT_2 if indent else 0))
    return path


def ledger(con: duckdb.DuckDBPyConnection, run_id: str | None = None) -> list[tuple]:
    """(file name, unit_position, unit_kind, outcome, reason, resource_count) in file and unit order."""
    sql = """
        SELECT f.original_name, l.unit_position, l.unit_kind, l.outcome, l.reason, l.resource_count
        FROM ops.ledger l JOIN ops.files f USING (file_sha256)
        {where} ORDER BY f.original_name, l.unit_position
    """
    if run_id is None:
        return con.execute(sql.format(where="")).fetchall()
    return con.execute(sql.format(where="WHERE l.run_id = ?"), [run_id]).fetchall()

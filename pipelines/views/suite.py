"""Runs the official SQL-on-FHIR v2 JSON test suite against the compiler on an in-memory DuckDB."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import orjson

from .compiler import compile_view
from .sqlval import quote_ident
from .validate import RESOURCE


@dataclass(frozen=True)
class Failure:
    file: str
    title: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file} :: {self.title}: {self.reason}"


@dataclass
class SuiteResult:
    passed: int = 0
    failed: int = 0
    failures: list[Failure] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.passed + self.failed

    def summary(self) -> str:
        return f"{self.passed} passed, {self.failed} failed"


def _canonical(value: object) -> object:
    """A hashable form in which 1 == 1.0 but True != 1, for order-insensitive row comparison."""
    if value is None:
        return ("null",)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        number = float(value)
        return ("num", round(number, 9) if math.isfinite(number) else number)
    if isinstance(value, str):
        return ("str", value)
    if isinstance(value, list | tuple):
        return ("list", tuple(_canonical(v) for v in value))
    if isinstance(value, dict):
        return ("obj", tuple(sorted((k, _canonical(v)) for k, v in value.items())))
    return ("other", repr(value))


def _row_key(row: dict) -> tuple:
    return tuple(sorted((k, _canonical(v)) for k, v in row.items()))


def load_resources(con: duckdb.DuckDBPyConnection, resources: list[dict]) -> set[str]:
    """Create one temp table (id, resource JSON) per resource type; return the types created."""
    by_type: dict[str, list[dict]] = {}
    for resource in resources:
        kind = resource.get("resourceType")
        if isinstance(kind, str) and RESOURCE.fullmatch(kind):
            by_type.setdefault(kind, []).append(resource)
    for kind, items in by_type.items():
        ensure_table(con, kind)
        rows = [(r.get("id"), orjson.dumps(r).decode()) for r in items]
        con.executemany(f"INSERT INTO temp.main.{quote_ident(kind)} VALUES (?, ?)", rows)
    return set(by_type)


def ensure_table(con: duckdb.DuckDBPyConnection, kind: str) -> None:
    con.execute(f"CREATE TEMP TABLE IF NOT EXISTS {quote_ident(kind)} (id VARCHAR, resource JSON)")


def _temp_table(kind: str) -> str:
    return f"temp.main.{quote_ident(kind)}"


def _decode(value: object, sql_type: str | None) -> object:
    if sql_type is not None and sql_type.startswith("JSON") and value is not None:
        if isinstance(value, list):
            return [orjson.loads(v) if isinstance(v, str) else v for v in value]
        return orjson.loads(value) if isinstance(value, str) else value
    return value


def run_view(con: duckdb.DuckDBPyConnection, view: dict) -> tuple[list[str], list[dict]]:
    """Compile and run a view against the temp tables; return (column names, rows as dicts)."""
    compiled = compile_view(view, _temp_table)
    ensure_table(con, compiled.resource)
    cursor = con.execute(compiled.sql)
    names = [d[0] for d in cursor.description]
    types = {name: sql_type for name, sql_type, _ in compiled.columns}
    rows = [
        {n: _decode(v, types.get(n)) for n, v in zip(names, row, strict=True)} for row in cursor.fetchall()
    ]
    return names, rows


def check_test(con: duckdb.DuckDBPyConnection, test: dict) -> str | None:
    """Run one test; return why it failed, or None when it passed."""
    view = test.get("view")
    if test.get("expectError"):
        try:
            run_view(con, view)
        except Exception:
            return None
        return "expected an error, but the view compiled and ran"
    try:
        names, rows = run_view(con, view)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    if "expectColumns" in test and names != test["expectColumns"]:
        return f"columns {names} != expected {test['expectColumns']}"
    if "expectCount" in test and len(rows) != test["expectCount"]:
        return f"{len(rows)} rows != expected count {test['expectCount']}"
    if "expect" in test:
        expected = test["expect"]
        if Counter(map(_row_key, rows)) != Counter(map(_row_key, expected)):
            return f"rows differ: got {rows!r}, expected {expected!r}"
    return None


def run_suite(tests_dir: Path) -> SuiteResult:
    """Run every test of every *.json file in `tests_dir`; one failure never stops the others."""
    result = SuiteResult()
    for path in sorted(Path(tests_dir).glob("*.json")):
        try:
            suite = orjson.loads(path.read_bytes())
            tests = suite["tests"]
        except Exception as exc:
            result.failed += 1
            result.failures.append(Failure(path.name, "(file)", f"unreadable test file: {exc}"))
            continue
        con = duckdb.connect(":memory:")
        try:
            load_resources(con, suite.get("resources", []))
            for test in tests:
                title = str(test.get("title", "(untitled)"))
                try:
                    reason = check_test(con, test)
                except Exception as exc:  # a harness bug must not hide the other tests
                    reason = f"{type(exc).__name__}: {exc}"
                if reason is None:
                    result.passed += 1
                else:
                    result.failed += 1
                    result.failures.append(Failure(path.name, title, reason))
        finally:
            con.close()
    return result

"""Write the de-identified analyst views into a separate DuckDB file, and audit the read of the PHI views."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import pyarrow as pa

from pipelines.common.config import ehrlift_version
from pipelines.common.errors import ConfigError
from pipelines.common.warehouse import duckdb_settings, open_warehouse
from pipelines.deid.audit import record_access
from pipelines.deid.rules import Deidentifier, Rules, ViewRules, load_rules, truncate

BATCH_ROWS = 50_000


@dataclass
class DeidResult:
    out: Path
    date_mode: str
    tables: dict[str, int] = field(default_factory=dict)
    excluded: list[str] = field(default_factory=list)


def deidentify(
    warehouse: Path,
    out: Path | None = None,
    *,
    dates: str | None = None,
    salt: str | None = None,
    as_of: date | None = None,
    rules: Rules | None = None,
) -> DeidResult:
    """Copy every views.* table that has rules, column by column through them, into a new DuckDB file.

    Fails closed: a view column without a rule stops the export (a new column could carry PHI). Views
    without rules are left out and named in the result. The salt comes from the environment and is not
    written anywhere; the file is replaced atomically, so an analyst never sees a half-written one.
    """
    rules = rules or load_rules()
    if salt is None:
        salt = os.environ.get(rules.salt_env, "")
        if not salt:
            raise ConfigError(
                f"no de-identification salt: set {rules.salt_env}",
                hint="a long random secret; the same salt gives the same hashes across exports",
            )
    deid = Deidentifier(rules, salt, dates, as_of)
    out = Path(out) if out is not None else Path(warehouse).parent / "analyst" / "deidentified.duckdb"
    if out.resolve() == Path(warehouse).resolve():
        raise ConfigError("--out must be a different file from the warehouse")
    result = DeidResult(out, deid.date_mode)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    _remove(tmp)
    with open_warehouse(warehouse) as con:
        present = [
            r[0]
            for r in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'views' ORDER BY 1"
            ).fetchall()
        ]
        if not present:
            raise ConfigError(f"the warehouse {warehouse} has no views yet", hint="run `ehrlift run` first")
        result.excluded = [v for v in present if v not in rules.views]
        todo = [v for v in present if v in rules.views]
        for view in todo:
            _check_columns(con, view, rules.views[view])
        try:
            with duckdb.connect(str(tmp), config=duckdb_settings()) as dst:
                for view in todo:
                    result.tables[view] = _copy_view(con, dst, view, rules.views[view], deid)
                _write_manifest(dst, rules, deid, result)
            os.replace(tmp, out)
        finally:
            _remove(tmp)
        record_access(
            con,
            "deidentify",
            "read",
            {f"views.{v}": n for v, n in result.tables.items()},
            detail=f"wrote de-identified views to {out.name}",
        )
    return result


def _remove(path: Path) -> None:
    for p in (path, path.with_name(path.name + ".wal")):
        p.unlink(missing_ok=True)


def _check_columns(con: duckdb.DuckDBPyConnection, view: str, rules: ViewRules) -> None:
    columns = [
        r[0]
        for r in con.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = 'views' AND table_name = ? ORDER BY ordinal_position",
            [view],
        ).fetchall()
    ]
    missing = [c for c in columns if c not in rules.columns]
    if missing:
        raise ConfigError(
            f"views.{view} has columns without a de-identification rule: {', '.join(missing)}",
            hint="add a rule for each to schemas/deid/rules.json (reviewed like code)",
        )
    if rules.patient_key not in columns:
        raise ConfigError(f"views.{view} lacks its patient key column {rules.patient_key!r}")


def _copy_view(
    con: duckdb.DuckDBPyConnection,
    dst: duckdb.DuckDBPyConnection,
    view: str,
    rules: ViewRules,
    deid: Deidentifier,
) -> int:
    reader = con.sql(f'SELECT * FROM views."{view}"').to_arrow_reader(BATCH_ROWS)
    rows = 0
    created = False
    for batch in reader:
        table = dst.from_arrow(transform_batch(batch, rules, deid))
        if not created:
            table.create(f'"{view}"')
            created = True
        else:
            table.insert_into(f'"{view}"')
        rows += batch.num_rows
    if not created:  # an empty view still gets its (de-identified) shape
        empty = transform_batch(pa.RecordBatch.from_pylist([], schema=reader.schema), rules, deid)
        dst.from_arrow(empty).create(f'"{view}"')
    return rows


def transform_batch(batch: pa.RecordBatch, rules: ViewRules, deid: Deidentifier) -> pa.Table:
    """One batch of a view through its column rules; dropped columns are absent from the result."""
    keys = [None if k is None else str(k) for k in batch.column(rules.patient_key).to_pylist()]
    out: dict[str, pa.Array] = {}
    for name in batch.schema.names:
        rule = rules.columns[name]
        column = batch.column(name)
        if rule.action == "keep":
            out[name] = column
        elif rule.action == "drop":
            continue
        elif rule.action == "hash":
            out[name] = pa.array([deid.hash(v) for v in column.to_pylist()], pa.string())
        elif rule.action == "zip3":
            out[name] = pa.array([deid.zip3(v) for v in column.to_pylist()], pa.string())
        elif rule.action == "date":
            values = _as_given(batch, name)
            out[name] = pa.array([deid.date(v, k) for v, k in zip(values, keys, strict=True)], pa.string())
        elif rule.action == "birth_date":
            births = _as_given(batch, name)
            deaths = (
                batch.column(rule.death_column).to_pylist() if rule.death_column else [None] * len(births)
            )
            out[name] = pa.array(
                [deid.birth_date(b, d, k) for b, d, k in zip(births, deaths, keys, strict=True)], pa.string()
            )
            out["age"] = pa.array([deid.age(b, d) for b, d in zip(births, deaths, strict=True)], pa.int32())
            out["age_90_plus"] = pa.array(
                [deid.over_top(b, d) for b, d in zip(births, deaths, strict=True)], pa.bool_()
            )
    return pa.table(out)


def _as_given(batch: pa.RecordBatch, name: str) -> list:
    """A typed date column's values cut back to the precision its sibling records (a year stays a year)."""
    values = batch.column(name).to_pylist()
    sibling = f"{name}_precision"
    if sibling not in batch.schema.names:
        return values
    return [truncate(v, p) for v, p in zip(values, batch.column(sibling).to_pylist(), strict=True)]


def _write_manifest(
    dst: duckdb.DuckDBPyConnection, rules: Rules, deid: Deidentifier, result: DeidResult
) -> None:
    """What an analyst (and a reviewer) needs to know about this file; the salt is not in it."""
    dst.execute("CREATE TABLE deid_manifest (key VARCHAR, value VARCHAR)")
    rows = [
        ("standard", "HIPAA Safe Harbor (45 CFR 164.514(b)(2))"),
        ("rules_version", rules.version),
        ("rules_sha256", rules.sha256),
        ("date_mode", deid.date_mode),
        ("age_as_of", deid.as_of.isoformat()),
        ("created_at", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")),
        ("ehrlift_version", ehrlift_version()),
        *((f"rows.{t}", str(n)) for t, n in result.tables.items()),
    ]
    if deid.date_mode == "shift":
        rows.append(("max_shift_days", str(rules.max_shift_days)))
    dst.executemany("INSERT INTO deid_manifest VALUES (?, ?)", rows)

"""The terminology tables in the warehouse: the shipped default, installing releases, what is in force."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa

from pipelines.common.warehouse import transaction
from terminology.loaders import LoadReport, Release, StatusChange

DEFAULT_DIR = Path(__file__).resolve().parent / "default"
_UTC = "strftime(timezone('UTC', {}), '%Y-%m-%d %H:%M:%SZ')"


def has_terminology(con: duckdb.DuckDBPyConnection) -> bool:
    row = con.execute(
        "SELECT count(*) FROM information_schema.tables "
        "WHERE table_schema = 'terminology' AND table_name = 'releases'"
    ).fetchone()
    return bool(row and row[0]) and bool(
        con.execute("SELECT count(*) FROM terminology.releases").fetchone()[0]
    )


def default_sources() -> dict:
    return json.loads((DEFAULT_DIR / "sources.json").read_text(encoding="utf-8"))


def ensure_default(con: duckdb.DuckDBPyConnection) -> None:
    """Load the shipped default tables unless this version of them is already loaded.

    Systems for which a user loaded a release of their own keep it: the default fills the rest.
    """
    meta = default_sources()
    sha = meta["content_sha256"]
    if con.execute(
        "SELECT count(*) FROM terminology.releases WHERE kind = 'default' AND sha256 = ?", [sha]
    ).fetchone()[0]:
        return
    files = {
        name: str(DEFAULT_DIR / f"{name}.parquet")
        for name in ("concepts", "designations", "properties", "releases")
    }
    now = datetime.now(UTC)
    with transaction(con):
        # Systems a user release is in force for are not the default's to replace.
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _default_systems AS "
            "SELECT * FROM read_parquet($path) r WHERE NOT EXISTS ("
            "  SELECT 1 FROM terminology.releases x"
            "  WHERE x.system = r.system AND x.active AND x.kind <> 'default')",
            {"path": files["releases"]},
        )
        for table in ("concepts", "designations", "properties"):
            con.execute(
                f"DELETE FROM terminology.{table} WHERE system IN (SELECT system FROM _default_systems)"
            )
            con.execute(
                f"INSERT INTO terminology.{table} SELECT t.* FROM read_parquet($path) t "
                "WHERE t.system IN (SELECT system FROM _default_systems)",
                {"path": files[table]},
            )
        con.execute("UPDATE terminology.releases SET active = false WHERE kind = 'default' AND active")
        con.execute(
            "INSERT INTO terminology.releases"
            " (kind, system, version, source, sha256, loaded_at, concepts, active, content)"
            " SELECT 'default', r.system, r.version, r.source, $sha, $now, r.concepts,"
            " r.system IN (SELECT system FROM _default_systems), r.content"
            " FROM read_parquet($path) r",
            {"sha": sha, "now": now, "path": files["releases"]},
        )
        con.execute("DROP TABLE _default_systems")


def releases(con: duckdb.DuckDBPyConnection) -> list[dict]:
    if not has_terminology(con):
        return []
    cur = con.execute(
        f"SELECT kind, system, version, source, sha256, {_UTC.format('loaded_at')} AS loaded_at, concepts, "
        "active, content FROM terminology.releases ORDER BY system NULLS FIRST, loaded_at, kind"
    )
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


def status(con: duckdb.DuckDBPyConnection) -> dict:
    """What is in force: per system its release, counts of concepts, inactive codes and replacements."""
    rows = con.execute(
        f"""
        WITH c AS (
            SELECT system, count(*) AS concepts, count(*) FILTER (WHERE status = 'inactive') AS inactive
            FROM terminology.concepts GROUP BY system),
        r AS (SELECT system, count(*) AS replacements FROM terminology.replacements GROUP BY system),
        m AS (SELECT map, count(*) AS maps FROM terminology.maps GROUP BY map)
        SELECT rel.kind, rel.system, rel.version, rel.source, rel.content,
               {_UTC.format("rel.loaded_at")},
               coalesce(c.concepts, m.maps, 0), coalesce(c.inactive, 0), coalesce(r.replacements, 0)
        FROM terminology.releases rel
        LEFT JOIN c ON c.system = rel.system
        LEFT JOIN r ON r.system = rel.system
        LEFT JOIN m ON m.map = rel.system
        WHERE rel.active
        ORDER BY rel.kind = 'default', rel.system
        """
    ).fetchall()
    cols = (
        "kind",
        "system",
        "version",
        "source",
        "content",
        "loaded_at",
        "concepts",
        "inactive",
        "replacements",
    )
    systems = [dict(zip(cols, r, strict=True)) for r in rows]
    superseded = con.execute("SELECT count(*) FROM terminology.releases WHERE NOT active").fetchone()[0]
    maps = con.execute(
        "SELECT map, map_version, count(*) FROM terminology.maps GROUP BY map, map_version ORDER BY map"
    ).fetchall()
    return {
        "systems": systems,
        "superseded_releases": superseded,
        "maps": [{"map": m, "map_version": v, "rows": n} for m, v, n in maps],
    }


# -- installing a release --------------------------------------------------------------------------------
_COLUMNS = {
    "concepts": ("code", "display", "status", "status_detail"),
    "designations": ("code", "term", "use"),
    "properties": ("code", "property", "value"),
    "replacements": ("code", "target_code", "relation"),
}
_MAP_COLUMNS = (
    "source_system",
    "source_code",
    "source_display",
    "target_system",
    "target_code",
    "target_display",
    "equivalence",
    "author",
    "reviewer",
    "review_date",
)


def _as_table(rows: list[tuple] | pa.Table, columns: tuple[str, ...]) -> pa.Table:
    if isinstance(rows, pa.Table):
        return rows.select(list(columns)).cast(pa.schema([(c, pa.string()) for c in columns]))
    return _arrow(rows, columns)


def _arrow(
    rows: list[tuple], columns: tuple[str, ...], types: dict[str, pa.DataType] | None = None
) -> pa.Table:
    types = types or {}
    return pa.table(
        {c: pa.array([r[i] for r in rows], type=types.get(c, pa.string())) for i, c in enumerate(columns)}
    )


def install(con: duckdb.DuckDBPyConnection, release: Release) -> LoadReport:
    """Make `release` the one in force for its system, in one transaction; report status changes."""
    report = LoadReport(
        kind=release.kind,
        system=release.system,
        version=release.version,
        source=release.source,
        sha256=release.sha256,
        counts=_counts(release),
    )
    current = con.execute(
        "SELECT kind, version, sha256, content FROM terminology.releases WHERE system = ? AND active",
        [release.system],
    ).fetchall()
    if any(kind == release.kind and sha == release.sha256 for kind, _v, sha, _c in current):
        report.already_loaded = True
        return report
    report.previous_version = current[0][1] if current else None
    previous_complete = any(c == "complete" for *_rest, c in current)

    staged = {name: _as_table(getattr(release, name), cols) for name, cols in _COLUMNS.items()}
    maps = _arrow(release.maps, _MAP_COLUMNS, {"review_date": pa.date32()})
    names = []
    try:
        for name, table in {**staged, "maps": maps}.items():
            con.register(f"_stage_{name}", table)
            names.append(f"_stage_{name}")
        with transaction(con):
            if release.kind != "conceptmap":
                report.changed = _changes(con, release.system, previous_complete)
                for name, cols in _COLUMNS.items():
                    con.execute(f"DELETE FROM terminology.{name} WHERE system = ?", [release.system])
                    select = ", ".join(cols)
                    if name in ("concepts", "replacements"):
                        con.execute(
                            f"INSERT INTO terminology.{name} (system, {select}, version) "
                            f"SELECT ?, {select}, ? FROM _stage_{name}",
                            [release.system, release.version],
                        )
                    else:
                        con.execute(
                            f"INSERT INTO terminology.{name} (system, {select}) "
                            f"SELECT ?, {select} FROM _stage_{name}",
                            [release.system],
                        )
            if release.map_name:
                con.execute("DELETE FROM terminology.maps WHERE map = ?", [release.map_name])
                cols = ", ".join(_MAP_COLUMNS)
                con.execute(
                    f"INSERT INTO terminology.maps (map, map_version, {cols}) "
                    f"SELECT ?, ?, {cols} FROM _stage_maps",
                    [release.map_name, release.version],
                )
            con.execute(
                "UPDATE terminology.releases SET active = false WHERE system = ? AND active", [release.system]
            )
            con.execute(
                "INSERT INTO terminology.releases VALUES (?, ?, ?, ?, ?, ?, ?, true, ?)",
                [
                    release.kind,
                    release.system,
                    release.version,
                    release.source,
                    release.sha256,
                    datetime.now(UTC),
                    len(release.concepts) if release.kind != "conceptmap" else len(release.maps),
                    release.content,
                ],
            )
    finally:
        for name in names:
            con.unregister(name)
    return report


def _counts(release: Release) -> dict[str, int]:
    counts = {name: len(getattr(release, name)) for name in _COLUMNS}
    statuses = (
        release.concepts.column("status").to_pylist()
        if isinstance(release.concepts, pa.Table)
        else [c[2] for c in release.concepts]
    )
    counts["inactive"] = statuses.count("inactive")
    counts["maps"] = len(release.maps)
    counts.update(release.skipped)
    return counts


def _changes(con: duckdb.DuckDBPyConnection, system: str, previous_complete: bool) -> list[StatusChange]:
    """Codes in force before whose status or replacement differs in the staged release."""
    rows = con.execute(
        """
        WITH old AS (SELECT code, status FROM terminology.concepts WHERE system = $system),
        oldr AS (SELECT code, string_agg(target_code || ' ' || relation, ',' ORDER BY ALL) AS t
                 FROM terminology.replacements WHERE system = $system GROUP BY code),
        newr AS (SELECT code, string_agg(target_code || ' ' || relation, ',' ORDER BY ALL) AS t,
                        string_agg(target_code, ' ' ORDER BY target_code) AS targets
                 FROM _stage_replacements GROUP BY code)
        SELECT o.code, o.status, n.status, newr.targets
        FROM old o
        LEFT JOIN _stage_concepts n ON n.code = o.code
        LEFT JOIN oldr ON oldr.code = o.code
        LEFT JOIN newr ON newr.code = o.code
        WHERE (n.code IS NULL AND $complete)
           OR (n.code IS NOT NULL AND (o.status IS DISTINCT FROM n.status OR oldr.t IS DISTINCT FROM newr.t))
        ORDER BY o.code
        """,
        {"system": system, "complete": previous_complete},
    ).fetchall()
    return [StatusChange(system, code, old, new, targets) for code, old, new, targets in rows]


def changed_in_warehouse(con: duckdb.DuckDBPyConnection, changes: list[StatusChange], *, examples: int = 5):
    """How many changed codes the mapping log has seen (as source or target), and a few of them."""
    if not changes:
        return 0, []
    table = _arrow([(c.system, c.code) for c in changes], ("system", "code"))
    con.register("_changed", table)
    try:
        rows = con.execute(
            """
            SELECT DISTINCT c.system, c.code FROM _changed c
            WHERE EXISTS (SELECT 1 FROM ops.mapping_log m
                          WHERE (m.source_system = c.system AND m.source_code = c.code)
                             OR (m.target_system = c.system AND m.target_code = c.code))
            ORDER BY c.system, c.code
            """
        ).fetchall()
    finally:
        con.unregister("_changed")
    return len(rows), [f"{s}|{c}" for s, c in rows[:examples]]

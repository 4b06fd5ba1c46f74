"""What a reviewer reads first: the verdict and its failures, the diff from the previous run, drill-downs."""

from __future__ import annotations

import logging
from typing import Any

import duckdb

from pipelines.common.errors import EhrliftError

log = logging.getLogger(__name__)
FIRST_SCREEN_FAILURES = 5  # failures listed in the verdict box; the rest follow in the failures section
LANDING_PER_ITEM = 20


def expectation_specs() -> dict[str, dict[str, Any]]:
    """expectation name -> description, view and pointer type from the suites (empty if unreadable)."""
    from pipelines.quality.settings import load_settings

    try:
        settings = load_settings()
    except EhrliftError as exc:  # a broken site file must not stop the report that shows the failure
        log.warning("report: suite descriptions unavailable (%s)", exc.message)
        return {}
    out = {}
    for suite in settings.suites:
        pointer = suite.source.get("pointer") or {}
        for e in suite.expectations:
            out[e["meta"]["name"]] = {
                "description": e.get("description") or "",
                "view": suite.source.get("view"),
                "pointer_type": pointer.get("type"),
                "pointer_column": pointer.get("id"),
            }
    return out


def previous_run(runs: list[dict[str, Any]], run_id: str) -> str | None:
    """The run started just before this one (runs are oldest first)."""
    ids = [r["run_id"] for r in runs]
    i = ids.index(run_id)
    return ids[i - 1] if i > 0 else None


def _sql(text: str) -> str:
    return " ".join(text.split())


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def quarantine_drill(run_id: str, code: str) -> str:
    return _sql(f"""
        SELECT q.pointer, q.resource_type, q.message, q.file_sha256, q.unit_position
        FROM ops.quarantine q WHERE q.run_id = {_literal(run_id)} AND q.reason_code = {_literal(code)}
        ORDER BY q.file_sha256, q.unit_position;""")


def expectation_drill(run_id: str, name: str, spec: dict[str, Any] | None) -> str:
    """A query listing each failing record's landing pointer (or, for coverage, its unmapped codes)."""
    ptrs = (
        f"SELECT unnest(from_json(record_pointers, '[\"VARCHAR\"]')) AS ptr FROM ops.validation_results "
        f"WHERE run_id = {_literal(run_id)} AND expectation = {_literal(name)}"
    )
    if spec is None:  # the structural check (fhir_structure.<Type>): its pointers are landing pointers
        return _sql(f"{ptrs.replace(' AS ptr ', ' AS landing_pointer ', 1)};")
    rtype = spec.get("pointer_type")
    if rtype:
        return _sql(f"""
            SELECT f.id, 'landing/' || f.file_sha256 || '#' || coalesce(l.unit_kind, 'unit') || '='
                   || f.unit_position AS landing_pointer
            FROM fhir."{rtype}" f LEFT JOIN ops.ledger l
              ON l.run_id = f.run_id AND l.file_sha256 = f.file_sha256 AND l.unit_position = f.unit_position
            WHERE f.id IN ({ptrs}) ORDER BY f.file_sha256, f.unit_position;""")
    return _sql(f"""
        SELECT m.source_system, m.source_code, m.reason, m.occurrences FROM ops.mapping_log m
        WHERE m.run_id = {_literal(run_id)} AND m.method = 'unmapped'
          AND 'code-system:' || coalesce(m.source_system, '(no system)') IN ({ptrs})
        ORDER BY m.occurrences DESC;""")


def landing_pointers(con: duckdb.DuckDBPyConnection, rtype: str | None, ids: list[str]) -> list[str]:
    """Where the failing records sit in the landing zone (pointers only, never their content)."""
    if not rtype or not ids:
        return []
    exists = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'fhir' AND table_name = ?",
        [rtype],
    ).fetchone()
    if not exists or not exists[0]:
        return []
    rows = con.execute(
        f"""
        SELECT DISTINCT 'landing/' || f.file_sha256 || '#' || coalesce(l.unit_kind, 'unit') || '='
               || f.unit_position, f.file_sha256, f.unit_position
        FROM fhir."{rtype}" f LEFT JOIN ops.ledger l
          ON l.run_id = f.run_id AND l.file_sha256 = f.file_sha256 AND l.unit_position = f.unit_position
        WHERE f.id IN (SELECT unnest(?::VARCHAR[])) ORDER BY 2, 3 LIMIT {LANDING_PER_ITEM}
        """,
        [ids],
    ).fetchall()
    return [r[0] for r in rows]


def add_drilldowns(con: duckdb.DuckDBPyConnection, data: dict[str, Any], specs: dict[str, Any]) -> None:
    """Give every failed expectation and quarantine reason an anchor, a landing pointer list and a query."""
    run_id = data["run"]["run_id"]
    for q in data["quarantine"]:
        q["anchor"] = f"q-{q['code']}"
        q["sql"] = quarantine_drill(run_id, q["code"])
    for r in data["validation"]["results"]:
        spec = specs.get(r["expectation"])
        r["description"] = (spec or {}).get("description", "") or _structure_description(r["expectation"])
        r["coverage"] = spec is not None and not spec.get("pointer_type")
        if r["success"]:
            continue
        r["anchor"] = f"x-{r['expectation']}"
        r["sql"] = expectation_drill(run_id, r["expectation"], spec)
        if spec is None:
            r["landing"] = [p for p in r["pointers"] if p.startswith("landing/")]
        else:
            r["landing"] = landing_pointers(con, spec.get("pointer_type"), r["pointers"])


def _structure_description(name: str) -> str:
    prefix = "fhir_structure."
    if name.startswith(prefix):
        return f"every {name[len(prefix) :]} resource is structurally valid FHIR R4"
    return ""


def verdict(data: dict[str, Any]) -> dict[str, Any]:
    """The decision a reviewer signs, and every failure behind it, most serious first."""
    run, rec, results = data["run"], data["reconciliation"], data["validation"]["results"]
    failures: list[dict[str, Any]] = []
    for r in results:
        if not r["success"] and r["severity"] == "critical":
            failures.append(_expectation_failure(r))
    if not rec["reconciles"]:
        failures.append(
            {
                "kind": "reconciliation",
                "severity": "critical",
                "title": "ledger does not reconcile",
                "description": "units in ≠ converted + quarantined + skipped for some file or run",
                "count": None,
                "anchor": "reconciliation",
            }
        )
    for q in data["quarantine"]:
        failures.append(
            {
                "kind": "quarantine",
                "severity": "review",
                "title": q["code"],
                "description": q["description"],
                "count": q["units"],
                "count_label": "unit" if q["units"] == 1 else "units",
                "anchor": q["anchor"],
            }
        )
    for r in results:
        if not r["success"] and r["severity"] == "warning":
            failures.append(_expectation_failure(r))
    critical = sum(f["severity"] == "critical" for f in failures)
    if run["blocked"]:
        decision, headline = "blocked", "Blocked: back-load must not start"
    elif run["status"] != "succeeded":
        decision, headline = "incomplete", f"Run {run['status']}: not ready for sign-off"
    elif critical:
        decision, headline = "blocked", "Blocked: a critical check failed"
    elif failures:
        decision, headline = "review", "Passed the gate, with items to review"
    else:
        decision, headline = "clean", "Passed: no failure and nothing quarantined"
    t = rec["totals"]
    return {
        "decision": decision,
        "headline": headline,
        "critical": critical,
        "failures": failures,
        "first_screen": failures[:FIRST_SCREEN_FAILURES],
        "counts": {
            "units_in": t["units"],
            "units_converted": t["converted"],
            "units_quarantined": t["quarantined"],
            "units_skipped": t["skipped"],
            "resources_loaded": sum(rec["resources_by_type"].values()),
        },
    }


def _expectation_failure(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "expectation",
        "severity": r["severity"],
        "title": r["expectation"],
        "description": r.get("description") or r["expectation"],
        "count": r["unexpected_count"],
        # A coverage expectation counts code systems; every other one counts records.
        "count_label": ("code system" if r.get("coverage") else "record")
        + ("" if r["unexpected_count"] == 1 else "s"),
        "anchor": r["anchor"],
    }


def diff(con: duckdb.DuckDBPyConnection, data: dict[str, Any]) -> dict[str, Any]:
    """What changed since the previous run: new quarantine reasons, coverage, newly failing expectations."""
    run_id = data["run"]["run_id"]
    prev = previous_run(data["runs"], run_id)
    if prev is None:
        return {"previous_run": None}

    def reasons(rid: str) -> dict[str, int]:
        return dict(
            con.execute(
                "SELECT reason_code, count(*) FROM ops.quarantine WHERE run_id = ? GROUP BY 1", [rid]
            ).fetchall()
        )

    def coverage(rid: str) -> float | None:
        row = con.execute(
            "SELECT sum(occurrences), sum(occurrences) FILTER (WHERE method <> 'unmapped') "
            "FROM ops.mapping_log WHERE run_id = ?",
            [rid],
        ).fetchone()
        return round(int(row[1] or 0) / int(row[0]), 4) if row and row[0] else None

    def outcomes(rid: str) -> dict[str, tuple[bool, str]]:
        return {
            name: (ok, severity)
            for name, ok, severity in con.execute(
                "SELECT expectation, bool_and(success), any_value(severity) FROM ops.validation_results "
                "WHERE run_id = ? GROUP BY 1",
                [rid],
            ).fetchall()
        }

    now_r, before_r = reasons(run_id), reasons(prev)
    now_c, before_c = coverage(run_id), coverage(prev)
    now_x, before_x = outcomes(run_id), outcomes(prev)
    descriptions = {r["code"]: r["description"] for r in data["quarantine"]}
    return {
        "previous_run": prev,
        "new_reasons": [
            {"code": c, "count": n, "description": descriptions.get(c, "")}
            for c, n in sorted(now_r.items())
            if c not in before_r
        ],
        "gone_reasons": sorted(c for c in before_r if c not in now_r),
        "reason_changes": [
            {"code": c, "before": before_r[c], "now": n}
            for c, n in sorted(now_r.items())
            if c in before_r and before_r[c] != n
        ],
        "coverage": {
            "now": now_c,
            "before": before_c,
            "delta_points": round(100 * (now_c - before_c), 2)
            if now_c is not None and before_c is not None
            else None,
        },
        "newly_failing": [
            {"expectation": name, "severity": sev, "was": "passed" if name in before_x else "not evaluated"}
            for name, (ok, sev) in sorted(now_x.items())
            if not ok and before_x.get(name, (True, sev))[0]
        ],
        "newly_passing": sorted(
            name for name, (ok, _) in now_x.items() if ok and name in before_x and not before_x[name][0]
        ),
    }

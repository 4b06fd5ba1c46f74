"""The compliance report's data: aggregates and record pointers read from the ops tables, never values."""

from __future__ import annotations

import re
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

import duckdb
import orjson

from pipelines.common.config import ehrlift_version
from pipelines.common.reasons import reason_codes
from pipelines.identity.status import identity_status
from pipelines.report import review

REPORT_FORMAT_VERSION = 2  # 2: verdict, diff against the previous run, drill-down queries
POINTERS_PER_ROW = 20  # record pointers listed per reason or expectation; the count is always complete
TOP_UNMAPPED = 25
SHA_PREFIX = 12
# Duplicate handling shows up as these ledger reasons (see README, "Convert").
DUPLICATE_REASONS = ("duplicate_identical", "superseded", "reference_only_present", "conflicting_duplicate")
_PATHLIKE_KEY = re.compile(r"(^|_)(sources?|warehouse|landing|dir|path|file|folder|out)$")
_NUMBER = re.compile(r"-?\d+(\.\d+)?([eE][-+]?\d+)?%?")


def relation_exists(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    row = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
        [schema, table],
    ).fetchone()
    return bool(row and row[0])


def latest_run(con: duckdb.DuckDBPyConnection) -> str | None:
    row = con.execute("SELECT run_id FROM ops.runs ORDER BY started_at DESC, run_id DESC LIMIT 1").fetchone()
    return row[0] if row else None


def safe_config(config: dict[str, Any]) -> dict[str, Any]:
    """The run config without paths: folder and file names can carry patient names or MRNs."""
    out: dict[str, Any] = {}
    for key, value in sorted(config.items()):
        if _PATHLIKE_KEY.search(key):
            continue
        if isinstance(value, str) and ("/" in value or "\\" in value):
            continue
        if isinstance(value, dict):
            value = safe_config(value)
        elif isinstance(value, list):
            continue  # lists in the config are source paths or similar: not needed for sign-off
        out[key] = value
    return out


def base_name(text: str | None) -> str | None:
    """The last path element only, for any path-like value that must be shown."""
    if text is None:
        return None
    return PureWindowsPath(PurePosixPath(text).name).name


def aggregate_value(value: Any) -> str | None:
    """An observed value, shown only when it is an aggregate (a number, ratio or boolean).

    A validation's observed value can be a date or a string taken from a record (PHI); those are withheld.
    """
    if value is None:
        return None
    text = str(value).strip()
    if text.lower() in ("true", "false") or _NUMBER.fullmatch(text):
        return text
    return "withheld (not an aggregate)"


def _utc(column: str) -> str:
    """SQL rendering a TIMESTAMPTZ column as ISO 8601 UTC text (stable whatever the session time zone)."""
    return f"strftime({column} AT TIME ZONE 'UTC', '%Y-%m-%dT%H:%M:%SZ')"


def collect(con: duckdb.DuckDBPyConnection, run_id: str, data_docs: str | None = None) -> dict[str, Any]:
    """Everything the HTML shows, as plain JSON-ready data; the report's digest is computed over this."""
    notes: list[str] = []
    data: dict[str, Any] = {
        "report": {"format_version": REPORT_FORMAT_VERSION, "generator": f"ehrlift {ehrlift_version()}"},
        "run": _run(con, run_id),
        "runs": _runs(con),
        "terminology": _terminology(con, run_id, notes),
        "reconciliation": _reconciliation(con, run_id),
        "quarantine": _quarantine(con, run_id, notes),
        "mapping": _mapping(con, run_id, notes),
        "validation": _validation(con, run_id, notes),
        "cds_feedback": _cds_feedback(con),
        "identity": identity_status(con),
        "data_docs": data_docs,
    }
    backload = _backload(con, run_id)
    if backload:  # present only once a plan exists, so earlier reports keep their exact data
        data["backload"] = backload
    if relation_exists(con, "ops", "backload_hl7_messages"):
        from pipelines.backload.hl7.runner import report_rows

        hl7 = report_rows(con, run_id)
        if hl7:  # present only once an HL7 plan exists
            data["backload_hl7"] = hl7
    data["notes"] = notes
    # The reviewer's first screen: drill-downs first (the verdict links to them), then verdict and diff.
    review.add_drilldowns(con, data, review.expectation_specs())
    data["verdict"] = review.verdict(data)
    data["diff"] = review.diff(con, data)
    return data


def _backload(con: duckdb.DuckDBPyConnection, run_id: str) -> list[dict[str, Any]]:
    """Per target, the latest plan built from this run: counts per type and reason, and what was sent."""
    if not relation_exists(con, "ops", "backload_plans"):
        return []
    from pipelines.backload.runner import plan_status

    out = []
    for plan_id, target, override, summary in con.execute(
        "SELECT plan_id, target, override_reason, summary FROM ops.backload_plans WHERE run_id = ? "
        "QUALIFY row_number() OVER (PARTITION BY target ORDER BY planned_at DESC, plan_id) = 1 "
        "ORDER BY target",
        [run_id],
    ).fetchall():
        out.append(
            {
                "target": target,
                "plan_id": plan_id,
                "gate_overridden": override is not None,
                "plan": orjson.loads(summary)["rows"],
                "status": plan_status(con, plan_id),
            }
        )
    return out


def _run(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, Any]:
    row = con.execute(
        f"SELECT run_id, {_utc('started_at')}, {_utc('finished_at')}, status, exit_code, ehrlift_version, "
        "config FROM ops.runs WHERE run_id = ?",
        [run_id],
    ).fetchone()
    assert row is not None
    rid, started, finished, status, exit_code, version, config = row
    return {
        "run_id": rid,
        "started_at": started,
        "finished_at": finished,
        "status": status,
        "exit_code": exit_code,
        # exit status 7: a critical expectation failed, so back-load must not start
        "blocked": status == "blocked" or exit_code == 7,
        "ehrlift_version": version,
        "config": safe_config(orjson.loads(config) if config else {}),
    }


def _runs(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    return [
        {"run_id": r, "started_at": s, "status": st, "exit_code": e}
        for r, s, st, e in con.execute(
            f"SELECT run_id, {_utc('started_at')}, status, exit_code FROM ops.runs "
            "ORDER BY started_at, run_id"
        ).fetchall()
    ]


def _release_groups(releases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Releases per loaded source: the shipped default alone brings hundreds of small code systems."""
    groups: dict[tuple[str, str, bool], dict[str, Any]] = {}
    for r in releases:
        key = (r["kind"], r["source"] or "", bool(r["active"]))
        g = groups.setdefault(
            key,
            {"systems": [], "versions": set(), "concepts": 0},
        )
        g["systems"].append(r["system"] or "")
        g["versions"].add(r["version"])
        g["concepts"] += r["concepts"] or 0
    out = []
    in_force_first = sorted(groups.items(), key=lambda kv: (not kv[0][2], kv[0][0], kv[0][1]))
    for (kind, source, active), g in in_force_first:
        systems, versions = sorted(g["systems"]), sorted(g["versions"])
        out.append(
            {
                "kind": kind,
                "source": source,
                "active": active,
                "systems": len(systems),
                "system": systems[0] if len(systems) == 1 else None,
                "version": versions[0] if len(versions) == 1 else f"{len(versions)} versions",
                "concepts": g["concepts"],
            }
        )
    return out


def _terminology(con: duckdb.DuckDBPyConnection, run_id: str, notes: list[str]) -> dict[str, Any]:
    releases: list[dict[str, Any]] = []
    if not relation_exists(con, "terminology", "releases"):
        notes.append("terminology.releases does not exist: no terminology release has been loaded")
    else:
        rows = con.execute(
            f"SELECT kind, system, version, source, sha256, {_utc('loaded_at::TIMESTAMPTZ')}, concepts, "
            "active FROM terminology.releases ORDER BY system, version, loaded_at"
        ).fetchall()
        if not rows:
            notes.append("terminology.releases is empty: no terminology release has been loaded")
        for kind, system, version, source, sha, loaded, concepts, active in rows:
            releases.append(
                {
                    "kind": kind,
                    "system": system,
                    "version": version,
                    "source": base_name(source),
                    "sha256": sha,
                    "loaded_at": loaded,
                    "concepts": concepts,
                    "active": active,
                }
            )
    used = con.execute(
        "SELECT DISTINCT coalesce(terminology_version, ''), coalesce(crosswalk_version, '') "
        "FROM ops.mapping_log WHERE run_id = ? ORDER BY 1, 2",
        [run_id],
    ).fetchall()
    return {
        "releases": releases,
        "release_groups": _release_groups(releases),
        "used_by_run": [{"terminology_version": t or None, "crosswalk_version": c or None} for t, c in used],
    }


def _reconciliation(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, Any]:
    files = []
    # Files are named by sha256 prefix only: operators' file names often carry an MRN or a patient name.
    for sha, fmt, system, landing, handler, status, units, conv, quar, skip, res in con.execute(
        """
        SELECT rf.file_sha256, f.format, f.source_system, rf.landing, rf.handler, rf.status,
               count(l.unit_position),
               count(*) FILTER (WHERE l.outcome = 'converted'),
               count(*) FILTER (WHERE l.outcome = 'quarantined'),
               count(*) FILTER (WHERE l.outcome = 'skipped'),
               coalesce(sum(l.resource_count) FILTER (WHERE l.outcome = 'converted'), 0)
        FROM ops.run_files rf JOIN ops.files f USING (file_sha256)
        LEFT JOIN ops.ledger l ON l.run_id = rf.run_id AND l.file_sha256 = rf.file_sha256
        WHERE rf.run_id = ?
        GROUP BY ALL ORDER BY f.format, rf.file_sha256
        """,
        [run_id],
    ).fetchall():
        files.append(
            {
                "sha256_prefix": sha[:SHA_PREFIX],
                "format": fmt,
                "source_system": system,
                "landing": landing,
                "handler": handler,
                "status": status,
                "units": units,
                "converted": conv,
                "quarantined": quar,
                "skipped": skip,
                "resources": int(res),
                "reconciles": units == conv + quar + skip,
            }
        )
    by_format: dict[str, dict[str, int]] = {}
    for f in files:
        agg = by_format.setdefault(
            f["format"],
            {"files": 0, "units": 0, "converted": 0, "quarantined": 0, "skipped": 0, "resources": 0},
        )
        agg["files"] += 1
        for key in ("units", "converted", "quarantined", "skipped", "resources"):
            agg[key] += f[key]
    totals = {
        k: sum(v[k] for v in by_format.values()) for k in ("files", "units", "converted", "quarantined")
    }
    totals.update({k: sum(v[k] for v in by_format.values()) for k in ("skipped", "resources")})
    per_run = []
    for rid, units, conv, quar, skip in con.execute(
        """
        SELECT r.run_id, count(l.unit_position),
               count(*) FILTER (WHERE l.outcome = 'converted'),
               count(*) FILTER (WHERE l.outcome = 'quarantined'),
               count(*) FILTER (WHERE l.outcome = 'skipped')
        FROM ops.runs r LEFT JOIN ops.ledger l USING (run_id)
        GROUP BY ALL ORDER BY min(r.started_at), r.run_id
        """
    ).fetchall():
        per_run.append(
            {
                "run_id": rid,
                "units": units,
                "converted": conv,
                "quarantined": quar,
                "skipped": skip,
                "reconciles": units == conv + quar + skip,
            }
        )
    resources_by_type = {}
    for (table,) in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'fhir' ORDER BY 1"
    ).fetchall():
        row = con.execute(f'SELECT count(*) FROM fhir."{table}" WHERE run_id = ?', [run_id]).fetchone()
        if row and row[0]:
            resources_by_type[table] = row[0]
    unconsumed = [
        {"container": c, "item": i, "units": u, "count": int(n)}
        for c, i, u, n in con.execute(
            "SELECT coalesce(container, '?'), item, count(DISTINCT (file_sha256, unit_position)), sum(count) "
            "FROM ops.unconsumed WHERE run_id = ? GROUP BY 1, 2 ORDER BY 1, 4 DESC, 2",
            [run_id],
        ).fetchall()
    ]
    duplicates = dict.fromkeys(DUPLICATE_REASONS, 0)
    for reason, n in con.execute(
        f"SELECT reason, count(*) FROM ops.ledger WHERE run_id = ? "
        f"AND reason IN ({', '.join('?' * len(DUPLICATE_REASONS))}) GROUP BY 1",
        [run_id, *DUPLICATE_REASONS],
    ).fetchall():
        duplicates[reason] = n
    return {
        "totals": totals,
        "reconciles": all(f["reconciles"] for f in files) and all(r["reconciles"] for r in per_run),
        "per_run": per_run,
        "by_format": dict(sorted(by_format.items())),
        "files": files,
        "resources_by_type": resources_by_type,
        "unconsumed": unconsumed,
        "duplicates": duplicates,
        "skip_reasons": _reasons(con, run_id, "skipped"),
        "patients_without_trusted_identifier": _untrusted_patients(con, run_id),
    }


def _untrusted_patients(con: duckdb.DuckDBPyConnection, run_id: str) -> int:
    """Patients identified only by their message's demographics (HL7 results without PID-3): each
    waits for identity linking, so the reviewer sees how many."""
    if not relation_exists(con, "fhir", "Patient"):
        return 0
    row = con.execute(
        """SELECT count(*) FROM fhir."Patient" WHERE run_id = ? AND list_contains(
               json_extract_string(resource, '$.meta.tag[*].code'), 'no-trusted-identifier')""",
        [run_id],
    ).fetchone()
    return int(row[0]) if row else 0


def _reasons(con: duckdb.DuckDBPyConnection, run_id: str, outcome: str) -> list[dict[str, Any]]:
    codes = reason_codes()
    return [
        {"code": code, "count": n, "description": codes.get(code, {}).get("description", "undocumented")}
        for code, n in con.execute(
            "SELECT reason, count(*) FROM ops.ledger WHERE run_id = ? AND outcome = ? "
            "GROUP BY 1 ORDER BY 2 DESC, 1",
            [run_id, outcome],
        ).fetchall()
    ]


def _quarantine(con: duckdb.DuckDBPyConnection, run_id: str, notes: list[str]) -> list[dict[str, Any]]:
    codes = reason_codes()
    out = []
    # Pointers only: the quarantine message is structural by contract, but a report needs none of it.
    for code, n, units, types, pointers in con.execute(
        f"""
        SELECT reason_code, count(*), count(DISTINCT (file_sha256, unit_position)),
               list(DISTINCT resource_type ORDER BY resource_type)
                   FILTER (WHERE resource_type IS NOT NULL),
               list(pointer ORDER BY file_sha256, unit_position, pointer)[1:{POINTERS_PER_ROW}]
        FROM ops.quarantine WHERE run_id = ? GROUP BY 1 ORDER BY 2 DESC, 1
        """,
        [run_id],
    ).fetchall():
        out.append(
            {
                "code": code,
                "count": n,
                "units": units,
                "description": codes.get(code, {}).get("description", "undocumented reason code"),
                "resource_types": types or [],
                "pointers": pointers,
            }
        )
    if not out:
        notes.append("ops.quarantine has no rows for this run: nothing was quarantined")
    return out


def _mapping(con: duckdb.DuckDBPyConnection, run_id: str, notes: list[str]) -> dict[str, Any]:
    rows = con.execute(
        """
        SELECT coalesce(source_system, '(none)'), method, sum(occurrences), count(*)
        FROM ops.mapping_log WHERE run_id = ? GROUP BY 1, 2 ORDER BY 1, 2
        """,
        [run_id],
    ).fetchall()
    if not rows:
        notes.append("ops.mapping_log has no rows for this run: terminology normalization did not run")
    by_source: dict[str, dict[str, Any]] = {}
    for system, method, occ, codes in rows:
        entry = by_source.setdefault(system, {"occurrences": 0, "codes": 0, "methods": {}})
        entry["occurrences"] += int(occ)
        entry["codes"] += codes
        entry["methods"][method] = int(occ)
    for entry in by_source.values():
        unmapped = entry["methods"].get("unmapped", 0)
        entry["mapped"] = entry["occurrences"] - unmapped
        entry["coverage"] = round(entry["mapped"] / entry["occurrences"], 4) if entry["occurrences"] else None
    by_target = {
        system: {"occurrences": int(occ), "codes": codes}
        for system, occ, codes in con.execute(
            "SELECT target_system, sum(occurrences), count(*) FROM ops.mapping_log "
            "WHERE run_id = ? AND method <> 'unmapped' AND target_system IS NOT NULL GROUP BY 1 ORDER BY 1",
            [run_id],
        ).fetchall()
    }
    methods = {
        m: int(n)
        for m, n in con.execute(
            "SELECT method, sum(occurrences) FROM ops.mapping_log WHERE run_id = ? GROUP BY 1 ORDER BY 1",
            [run_id],
        ).fetchall()
    }
    # Codes are terminology, not record values; displays are left out since local ones are free text.
    top_unmapped = [
        {"source_system": s, "source_code": c, "reason": r, "occurrences": int(n)}
        for s, c, r, n in con.execute(
            f"""
            SELECT source_system, source_code, any_value(reason), sum(occurrences) FROM ops.mapping_log
            WHERE run_id = ? AND method = 'unmapped' GROUP BY 1, 2 ORDER BY 4 DESC, 1, 2 LIMIT {TOP_UNMAPPED}
            """,
            [run_id],
        ).fetchall()
    ]
    total = sum(methods.values())
    mapped = total - methods.get("unmapped", 0)
    # Targets accepted on a reviewer's word: well formed, but only a fragment of their system is loaded.
    unverified = [
        {
            "source_system": s,
            "source_code": c,
            "target_system": ts,
            "target_code": tc,
            "method": m,
            "occurrences": int(n),
        }
        for s, c, ts, tc, m, n in con.execute(
            "SELECT source_system, source_code, target_system, target_code, method, sum(occurrences) "
            "FROM ops.mapping_log WHERE run_id = ? AND method <> 'unmapped' "
            "AND reason = 'target_not_verified' GROUP BY ALL ORDER BY 6 DESC, 1, 2",
            [run_id],
        ).fetchall()
    ]
    return {
        "unverified": unverified,
        "occurrences": total,
        "mapped": mapped,
        "coverage": round(mapped / total, 4) if total else None,
        "methods": methods,
        "by_source_system": by_source,
        "by_target_system": by_target,
        "top_unmapped": top_unmapped,
    }


def _validation(con: duckdb.DuckDBPyConnection, run_id: str, notes: list[str]) -> dict[str, Any]:
    results = []
    for suite, expectation, severity, success, observed, unexpected, pointers in con.execute(
        """
        SELECT suite, expectation, severity, success, observed_value, unexpected_count, record_pointers
        FROM ops.validation_results WHERE run_id = ? ORDER BY suite, expectation, evaluated_at
        """,
        [run_id],
    ).fetchall():
        parsed = orjson.loads(pointers) if pointers else []
        if not isinstance(parsed, list):
            parsed = [parsed]
        results.append(
            {
                "suite": suite,
                "expectation": expectation,
                "severity": severity,
                "success": success,
                "observed": aggregate_value(observed),
                "unexpected_count": unexpected,
                "pointers": [
                    p if isinstance(p, str) else orjson.dumps(p).decode() for p in parsed[:POINTERS_PER_ROW]
                ],
                "pointers_total": len(parsed),
            }
        )
    if not results:
        notes.append("ops.validation_results has no rows for this run: the validation stage did not run")
    suites: dict[str, dict[str, int]] = {}
    for r in results:
        s = suites.setdefault(
            r["suite"], {"evaluated": 0, "passed": 0, "failed_critical": 0, "failed_warning": 0}
        )
        s["evaluated"] += 1
        if r["success"]:
            s["passed"] += 1
        else:
            s["failed_" + r["severity"]] += 1
    trends: dict[str, list[dict[str, Any]]] = {}
    for suite, rid, evaluated, passed, failed_critical in con.execute(
        """
        SELECT v.suite, v.run_id, count(*), count(*) FILTER (WHERE v.success),
               count(*) FILTER (WHERE NOT v.success AND v.severity = 'critical')
        FROM ops.validation_results v LEFT JOIN ops.runs r USING (run_id)
        GROUP BY 1, 2 ORDER BY 1, min(r.started_at), 2
        """
    ).fetchall():
        trends.setdefault(suite, []).append(
            {
                "run_id": rid,
                "evaluated": evaluated,
                "passed": passed,
                "failed_critical": failed_critical,
                "pass_rate": round(passed / evaluated, 4) if evaluated else None,
            }
        )
    return {"suites": suites, "results": results, "trends": trends}


def _cds_feedback(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """CDS Hooks cards issued and clinicians' accept/override counts per card type, all runs to date."""
    if not relation_exists(con, "ops", "cds_cards") or not relation_exists(con, "ops", "cds_feedback"):
        return []
    rows = con.execute("""
        WITH issued AS (
            SELECT service_id, card_type, count(*) AS issued FROM ops.cds_cards GROUP BY ALL
        ), fb AS (
            SELECT f.service_id, coalesce(c.card_type, '(card not issued here)') AS card_type,
                   count(*) FILTER (WHERE f.outcome = 'accepted') AS accepted,
                   count(*) FILTER (WHERE f.outcome = 'overridden') AS overridden,
                   count(*) FILTER (WHERE f.outcome = 'overridden' AND f.override_code IS NOT NULL)
                       AS with_reason
            FROM ops.cds_feedback f
            LEFT JOIN (SELECT DISTINCT card_uuid, card_type FROM ops.cds_cards) c USING (card_uuid)
            GROUP BY ALL
        )
        SELECT service_id, card_type, coalesce(i.issued, 0), coalesce(fb.accepted, 0),
               coalesce(fb.overridden, 0), coalesce(fb.with_reason, 0)
        FROM issued i FULL JOIN fb USING (service_id, card_type)
        ORDER BY service_id, card_type
    """).fetchall()
    keys = ("service", "card_type", "issued", "accepted", "overridden", "overridden_with_reason")
    return [dict(zip(keys, row, strict=True)) for row in rows]

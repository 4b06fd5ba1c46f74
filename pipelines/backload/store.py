"""Back-load state in the warehouse: plans, their entries, server ids and write outcomes (ops.backload_*)."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import orjson

from pipelines.backload.plan import Entry, content_sha
from pipelines.common.errors import ConfigError, WarehouseError
from pipelines.common.warehouse import transaction
from pipelines.quality.gate import GateBlocked


def source_run(con: duckdb.DuckDBPyConnection, override_reason: str | None) -> str:
    """The latest finished run; a run the gate blocked only with an override and its reason."""
    row = con.execute(
        "SELECT run_id, status FROM ops.runs WHERE status IN ('succeeded', 'blocked') "
        "ORDER BY started_at DESC, run_id DESC LIMIT 1"
    ).fetchone()
    if row is None:
        raise WarehouseError(
            "the warehouse has no succeeded run to back-load", hint="run `ehrlift run` first"
        )
    run_id, status = row
    if status == "blocked" and not override_reason:
        raise GateBlocked(
            f"back-load blocked: run {run_id} failed a critical expectation",
            hint="fix the data, or pass --override-gate --reason TEXT (recorded with the plan)",
        )
    return run_id


def sent_hashes(con: duckdb.DuckDBPyConnection, target: str) -> dict[str, str]:
    rows = con.execute(
        "SELECT resource_type, warehouse_id, content_sha256 FROM ops.backload_ids WHERE target = ? "
        "QUALIFY row_number() OVER (PARTITION BY resource_type, warehouse_id ORDER BY recorded_at DESC) = 1",
        [target],
    ).fetchall()
    return {f"{t}/{w}": sha for t, w, sha in rows if sha}


def sent_bodies(con: duckdb.DuckDBPyConnection, target: str, sent: dict[str, str]) -> Any:
    """A function giving the body last sent for "Type/id" (from the plan that carried it), or None."""

    def body(key: str) -> dict[str, Any] | None:
        rtype, wid = key.split("/", 1)
        rows = con.execute(
            "SELECT p.body FROM ops.backload_plan p JOIN ops.backload_plans s USING (plan_id) "
            "WHERE s.target = ? AND p.resource_type = ? AND p.warehouse_id = ? AND p.content_sha256 = ? "
            "AND p.status = 'send' AND p.body IS NOT NULL",
            [target, rtype, wid, sent.get(key)],
        ).fetchall()
        # The body that hashes to what was sent: a cycle's create without its deferred elements carried
        # the whole body's hash in plans stored before it recorded its own.
        for (text,) in rows:
            parsed = orjson.loads(text)
            if content_sha(parsed) == sent.get(key):
                return parsed
        return None

    return body


def summarize(entries: list[Entry]) -> dict[str, Any]:
    """Counts per type, status and reason: what the report shows (no ids, no values)."""
    per: Counter[tuple[str, str, str]] = Counter()
    for e in entries:
        if e.followup:  # a cycle's second write: the resource is counted once
            continue
        per[(e.resource_type, e.status, e.reason or "")] += 1
    rows = [
        {"resource_type": t, "status": s, "reason": r or None, "count": n}
        for (t, s, r), n in sorted(per.items())
    ]
    totals: Counter[str] = Counter()
    for r in rows:
        totals[r["status"]] += r["count"]
    changed: Counter[tuple[str, str, str]] = Counter(
        (e.resource_type, kind, element)
        for e in entries
        if not e.followup
        for kind, elements in e.changes.items()
        for element in elements
    )
    out = {
        "rows": rows,
        "totals": dict(sorted(totals.items())),
        "writes": sum(1 for e in entries if e.status == "send"),
    }
    if changed:  # only with a site profile, so plans without one keep their exact summary
        out["site_changes"] = [
            {"resource_type": t, "change": k, "element": el, "count": n}
            for (t, k, el), n in sorted(changed.items())
        ]
    return out


def plan_id_of(target: str, entries: list[Entry], site: dict[str, Any] | None = None) -> str:
    h = hashlib.sha256(target.encode())
    if site:
        h.update(orjson.dumps(site, option=orjson.OPT_SORT_KEYS))
    for e in entries:
        row = [e.seq, e.key, e.status, e.step, e.reason, e.detail, e.content_sha256, e.deferred]
        if e.changes or e.server_id:
            row += [e.changes, e.server_id]
        h.update(orjson.dumps(row, option=orjson.OPT_SORT_KEYS))
    return h.hexdigest()[:16]


def save_plan(
    con: duckdb.DuckDBPyConnection,
    target: str,
    profile_sha: str,
    run_id: str,
    entries: list[Entry],
    override_reason: str | None,
    site: dict[str, Any] | None = None,
) -> tuple[str, dict[str, Any]]:
    """Store the plan (a re-plan of the same warehouse replaces the identical plan, never doubles it)."""
    plan_id = plan_id_of(target, entries, site)
    summary = summarize(entries)
    with transaction(con):
        con.execute("DELETE FROM ops.backload_plan WHERE plan_id = ?", [plan_id])
        con.execute("DELETE FROM ops.backload_plans WHERE plan_id = ?", [plan_id])
        con.execute(
            "INSERT INTO ops.backload_plans (plan_id, target, profile_sha256, run_id, override_reason, "
            "planned_at, summary, site) VALUES (?, ?, ?, ?, ?, now(), ?, ?)",
            [
                plan_id,
                target,
                profile_sha,
                run_id,
                override_reason,
                orjson.dumps(summary).decode(),
                orjson.dumps(site).decode() if site else None,
            ],
        )
        con.executemany(
            "INSERT INTO ops.backload_plan (plan_id, seq, resource_type, warehouse_id, status, step, reason, "
            "detail, content_sha256, body, deferred, site_changes, server_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    plan_id,
                    e.seq,
                    e.resource_type,
                    e.warehouse_id,
                    e.status,
                    e.step,
                    e.reason,
                    e.detail,
                    e.content_sha256,
                    orjson.dumps(e.body).decode() if e.body is not None else None,
                    orjson.dumps(e.deferred).decode() if e.deferred else None,
                    orjson.dumps(e.changes).decode() if e.changes else None,
                    e.server_id,
                )
                for e in entries
            ],
        )
    return plan_id, summary


def write_plan_files(
    out: Path, plan_id: str, target: str, run_id: str, entries: list[Entry], summary: dict
) -> Path:
    """<out>/<plan id>/entries.ndjson (the requests: record values, like the landing zone) and summary.json
    (counts only). The same plan always gives the same bytes."""
    folder = out / plan_id
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        orjson.dumps(
            {
                **({"site_changes": e.changes} if e.changes else {}),
                **({"server_id": e.server_id} if e.server_id else {}),
                "seq": e.seq,
                "resource_type": e.resource_type,
                "warehouse_id": e.warehouse_id,
                "status": e.status,
                "step": e.step,
                "reason": e.reason,
                "detail": e.detail,
                "content_sha256": e.content_sha256,
                "deferred": e.deferred or None,
                "body": e.body if e.status == "send" else None,
            },
            option=orjson.OPT_SORT_KEYS,
        )
        for e in entries
    ]
    (folder / "entries.ndjson").write_bytes(b"\n".join(lines) + (b"\n" if lines else b""))
    head = {"plan_id": plan_id, "target": target, "run_id": run_id, **summary}
    (folder / "summary.json").write_bytes(
        orjson.dumps(head, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2)
    )
    return folder


def latest_plan(con: duckdb.DuckDBPyConnection, target: str) -> str:
    row = con.execute(
        "SELECT plan_id FROM ops.backload_plans WHERE target = ? ORDER BY planned_at DESC, plan_id LIMIT 1",
        [target],
    ).fetchone()
    if row is None:
        raise ConfigError(
            f"no back-load plan for {target!r}", hint=f"run `ehrlift backload plan --profile {target}`"
        )
    return row[0]

"""The back-load steps the CLI and the DAG call: plan_backload, send_backload and backload_status."""

from __future__ import annotations

import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import orjson

from pipelines.backload.client import RetryPolicy, Target, capability
from pipelines.backload.journal import recover
from pipelines.backload.plan import Entry, build_plan
from pipelines.backload.profiles import target_profile
from pipelines.backload.send import SendOptions, SendResult, send_plan
from pipelines.backload.site import load_site
from pipelines.backload.store import (
    latest_plan,
    save_plan,
    sent_bodies,
    sent_hashes,
    source_run,
    write_plan_files,
)
from pipelines.common.config import DEFAULT_DATA_DIR
from pipelines.common.errors import ConfigError
from pipelines.common.warehouse import open_warehouse
from pipelines.export.auth import BackendAuth, load_signing_key

log = logging.getLogger(__name__)
STATUS_COLUMNS = (
    "planned",
    "created",
    "updated",
    "unchanged",
    "failed",
    "not_sendable",
    "merged",
    "mapped",
    "pending",
)


@dataclass(frozen=True)
class PlanOutcome:
    plan_id: str
    run_id: str
    summary: dict[str, Any]
    folder: Path
    entries: list[Entry] = field(default_factory=list, compare=False, repr=False)


def plan_backload(
    warehouse: Path,
    profile: str,
    out: Path | None = None,
    override_reason: str | None = None,
    site_file: Path | None = None,
) -> PlanOutcome:
    """Build, store and write the plan for the latest succeeded run (a blocked run only with a reason);
    site_file: the site's opt-ins (drops, defaults, Location map), none by default."""
    target = target_profile(profile)
    site = load_site(Path(site_file), target) if site_file else None
    with open_warehouse(warehouse) as con:
        run_id = source_run(con, override_reason)
        recover(con, warehouse)  # an interrupted send's outcomes count as sent before anything is planned
        sent = sent_hashes(con, target.name)
        entries = build_plan(con, target, sent, sent_bodies(con, target.name, sent), site)
        record = site.record() if site else None
        plan_id, summary = save_plan(
            con, target.name, target.sha256, run_id, entries, override_reason, record
        )
    folder = write_plan_files(out or Path(warehouse).parent / "backload" / target.name, plan_id, target.name,
                              run_id, entries, summary)  # fmt: skip
    log.info("back-load plan %s: %s", plan_id, summary["totals"])
    return PlanOutcome(plan_id, run_id, summary, folder, entries)


@dataclass(frozen=True)
class AuthOptions:
    client_id: str | None = None
    key_file: Path | None = None
    kid: str | None = None
    alg: str | None = None
    token_url: str | None = None
    scope: str = "system/*.write system/*.read"
    no_auth: bool = False


def _auth(options: AuthOptions) -> BackendAuth | None:
    if options.no_auth:
        if options.client_id or options.key_file:
            raise ConfigError("--no-auth cannot be combined with --client-id or --key")
        return None
    if not options.client_id or not options.key_file:
        raise ConfigError("sending needs --client-id and --key (or --no-auth for a loopback server)")
    key = load_signing_key(options.key_file, options.kid, options.alg)
    return BackendAuth(options.client_id, key, options.token_url, options.scope)


def send_backload(
    warehouse: Path,
    profile: str,
    server: str,
    auth: AuthOptions,
    options: SendOptions,
    policy: RetryPolicy | None = None,
) -> SendResult:
    """Send the latest plan for the profile; the CapabilityStatement is read before any write."""
    target_rules = target_profile(profile)
    target = Target(server, _auth(auth), no_auth=auth.no_auth, concurrency=options.concurrency, policy=policy)
    # The CapabilityStatement is read while the warehouse opens and the plan loads (both come before any
    # write); its failure is the one reported, as when it was read first.
    pool = ThreadPoolExecutor(1, thread_name_prefix="backload-metadata")
    try:
        asked = pool.submit(capability, target)
        try:
            with open_warehouse(warehouse) as con:
                plan_id = latest_plan(con, target_rules.name)
                return send_plan(con, target_rules, target, plan_id, asked.result, options, Path(warehouse))
        except Exception:
            failed = asked.exception()
            if failed is not None:
                raise failed from None
            raise
    finally:
        pool.shutdown(wait=True)
        target.close()


def backload_status(warehouse: Path, profile: str) -> dict[str, Any]:
    """Per type: planned = created + updated + unchanged + failed + not_sendable + pending (latest plan)."""
    target = target_profile(profile)
    with open_warehouse(warehouse, read_only=True) as con:
        plan_id = latest_plan(con, target.name)
        return {"plan_id": plan_id, "target": target.name, **plan_status(con, plan_id)}


def plan_status(con: duckdb.DuckDBPyConnection, plan_id: str) -> dict[str, Any]:
    """Counts per type (never ids or values): what `backload status` prints and the report shows."""
    rows = con.execute(
        """
            WITH last AS (
                SELECT seq, state FROM ops.backload_results WHERE plan_id = $plan
                QUALIFY row_number() OVER (PARTITION BY seq ORDER BY recorded_at DESC,
                    CASE state WHEN 'intent' THEN 1 ELSE 0 END) = 1
            ), steps AS (
                SELECT p.resource_type, p.warehouse_id, p.status, p.step, p.reason, l.state, p.site_changes
                FROM ops.backload_plan p LEFT JOIN last l USING (seq) WHERE p.plan_id = $plan
            )
            SELECT resource_type, warehouse_id, any_value(status), list(step), list(state), any_value(reason),
                any_value(site_changes)
            FROM steps GROUP BY resource_type, warehouse_id
            """,
        {"plan": plan_id},
    ).fetchall()
    per: dict[str, Counter[str]] = {}
    reasons: Counter[tuple[str, str]] = Counter()
    changed: Counter[tuple[str, str, str]] = Counter()
    for rtype, _wid, status, steps, states, reason, site_changes in rows:
        c = per.setdefault(rtype, Counter())
        c["planned"] += 1
        for kind, elements in orjson.loads(site_changes).items() if site_changes else ():
            changed.update((rtype, kind, e) for e in elements)
        if status != "send":
            c[status] += 1
            if reason:
                reasons[(rtype, reason)] += 1
        elif "failed" in states:
            c["failed"] += 1
        elif all(s in ("created", "updated", "resolved") for s in states):
            c["created" if "create" in steps else "updated"] += 1
        else:
            c["pending"] += 1
    types = [{"resource_type": t, **{k: per[t][k] for k in STATUS_COLUMNS}} for t in sorted(per)]
    totals = {k: sum(r[k] for r in types) for k in STATUS_COLUMNS}
    reconciles = all(r["planned"] == sum(r[k] for k in STATUS_COLUMNS[1:]) for r in types)
    return {
        "types": types,
        "totals": totals,
        "reasons": [{"resource_type": t, "reason": r, "count": n} for (t, r), n in sorted(reasons.items())],
        # Elements a site profile let go (dropped) or filled (defaulted): counted, never silently lost.
        "site_changes": [
            {"resource_type": t, "change": k, "element": e, "count": n}
            for (t, k, e), n in sorted(changed.items())
        ],
        "reconciles": reconciles,
        "complete": totals["pending"] == 0,
    }


# --- orchestrators (pipelines/tasks.py): JSON-able params in and out --------------------------------------


def _param(params: dict[str, Any] | None, name: str, env: str, default: Any = None) -> Any:
    value = (params or {}).get(name)
    return value if value not in (None, "") else os.environ.get(env) or default


def plan_from_params(params: dict[str, Any] | None) -> dict[str, Any]:
    warehouse = Path(_param(params, "warehouse", "EHRLIFT_WAREHOUSE", DEFAULT_DATA_DIR / "warehouse.duckdb"))
    profile = _param(params, "profile", "EHRLIFT_BACKLOAD_PROFILE", "millennium-r4")
    result = plan_backload(warehouse, profile, None, (params or {}).get("override_reason") or None)
    return {
        "warehouse": str(warehouse),
        "profile": profile,
        "plan_id": result.plan_id,
        **result.summary["totals"],
    }


def send_from_params(
    plan: dict[str, Any], params: dict[str, Any] | None, slots: int | None = None
) -> dict[str, Any]:
    """Send the plan the plan task made; credentials come from the environment, never from params.

    slots: the Airflow pool slots the task holds. Requests in flight never exceed them, so the pool bounds
    requests to the target, whatever concurrency a run asks for."""
    server = _param(params, "server", "EHRLIFT_BACKLOAD_SERVER")
    if not server:
        raise ConfigError("no target server", hint="set the DAG param server or EHRLIFT_BACKLOAD_SERVER")
    auth = AuthOptions(
        client_id=os.environ.get("EHRLIFT_BACKLOAD_CLIENT_ID"),
        key_file=Path(os.environ["EHRLIFT_BACKLOAD_KEY"]) if os.environ.get("EHRLIFT_BACKLOAD_KEY") else None,
        kid=os.environ.get("EHRLIFT_BACKLOAD_KID"),
        token_url=os.environ.get("EHRLIFT_BACKLOAD_TOKEN_URL"),
        no_auth=bool((params or {}).get("no_auth")),
    )
    concurrency = int(_param(params, "concurrency", "EHRLIFT_BACKLOAD_CONCURRENCY", 4))
    if slots is not None:
        concurrency = max(1, min(concurrency, slots))
    options = SendOptions(concurrency=concurrency, dry_run=bool((params or {}).get("dry_run")))
    result = send_backload(Path(plan["warehouse"]), plan["profile"], server, auth, options)
    return result.to_dict()

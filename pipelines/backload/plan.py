"""The back-load plan: every stored resource as send (with its body), not_sendable (a reason) or unchanged."""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import duckdb
import orjson

from pipelines.backload.checks import check_resource, references, rewrite_references
from pipelines.backload.patch import not_patchable, patch_kinds
from pipelines.backload.profiles import TargetProfile
from pipelines.backload.site import Site
from pipelines.common.reasons import check_reason
from pipelines.common.warehouse import resource_tables
from terminology.target_codings import codings_for_target

SEND, NOT_SENDABLE, UNCHANGED = "send", "not_sendable", "unchanged"
MERGED = "merged"  # a source Patient whose person is sent as one surviving Patient (ops.person_map)
MAPPED = "mapped"  # a source Location (or Practitioner) the site maps to a record the target already has
# Refusals of a change to a resource the target already has: what refers to it still resolves.
ON_SERVER_ANYWAY = ("backload_update_not_supported", "backload_change_not_patchable")


@dataclass
class Entry:
    resource_type: str
    warehouse_id: str
    status: str = SEND
    step: str = "create"  # create, update (content changed since sent, or a cycle's second write), none
    reason: str | None = None
    detail: str | None = None  # element names only, never values
    body: dict[str, Any] | None = None
    content_sha256: str | None = None
    deferred: list[str] = field(default_factory=list)  # references left out of the create, sent by an update
    seq: int = 0
    followup: bool = False  # the update that completes a create made without its cycle-closing references
    changes: dict[str, list[str]] = field(default_factory=dict)  # site opt-ins: dropped/defaulted elements
    server_id: str | None = None  # status mapped: the target's existing resource

    @property
    def key(self) -> str:
        return f"{self.resource_type}/{self.warehouse_id}"

    def refuse(self, reason: str, detail: str | None = None) -> None:
        self.status, self.step, self.reason, self.detail = (
            NOT_SENDABLE,
            "none",
            check_reason(reason, "not_sendable"),
            detail,
        )
        self.changes = {}  # nothing of it is sent, so nothing was dropped or filled


def stored_resources(con: duckdb.DuckDBPyConnection) -> Iterator[tuple[str, str, dict[str, Any], bool]]:
    """(type, warehouse id, resource, stand-in?) for every stored resource, in a stable order."""
    for table in resource_tables(con):
        rows = con.execute(f'SELECT id, resource, reference_only FROM fhir."{table}" ORDER BY id').fetchall()
        for rid, resource, reference_only in rows:
            yield table, rid, orjson.loads(resource), bool(reference_only)


def content_sha(body: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def build_plan(
    con: duckdb.DuckDBPyConnection,
    target: TargetProfile,
    sent: dict[str, str] | None = None,
    previous: Callable[[str], dict[str, Any] | None] | None = None,
    site: Site | None = None,
) -> list[Entry]:
    """The writes in dependency order, then not_sendable and unchanged entries (same warehouse, same plan).

    sent maps "Type/warehouse id" to the content hash already on the server (ops.backload_ids); previous
    gives the body last sent for a key (a JSON Patch is the difference between it and the new body).
    With a person map (the identity stage), one Patient per person is sent and every reference to a source
    Patient points at it; a site profile drops, fills and maps what it opted into (recorded per entry)."""
    sent = sent or {}
    site = site or Site("", target.name)
    person_of, records = persons(con)
    located = mapped_records(con, site)
    existing = set(site.existing)

    def repoint(ref: str) -> str:
        rtype, _, rid = ref.partition("/")
        if rtype == "Patient" and rid in person_of:
            return f"Patient/{person_of[rid]}"
        if ref in located:
            return f"{rtype}/{located[ref]}"
        return ref

    entries: dict[str, Entry] = {}
    refs: dict[str, list[tuple[str, str]]] = {}  # key -> [(element path, "Type/id")]
    for rtype, rid, resource, stand_in in stored_resources(con):
        entry = Entry(rtype, rid)
        entries[entry.key] = entry
        if rtype == "Patient" and person_of.get(rid, rid) != rid:
            entry.status, entry.step = MERGED, "none"
            entry.reason = check_reason("backload_merged_into_person", MERGED)
            continue
        if entry.key in located:
            entry.status, entry.step, entry.server_id = MAPPED, "none", located[entry.key]
            continue
        if rtype == "Location" and "Location" in site.records and not target.rule(rtype):
            entry.refuse("backload_location_unmapped")
            continue
        if stand_in and not target.send_stand_ins:
            entry.refuse("backload_stand_in")
            continue
        if rtype == "Patient" and rid in records:
            # The person record: every source's identifiers; its links name source Patients never sent.
            resource = {k: v for k, v in records[rid].items() if k != "link"}
        body = {k: v for k, v in resource.items() if k not in target.server_managed}
        if person_of or located:
            body = rewrite_references(body, repoint)
        body, _text_only = codings_for_target(body, target.codings)
        body, entry.changes = site.apply(rtype, body, target)
        problem = check_resource(rtype, resource, body, target)
        if problem:
            entry.refuse(*problem)
            continue
        entry.body = body
        entry.content_sha256 = content_sha(body)
        refs[entry.key] = references(body)
        before = sent.get(entry.key)
        if before == entry.content_sha256:
            entry.status, entry.step = UNCHANGED, "none"
        elif before is not None:
            _change(entry, body, target, previous)
    while True:
        _refuse_broken_references(entries, refs, existing)
        ordered = _order(entries, refs, target)
        if ordered is not None:
            return ordered


def _change(
    entry: Entry,
    body: dict[str, Any],
    target: TargetProfile,
    previous: Callable[[str], dict[str, Any] | None] | None,
) -> None:
    """A resource changed since it was sent: PUT where the type has update, else a JSON Patch of the
    documented operations (refused, naming the elements, when the change needs one that is not documented)."""
    rule = target.rule(entry.resource_type)
    if rule is not None and "update" in rule.interactions:
        entry.step = "update"
        return
    if rule is None or rule.patch is None or "patch" not in rule.interactions:
        entry.refuse("backload_update_not_supported", "update")
        return
    old = previous(entry.key) if previous else None
    if old is None:  # the body sent before is not in any stored plan: nothing to take the difference from
        entry.refuse("backload_update_not_supported", "patch")
        return
    refused = not_patchable(old, body, rule.patch)
    if refused:
        entry.refuse("backload_change_not_patchable", ", ".join(refused))
    else:
        entry.step = "patch"


def persons(con: duckdb.DuckDBPyConnection) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """(source Patient id -> person id, person id -> person record) from the identity stage, else empty."""
    tables = {
        t
        for (t,) in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
            "AND schema_name = 'ops' AND table_name IN ('person_map', 'person_records')"
        ).fetchall()
    }
    if tables != {"person_map", "person_records"}:
        return {}, {}
    person_of = dict(con.execute("SELECT patient_id, person_id FROM ops.person_map").fetchall())
    rows = con.execute("SELECT person_id, resource FROM ops.person_records").fetchall()
    return person_of, {p: orjson.loads(r) for p, r in rows}


def mapped_records(con: duckdb.DuckDBPyConnection, site: Site) -> dict[str, str]:
    """ "Type/warehouse id" -> the target's id, for every source record the site maps to an existing one."""
    out = {}
    tables = set(resource_tables(con))
    for rtype in sorted(site.records):
        if rtype not in tables:
            continue
        for rid, text in con.execute(f'SELECT id, resource FROM fhir."{rtype}" ORDER BY id').fetchall():
            found = site.existing_id(rtype, rid, orjson.loads(text))
            if found:
                out[f"{rtype}/{rid}"] = found
    return out


def _refuse_broken_references(
    entries: dict[str, Entry], refs: dict[str, list[tuple[str, str]]], existing: set[str]
) -> None:
    # To a fixpoint: refusing one resource can leave another pointing at something that will not exist.
    changed = True
    while changed:
        changed = False
        for key, pointers in refs.items():
            entry = entries[key]
            if entry.status == NOT_SENDABLE:
                continue
            bad = sorted(
                {p for p, ref in pointers if ref not in existing and not _on_server(entries.get(ref))}
            )
            if bad:
                entry.refuse("backload_reference_not_sendable", ", ".join(bad))
                changed = True


def _on_server(entry: Entry | None) -> bool:
    """Will the target have this resource (sent now, or already there from an earlier send)?"""
    if entry is None or entry.status == MERGED:
        return False
    return entry.status != NOT_SENDABLE or entry.reason in ON_SERVER_ANYWAY


def _order(
    entries: dict[str, Entry], refs: dict[str, list[tuple[str, str]]], target: TargetProfile
) -> list[Entry] | None:
    """Kahn's order by (type rank, type, id); a cycle is broken by creating without the references closing it
    and sending them in an update afterwards, when the type can be updated and the reference is optional.
    None when a cycle had to be refused instead: the caller refuses what pointed at it and orders again."""
    sending = {k: e for k, e in entries.items() if e.status == SEND}
    deps = {k: {ref for _p, ref in refs[k] if ref in sending and ref != k} for k in sending}
    users: dict[str, set[str]] = {k: set() for k in sending}
    for k, ds in deps.items():
        for d in ds:
            users[d].add(k)

    def prio(k: str) -> tuple[int, str, str]:
        e = sending[k]
        return (target.rank(e.resource_type), e.resource_type, e.warehouse_id)

    waiting = {k: len(ds) for k, ds in deps.items()}
    heap = [prio(k) for k, n in waiting.items() if n == 0]
    heapq.heapify(heap)
    done: list[Entry] = []
    followups: list[Entry] = []
    placed: set[str] = set()
    while len(placed) < len(sending):
        if not heap:  # only cycles remain: break one, the first in order whose closing references can wait
            stuck = sorted((k for k in sending if k not in placed), key=prio)
            k, first = None, None
            for c in stuck:  # a write merely waiting on a cycle is not one to break
                can = _followup_step(sending[c], deps[c] - placed, refs[c], target) is not None
                if (can or first is None) and _on_cycle(c, deps, placed):
                    first = first or c
                    if can:
                        k = c
                        break
            if k is None:
                refused = first or stuck[0]
                sending[refused].refuse(
                    "backload_reference_cycle", ", ".join(_closing(deps[refused] - placed, refs[refused]))
                )
                for f in followups:  # undo, so the next attempt starts from the full bodies
                    e = entries[f.key]
                    e.body, e.deferred, e.content_sha256 = f.body, [], f.content_sha256
                return None
            _defer(sending[k], deps[k] - placed, refs[k], target, followups)
            heap.append(prio(k))
        _rank, rtype, rid = heapq.heappop(heap)
        k = f"{rtype}/{rid}"
        if k in placed:
            continue
        placed.add(k)
        done.append(sending[k])
        for u in sorted(users[k]):
            waiting[u] -= 1
            if waiting[u] == 0 and u not in placed:
                heapq.heappush(heap, prio(u))
    rest = sorted(
        (e for e in entries.values() if e.status != SEND),
        key=lambda e: (e.status, target.rank(e.resource_type), e.resource_type, e.warehouse_id),
    )
    out = done + followups + rest
    for i, e in enumerate(out, start=1):
        e.seq = i
    return out


def _on_cycle(start: str, deps: dict[str, set[str]], placed: set[str]) -> bool:
    """Does start reach itself through writes not yet placed? (Only asked when the order is stuck.)"""
    seen: set[str] = set()
    stack = [d for d in deps[start] if d not in placed]
    while stack:
        k = stack.pop()
        if k == start:
            return True
        if k not in seen:
            seen.add(k)
            stack.extend(d for d in deps[k] if d not in placed and d not in seen)
    return False


def _closing(open_refs: set[str], pointers: list[tuple[str, str]]) -> list[str]:
    return sorted({p for p, ref in pointers if ref in open_refs})


def _top(path: str) -> str:
    return path.split(".")[0].split("[")[0]


def _followup_step(
    entry: Entry, open_refs: set[str], pointers: list[tuple[str, str]], target: TargetProfile
) -> str | None:
    """How the references closing a cycle can follow the create: "update" (PUT of the whole body) where the
    type has update; "patch" where it has only patch and the profile documents `add /E/-` for every element
    holding them (each reference item added to the created resource, which does not have E yet: a replace
    needs the member present, RFC 6902 4.3); None when neither, or an element is required on create."""
    rule = target.rule(entry.resource_type)
    tops = {_top(p) for p in _closing(open_refs, pointers)}
    if rule is None or entry.step != "create" or any(t in rule.required for t in tops):
        return None
    if "update" in rule.interactions:
        return "update"
    if "patch" in rule.interactions and rule.patch:
        kinds = patch_kinds(rule.patch)
        if all(t in kinds and kinds[t]["add"] and isinstance((entry.body or {}).get(t), list) for t in tops):
            return "patch"
    return None


def _defer(
    entry: Entry,
    open_refs: set[str],
    pointers: list[tuple[str, str]],
    target: TargetProfile,
    out: list[Entry],
) -> None:
    """Create without the elements closing the cycle; a followup (update or JSON Patch) sends them after."""
    step = _followup_step(entry, open_refs, pointers, target)
    assert step is not None and entry.body is not None
    tops = {_top(p) for p in _closing(open_refs, pointers)}
    follow = Entry(
        entry.resource_type,
        entry.warehouse_id,
        step=step,
        body=entry.body,
        content_sha256=entry.content_sha256,
        followup=True,
    )
    entry.body = {k: v for k, v in entry.body.items() if k not in tops}
    entry.deferred = sorted(tops)
    # The create records what it sends: a re-plan after a kill between the two writes still sees the
    # followup's elements as missing on the server, never as unchanged.
    entry.content_sha256 = content_sha(entry.body)
    out.append(follow)

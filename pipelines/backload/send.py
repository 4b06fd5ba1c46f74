"""Sending a plan: capability check, in-doubt resolution, then dependency-ordered writes N at a time."""

from __future__ import annotations

import heapq
import logging
import queue
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson

from pipelines.backload.checks import references
from pipelines.backload.client import Target
from pipelines.backload.journal import Journal, fold, outcome_line, recover
from pipelines.backload.journal import folder as journal_folder
from pipelines.backload.profiles import TargetProfile
from pipelines.backload.store import sent_bodies, sent_hashes
from pipelines.backload.writes import Item, Outcome, find_created, prepare_raw, send_chunk, send_one
from pipelines.common.errors import EhrliftError, ExitCode

log = logging.getLogger(__name__)
DONE = ("created", "updated", "resolved")
IN_DOUBT = ("intent", "in_doubt")  # a create that may be on the server: searched for before a resend
WINDOW = 256  # writes announced (intent lines) per fsync: at most 1.5 windows in doubt after a kill
FLUSH_SECONDS = 1.0


class CapabilityMismatch(EhrliftError):
    """The server does not declare an interaction the plan needs: nothing was written."""

    exit_code = ExitCode.BACKLOAD_CAPABILITY

    def __init__(self, missing: list[tuple[str, str]]) -> None:
        super().__init__(
            f"the target server does not declare {len(missing)} type/interaction(s) the plan needs; "
            "nothing was written",
            hint="see the table above, or re-plan with a profile that fits the server",
        )
        self.missing = missing


@dataclass
class SendOptions:
    concurrency: int = 4
    dry_run: bool = False
    failed_only: bool = False  # re-send only the writes that failed before
    progress: Callable[[int, int], None] | None = None  # (done, total)


@dataclass
class SendResult:
    plan_id: str
    planned_writes: int
    counts: Counter[str] = field(default_factory=Counter)  # state -> writes this call
    missing: list[tuple[str, str]] = field(default_factory=list)
    interrupted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan_id": self.plan_id,
            "planned_writes": self.planned_writes,
            **dict(sorted(self.counts.items())),
        }


# `"reference":"Type/id"` as orjson writes it (a quote inside a string value is escaped: this is a key)
_REFERENCE = re.compile(rb'[{,]"reference":"([A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64})"')


def load_items(
    con: duckdb.DuckDBPyConnection, plan_id: str, target: str, profile: TargetProfile | None = None
) -> list[Item]:
    """The plan's writes in order; with a per-resource profile, plain creates prepared as bytes. A plain
    create whose stored text holds only relative references is neither parsed nor serialized again: its
    references are read from the bytes."""
    rows = con.execute(
        "SELECT seq, resource_type, warehouse_id, step, body, content_sha256 FROM ops.backload_plan "
        "WHERE plan_id = ? AND status = 'send' ORDER BY seq",
        [plan_id],
    ).fetchall()
    out = []
    sent: dict[str, str] = {}
    if any(step == "patch" for _s, _t, _w, step, _b, _c in rows):
        sent = sent_hashes(con, target)
    previous = sent_bodies(con, target, sent)
    per_resource = profile is not None and profile.transaction_chunk is None
    creates: dict[str, bytes] = {}  # key -> this plan's create body, for a cycle's followup patch
    for seq, rtype, wid, step, body, sha in rows:
        text = body.encode()
        key = f"{rtype}/{wid}"
        quick = per_resource and step == "create" and not profile.conditional_create  # type: ignore[union-attr]
        found = _REFERENCE.findall(text) if quick else None
        if (
            found is not None
            and text.startswith(b'{"resourceType":"' + rtype.encode() + b'"')
            and text.count(b'"reference":') == len(found)
            and b'"contained":' not in text
        ):
            deps = frozenset(r.decode() for r in found) - {key}
            out.append(Item(seq, rtype, wid, step, text, sha, deps, raw=text))
            creates[key] = text
            continue
        parsed = orjson.loads(text)
        refs = references(parsed)
        deps = frozenset(ref for _p, ref in refs if ref != key)
        before = None
        if step == "patch":  # a cycle's followup patches what this plan's create sent, else the last send
            before = orjson.loads(creates[key]) if key in creates else previous(key)
        elif step == "create":
            creates[key] = text
        item = Item(seq, rtype, wid, step, text, sha, deps, before, parsed=parsed)
        if per_resource:
            prepare_raw(item, profile, text, refs)  # type: ignore[arg-type]
        out.append(item)
    return out


def last_states(con: duckdb.DuckDBPyConnection, plan_id: str) -> dict[int, tuple[str, datetime]]:
    """seq -> (last state, when); a write failed only because what it refers to failed is 'unsent'."""
    rows = con.execute(
        "SELECT seq, CASE WHEN state = 'failed' AND issue_codes LIKE 'dependency-%' THEN 'unsent' "
        "ELSE state END, epoch(recorded_at) FROM ops.backload_results WHERE plan_id = ? "
        "QUALIFY row_number() OVER (PARTITION BY seq ORDER BY recorded_at DESC, "
        "CASE state WHEN 'intent' THEN 1 ELSE 0 END) = 1",
        [plan_id],
    ).fetchall()
    return {seq: (state, datetime.fromtimestamp(at, UTC)) for seq, state, at in rows}


def server_ids(con: duckdb.DuckDBPyConnection, target: str) -> dict[str, tuple[str, str | None]]:
    rows = con.execute(
        "SELECT resource_type, warehouse_id, server_id, version_id FROM ops.backload_ids WHERE target = ? "
        "QUALIFY row_number() OVER (PARTITION BY resource_type, warehouse_id ORDER BY recorded_at DESC) = 1",
        [target],
    ).fetchall()
    return {f"{t}/{w}": (s, v) for t, w, s, v in rows}


def missing_interactions(
    statement: dict[str, Any], items: list[Item], profile: TargetProfile
) -> list[tuple[str, str]]:
    declared: set[tuple[str, str]] = set()
    system: set[str] = set()
    for rest in statement.get("rest") or []:
        if not isinstance(rest, dict) or rest.get("mode", "server") != "server":
            continue
        system |= {i.get("code") for i in rest.get("interaction") or [] if isinstance(i, dict)}
        for r in rest.get("resource") or []:
            if isinstance(r, dict):
                declared |= {
                    (r.get("type"), i.get("code")) for i in r.get("interaction") or [] if isinstance(i, dict)
                }
    need = {(i.resource_type, i.step) for i in items}
    missing = sorted(n for n in need if n not in declared)
    if profile.transaction_chunk and items and "transaction" not in system:
        missing.append(("(system)", "transaction"))
    return missing


class Recorder:
    """Intents and outcomes into the send journal (folded into the warehouse when the send ends): no request
    waits for the warehouse, and an intent is always on disk before its request goes out."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.results: list[bytes] = []

    def intents(self, items: list[Item], state: str = "intent") -> None:
        self.journal.intents([i.seq for i in items], state)

    def outcome(self, o: Outcome) -> None:
        i = o.item
        self.results.append(
            outcome_line(i.seq, o.state, o.http_status, o.issue_codes, o.attempts, o.server_id, o.version_id)
        )

    def flush(self, results: list[bytes] | None = None) -> None:
        """Append outcome lines (by default those recorded so far) to the journal."""
        if results is None:
            results, self.results = self.results, []
        self.journal.outcomes(results)


def send_plan(
    con: duckdb.DuckDBPyConnection,
    profile: TargetProfile,
    target: Target,
    plan_id: str,
    statement: Callable[[], dict[str, Any]],
    options: SendOptions,
    warehouse: Path,
) -> SendResult:
    """Send the plan's open writes; what an interrupted send left in its journal is folded in first.
    statement gives the server's CapabilityStatement (read meanwhile), checked before any write."""
    journals = journal_folder(warehouse)
    recover(con, warehouse)
    items = load_items(con, plan_id, profile.name, profile)
    result = SendResult(plan_id, len(items))
    states = last_states(con, plan_id)
    ids = server_ids(con, profile.name)
    site = con.execute("SELECT site FROM ops.backload_plans WHERE plan_id = ?", [plan_id]).fetchone()
    for ref in orjson.loads(site[0])["existing"] if site and site[0] else ():
        ids.setdefault(ref, (ref.split("/", 1)[1], None))  # the site's own records, already on the target
    done = {i.seq for i in items if states.get(i.seq, ("", None))[0] in DONE}
    failed = {i.seq for i in items if states.get(i.seq, ("", None))[0] == "failed"}
    todo = [i for i in items if i.seq not in done and ((i.seq in failed) == options.failed_only)]
    result.missing = missing_interactions(statement(), todo, profile)
    if result.missing:
        raise CapabilityMismatch(result.missing)
    if options.dry_run:
        result.counts.update(f"would_{i.step}" for i in todo)
        return result
    if not todo:
        return result  # nothing to send: no journal
    journal = Journal(journals / f"{plan_id}.jnl", plan_id, profile.name, target.base)
    recorder = Recorder(journal)
    try:
        undecided = _resolve_in_doubt(profile, target, todo, states, ids, recorder, result)
        recorder.flush()
        # A create whose resource the server already has (resolved, or written under an earlier plan) is done.
        todo = [i for i in todo if i.seq not in undecided and not (i.step == "create" and i.key in ids)]
        Scheduler(profile, target, todo, ids, recorder, result, options, len(done)).run()
    finally:
        recorder.flush()
        journal.close()
        fold(con, journal.path)  # one transaction; on a failure the file stays for the next send
    return result


def _resolve_in_doubt(
    profile: TargetProfile,
    target: Target,
    todo: list[Item],
    states: dict[int, tuple[str, datetime]],
    ids: dict[str, tuple[str, str | None]],
    recorder: Recorder,
    result: SendResult,
) -> set[int]:
    """A create whose intent was recorded but not its outcome may have reached the server: look for it.
    Returns the writes that cannot be decided (left failed as in-doubt, never sent twice)."""
    undecided: set[int] = set()
    for item in todo:
        state, at = states.get(item.seq, ("", None))
        if state not in IN_DOUBT or item.step != "create" or at is None or item.key in ids:
            continue
        if any(dep not in ids for dep in item.deps):
            continue  # its references never got server ids, so it was never sent
        found = find_created(target, profile, item, ids, at)
        if found is False:
            recorder.outcome(Outcome(item, "failed", None, ["in-doubt"], 0))
            result.counts["in_doubt"] += 1
            undecided.add(item.seq)
        elif found:
            recorder.outcome(Outcome(item, "resolved", None, [], 0, found[0], found[1]))
            ids[item.key] = found
            result.counts["resolved"] += 1
    return undecided


class Scheduler:
    """Writes whose references all have server ids go first, at most `concurrency` requests in flight.

    A transaction chunk may also take writes whose only open references are to writes in the same chunk
    (they go as urn:uuid). Ctrl-C stops taking new writes, records those in flight, and re-raises."""

    def __init__(
        self,
        profile: TargetProfile,
        target: Target,
        todo: list[Item],
        ids: dict[str, tuple[str, str | None]],
        recorder: Recorder,
        result: SendResult,
        options: SendOptions,
        already: int,
    ) -> None:
        self.profile, self.target, self.ids, self.recorder, self.result = (
            profile,
            target,
            ids,
            recorder,
            result,
        )
        self.options = options
        self.chunk = profile.transaction_chunk or 1
        self.total, self.progressed = len(todo) + already, already
        self.blocked: dict[str, list[Item]] = {}
        self.waiting: dict[int, set[str]] = {}
        self.taken: set[int] = set()
        self.ready: list[tuple[int, Item]] = []  # a heap by plan order
        creates = {i.key for i in todo if i.step == "create"}
        for i in todo:
            open_deps = {d for d in i.deps if d not in ids}
            if i.step in ("update", "patch") and i.key in creates:
                open_deps.add(i.key)  # a cycle's followup waits for its own create
            if open_deps - creates:
                recorder.outcome(Outcome(i, "failed", None, ["dependency-not-sent"], 0))
                result.counts["failed"] += 1
                continue
            self.waiting[i.seq] = open_deps
            for d in open_deps:
                self.blocked.setdefault(d, []).append(i)
            if not open_deps:
                self.ready.append((i.seq, i))  # todo is in plan order, so this list is already a heap

    def run(self) -> None:
        # Ctrl-C only sets a flag: the loop stops taking writes, records those in flight, then re-raises.
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, self._interrupt) if main else None
        try:
            self._loop()
        finally:
            if main:
                signal.signal(signal.SIGINT, previous)
        if self.result.interrupted:
            raise KeyboardInterrupt

    def _interrupt(self, _signum: int, _frame: object) -> None:
        self.result.interrupted = True

    def _loop(self) -> None:
        """Intents go to the journal (one fsynced write) for a window of writes at a time before any of them
        goes out; outcome lines are appended every FLUSH_SECONDS or window. A kill leaves at most a window and
        a half in doubt, each found again by search before it is sent again.

        Workers take announced writes from a queue, send them back to back and record each outcome
        themselves (under a lock), releasing what waited on it; this thread only announces the next window
        when the queue runs low and appends outcomes, so no request waits for it."""
        n = self.options.concurrency
        window = max(WINDOW, 4 * n)
        self.half = window // 2
        self.work: queue.SimpleQueue = queue.SimpleQueue()
        self.lock, self.wake = threading.Lock(), threading.Event()
        self.queued, self.withdrawn, self.error = 0, [], None
        workers = [threading.Thread(target=self._work, name=f"backload-{k}", daemon=True) for k in range(n)]
        for w in workers:
            w.start()
        last_flush = time.monotonic()
        try:
            while self.error is None:
                with self.lock:
                    batches = []
                    # The next window is announced while half of this one is still queued, so workers never
                    # wait for an intent commit: a kill leaves at most one and a half windows in doubt.
                    if self.queued <= window // 2 and not self.result.interrupted:
                        while self.ready and len(batches) < window:
                            batches.append(self._take())
                    self.queued += len(batches)
                    idle = self.queued == 0
                if batches:
                    self.recorder.intents([i for b in batches for i in b])  # committed before any is sent
                    for b in batches:
                        self.work.put(b)
                if idle:
                    break
                self.wake.wait(timeout=FLUSH_SECONDS)
                self.wake.clear()
                now = time.monotonic()
                if len(self.recorder.results) >= window or now - last_flush >= FLUSH_SECONDS:
                    self._flush()
                    last_flush = now
        finally:
            for _ in workers:
                self.work.put(None)
            for w in workers:
                w.join()
        if self.error is not None:
            raise self.error
        self._flush()
        # Announced but never sent (Ctrl-C): withdrawn, so a re-run sends them without a search.
        self.recorder.intents([i for b in self.withdrawn for i in b], state="withdrawn")

    def _flush(self) -> None:
        with self.lock:  # the lines so far; workers go on recording into a fresh list meanwhile
            results, self.recorder.results = self.recorder.results, []
        self.recorder.flush(results)
        if self.options.progress:
            self.options.progress(self.progressed, self.total)

    def _work(self) -> None:
        while (batch := self.work.get()) is not None:
            self._work_one(batch)

    def _work_one(self, batch: list[Item]) -> None:
        got: Any = None
        if not self.result.interrupted and self.error is None:  # Ctrl-C or an error: the rest is not sent
            try:
                if self.profile.transaction_chunk:
                    got = send_chunk(self.target, self.profile, batch, self.ids)
                else:
                    got = send_one(self.target, self.profile, batch[0], self.ids)
            except Exception as exc:  # raised by the main thread; the write stays in doubt (searched later)
                self.error = exc
                got = []
        with self.lock:
            self.queued -= 1
            if got is None:
                self.withdrawn.append(batch)
            else:
                for o in got if isinstance(got, list) else [got]:
                    self._record(o)
            low = self.queued in (0, self.half)  # crossing half a window, or empty: time to announce more
        if low or self.error is not None or len(self.recorder.results) >= WINDOW:
            self.wake.set()

    def _take(self) -> list[Item]:
        batch = [heapq.heappop(self.ready)[1]]
        keys = {batch[0].key}
        rest = []
        while self.ready and len(batch) < self.chunk:
            i = heapq.heappop(self.ready)[1]
            (rest if i.key in keys else batch).append(i)
            keys.add(i.key)
        # Writes whose open references all point into this chunk ride along (referenced as urn:uuid).
        grew = True
        while grew and len(batch) < self.chunk:
            grew = False
            for k in list(keys):
                for u in self.blocked.get(k, []):
                    fits = len(batch) < self.chunk and u.seq not in self.taken and u.key not in keys
                    if fits and u.step == "create" and self.waiting[u.seq] <= keys:
                        batch.append(u)
                        keys.add(u.key)
                        grew = True
        for i in rest:
            heapq.heappush(self.ready, (i.seq, i))
        self.taken.update(i.seq for i in batch)
        return batch

    def _record(self, o: Outcome) -> None:
        self.recorder.outcome(o)
        self.result.counts[o.state] += 1
        self.progressed += 1
        key = o.item.key
        if o.state in DONE and o.server_id:
            self.ids[key] = (o.server_id, o.version_id)
            for u in self.blocked.pop(key, []):
                self.waiting[u.seq].discard(key)
                if not self.waiting[u.seq] and u.seq not in self.taken:
                    heapq.heappush(self.ready, (u.seq, u))
        elif o.state in ("failed", "in_doubt"):
            stack = [key]
            while stack:
                for u in self.blocked.pop(stack.pop(), []):
                    if u.seq in self.taken:
                        continue
                    self.taken.add(u.seq)
                    self.recorder.outcome(Outcome(u, "failed", None, ["dependency-failed"], 0))
                    self.result.counts["failed"] += 1
                    self.progressed += 1
                    stack.append(u.key)

"""The FHIR send journal: intents and outcomes appended beside the warehouse, folded in one transaction.

While writes go out, nothing is written to the warehouse: the sender appends to
`WAREHOUSE.fhir-journal/PLAN_ID.jnl` a line per announced write (`I`, fsynced before any write of its
window is sent: the intent) and a line per outcome (`R`, appended in groups). At the end of the send the
journal is folded into ops.backload_results and ops.backload_ids in one transaction (one set-based
statement each) and removed; after a kill, the next send folds it first, so an intent without an outcome
is in doubt and looked for on the server before it is written again. A line holds the plan position
(seq), the state, the HTTP status, the OperationOutcome issue codes, the attempts, the target's id and
version of what was written, and the time; never request content, warehouse ids or diagnostics. Like
DuckDB's own write-ahead log beside the warehouse file, it is part of the warehouse's storage (mode 0600)
and lives only until it is folded."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import duckdb

from pipelines.backload.appendfile import clean, open_append, write_all
from pipelines.common.errors import EhrliftError
from pipelines.common.warehouse import transaction

log = logging.getLogger(__name__)

MAGIC = "ehrlift-fhir-journal"
VERSION = "1"
FIELDS = {"H": 5, "I": 3, "R": 8}  # values per line kind: H(eader), I(ntent), R(esult)
DONE = ("created", "updated", "resolved")


def folder(warehouse: Path | str) -> Path:
    return Path(f"{warehouse}.fhir-journal")


def line(kind: str, *values: object) -> bytes:
    return ("\t".join((kind, *(clean(v) for v in values))) + "\n").encode()


class Journal:
    """One plan's journal, open for appending. intents() returns once its lines are on disk (fsync)."""

    def __init__(self, path: Path, plan_id: str, target: str, server: str) -> None:
        self.path = path
        self.fd = open_append(path)
        # On disk with the first intents (their fsync): until then nothing was sent under this header.
        self._write(line("H", MAGIC, VERSION, plan_id, target, server), sync=False)

    def _write(self, data: bytes, *, sync: bool) -> None:
        write_all(self.fd, data, sync=sync)

    def intents(self, seqs: list[int], state: str = "intent") -> None:
        """On disk before any of these writes is sent (outcomes appended since go down with them)."""
        if seqs:
            now = time.time()
            self._write(b"".join(line("I", s, state, now) for s in seqs), sync=True)

    def outcomes(self, lines: list[bytes]) -> None:
        """Appended without an fsync: a kill keeps them (the page cache); a power loss leaves those writes in
        doubt, which the next send resolves by search."""
        if lines:
            self._write(b"".join(lines), sync=False)

    def close(self) -> None:
        if self.fd >= 0:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1


def outcome_line(
    seq: int,
    state: str,
    http_status: int | None,
    codes: list[str],
    attempts: int,
    server_id: str | None,
    version: str | None,
) -> bytes:
    return line("R", seq, state, http_status, ",".join(codes), attempts, server_id, version, time.time())


def read(path: Path) -> tuple[list[str], list[list[str]], list[list[str]], bool] | None:
    """(header, intents, results, torn) of a journal; None when its header never reached the disk whole."""
    data = path.read_bytes()
    complete, _, tail = data.rpartition(b"\n")
    lines = complete.decode("utf-8", errors="replace").split("\n") if complete else []
    if not lines:
        return None
    head = lines[0].split("\t")
    if len(head) != FIELDS["H"] + 1 or head[0] != "H" or head[1] != MAGIC:
        raise EhrliftError(f"the FHIR send journal {path.name} is not one this version writes")
    intents, results = [], []
    for n, text in enumerate(lines[1:], start=2):
        parts = text.split("\t")
        kind = parts[0]
        if kind not in ("I", "R") or len(parts) != FIELDS[kind] + 1 or not parts[1].isdigit():
            raise EhrliftError(
                f"the FHIR send journal {path.name} is damaged at line {n}",
                hint="it is kept as it is; move it aside to send again (its writes are then searched for)",
            )
        (intents if kind == "I" else results).append(parts[1:])
    return head[1:], intents, results, bool(tail)  # a torn last line (a kill mid-write) is never acted upon


def fold(con: duckdb.DuckDBPyConnection, path: Path) -> int:
    """Apply one journal to ops.backload_results and ops.backload_ids, then remove it. Idempotent: a row the
    tables already hold (same plan, seq, state and time) is not inserted again, so a crash between the commit
    and the removal folds it again harmlessly. Returns the lines folded."""
    got = read(path)
    if got is None:
        path.unlink()
        return 0
    (_magic, _version, plan_id, target, server), intents, results, torn = got
    if torn:  # DuckDB reads the file itself: the torn line goes first (it was never acted upon)
        with path.open("r+b") as f:
            f.truncate(f.read().rfind(b"\n") + 1)
        log.warning("FHIR send journal of plan %s: a torn last line was ignored", plan_id)
    # DuckDB's CSV reader takes the file as it is (no per-row Python, nothing more to import). Fields by
    # kind: I seq, state, at; R seq, state, http status, codes, attempts, server id, version, at.
    columns = {"kind": "VARCHAR", **{f"c{i}": "VARCHAR" for i in range(1, 9)}}
    source = (
        f"read_csv($path, delim = '\t', header = false, quote = '', escape = '', columns = {columns}, "
        "null_padding = true, auto_detect = false)"
    )
    rows = f"""
        SELECT CAST(c1 AS INTEGER) AS seq, c2 AS state,
            CASE kind WHEN 'R' THEN CAST(c3 AS INTEGER) END AS http_status,
            CASE kind WHEN 'R' THEN c4 END AS issue_codes,
            CASE kind WHEN 'R' THEN CAST(c5 AS INTEGER) END AS attempts,
            CASE kind WHEN 'R' THEN c6 END AS server_id, CASE kind WHEN 'R' THEN c7 END AS version_id,
            to_timestamp(CAST(CASE kind WHEN 'R' THEN c8 ELSE c3 END AS DOUBLE)) AS at
        FROM {source} WHERE kind IN ('I', 'R')"""
    with transaction(con):
        con.execute(f"CREATE OR REPLACE TEMP TABLE fhir_journal AS {rows}", {"path": str(path)})
        con.execute(
            """
            INSERT INTO ops.backload_results
            SELECT $plan, j.seq, $target, p.resource_type, p.warehouse_id, p.step, j.state, j.http_status,
                j.issue_codes, j.attempts, j.server_id, j.at
            FROM fhir_journal j JOIN ops.backload_plan p ON p.plan_id = $plan AND p.seq = j.seq
            WHERE NOT EXISTS (SELECT 1 FROM ops.backload_results r WHERE r.plan_id = $plan AND r.seq = j.seq
                AND r.state = j.state AND r.recorded_at = j.at)
            """,
            {"plan": plan_id, "target": target},
        )
        con.execute(
            """
            INSERT INTO ops.backload_ids
            SELECT $target, p.resource_type, p.warehouse_id, j.server_id, j.version_id, j.at, $server,
                p.content_sha256
            FROM fhir_journal j JOIN ops.backload_plan p ON p.plan_id = $plan AND p.seq = j.seq
            WHERE j.state IN ('created', 'updated', 'resolved') AND j.server_id IS NOT NULL
              AND NOT EXISTS (SELECT 1 FROM ops.backload_ids i WHERE i.target = $target
                AND i.resource_type = p.resource_type AND i.warehouse_id = p.warehouse_id
                AND i.server_id = j.server_id AND i.recorded_at = j.at)
            """,
            {"plan": plan_id, "target": target, "server": server},
        )
        con.execute("DROP TABLE fhir_journal")
    path.unlink()
    return len(intents) + len(results)


def _int(text: str) -> int | None:
    return int(text) if text else None


def recover(con: duckdb.DuckDBPyConnection, warehouse: Path | str) -> int:
    """Before a send: fold whatever an interrupted send left, oldest first. Returns the journals folded."""
    found = sorted(folder(warehouse).glob("*.jnl"), key=lambda p: (p.stat().st_mtime_ns, p.name))
    for path in found:
        fold(con, path)
        log.info("FHIR back-load: the journal of an interrupted send was applied")
    return len(found)

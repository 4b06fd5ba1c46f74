"""Buffered writes of ledger, quarantine and staged-resource rows into the warehouse, in Arrow batches."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import duckdb

from pipelines.common import arrow
from pipelines.common.reasons import check_reason

if TYPE_CHECKING:
    from pipelines.common.records import FileContext, StagedResource, Unit

LEDGER_COLUMNS = (
    "run_id",
    "file_sha256",
    "unit_position",
    "unit_kind",
    "outcome",
    "reason",
    "resource_count",
    "byte_offset",
    "byte_length",
)
QUARANTINE_COLUMNS = (
    "run_id",
    "file_sha256",
    "unit_position",
    "reason_code",
    "pointer",
    "message",
    "resource_type",
)
UNCONSUMED_COLUMNS = ("run_id", "file_sha256", "unit_position", "container", "item", "count")
ITEM_COLUMNS = ("run_id", "file_sha256", "unit_position", "container", "part", "item", "found", "converted")
STAGE_COLUMNS = (
    "run_id",
    "seq",
    "file_sha256",
    "unit_position",
    "resource_index",
    "resource_type",
    "id",
    "source_system",
    "source_id",
    "content_sha256",
    "last_updated",
    "resource",
    "reference_only",
)


def pointer(
    file_sha256: str, kind: str, position: int, offset: int | None = None, length: int | None = None
) -> str:
    """Where a unit sits in the landed file, e.g. landing/<sha256>#ndjson_line=12@4096+830."""
    text = f"landing/{file_sha256}#{kind}={position}"
    return text if offset is None else f"{text}@{offset}+{length}"


class LedgerWriter:
    """One file's outcomes: every unit gets exactly one ledger row; rows reach DuckDB in batches.

    ctx may be replaced between files, so files that commit together share one writer's batches.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, ctx: FileContext, batch_size: int = 10_000) -> None:
        self.con = con
        self.ctx = ctx
        self.batch_size = batch_size
        self._ledger: dict[str, list] = {c: [] for c in LEDGER_COLUMNS}
        self._quarantine: dict[str, list] = {c: [] for c in QUARANTINE_COLUMNS}
        self._stage: dict[str, list] = {c: [] for c in STAGE_COLUMNS}
        self._unconsumed: dict[str, list] = {c: [] for c in UNCONSUMED_COLUMNS}
        self._items: dict[str, list] = {c: [] for c in ITEM_COLUMNS}
        self.staged = 0  # resources staged since the last merge (the caller resets it when it merges)

    def convert(self, unit: Unit, resources: list[StagedResource]) -> None:
        self._row(unit, "converted", None, len(resources))
        self.staged += len(resources)
        stage = self._stage
        ctx = self.ctx
        for index, res in enumerate(resources):
            stage["run_id"].append(ctx.run_id)
            stage["seq"].append(ctx.seq)
            stage["file_sha256"].append(ctx.file_sha256)
            stage["unit_position"].append(unit.position)
            stage["resource_index"].append(index)
            stage["resource_type"].append(res.resource_type)
            stage["id"].append(res.id)
            stage["source_system"].append(ctx.source_system)
            stage["source_id"].append(res.source_id)
            stage["content_sha256"].append(hashlib.sha256(res.json).hexdigest())
            stage["last_updated"].append(res.last_updated)
            stage["resource"].append(res.json.decode("utf-8"))
            stage["reference_only"].append(res.reference_only)
        if len(stage["run_id"]) >= self.batch_size:
            self.flush()

    def unconsumed(self, unit: Unit, container: str | None, items: dict[str, int]) -> None:
        """Count what a converted unit held that no mapper used (the loss report reads ops.unconsumed)."""
        u = self._unconsumed
        for item, count in sorted(items.items()):
            u["run_id"].append(self.ctx.run_id)
            u["file_sha256"].append(self.ctx.file_sha256)
            u["unit_position"].append(unit.position)
            u["container"].append(container)
            u["item"].append(item)
            u["count"].append(count)

    def items(
        self, unit: Unit, container: str | None, counts: dict[tuple[str | None, str], tuple[int, int]]
    ) -> None:
        """Count, per part and item kind, what a converted unit held and converted (ops.unit_items)."""
        it = self._items
        for (part, item), (found, converted) in sorted(
            counts.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])
        ):
            it["run_id"].append(self.ctx.run_id)
            it["file_sha256"].append(self.ctx.file_sha256)
            it["unit_position"].append(unit.position)
            it["container"].append(container)
            it["part"].append(part)
            it["item"].append(item)
            it["found"].append(found)
            it["converted"].append(converted)

    def skip(self, unit: Unit, reason: str) -> None:
        self._row(unit, "skipped", check_reason(reason, "skipped"), 0)

    def quarantine(self, unit: Unit, reason: str, message: str, resource_type: str | None = None) -> None:
        self._row(unit, "quarantined", check_reason(reason, "quarantined"), 0)
        q = self._quarantine
        q["run_id"].append(self.ctx.run_id)
        q["file_sha256"].append(self.ctx.file_sha256)
        q["unit_position"].append(unit.position)
        q["reason_code"].append(reason)
        q["pointer"].append(
            pointer(self.ctx.file_sha256, unit.kind, unit.position, unit.byte_offset, unit.byte_length)
        )
        q["message"].append(message)
        q["resource_type"].append(resource_type)

    def _row(self, unit: Unit, outcome: str, reason: str | None, count: int) -> None:
        led = self._ledger
        led["run_id"].append(self.ctx.run_id)
        led["file_sha256"].append(self.ctx.file_sha256)
        led["unit_position"].append(unit.position)
        led["unit_kind"].append(unit.kind)
        led["outcome"].append(outcome)
        led["reason"].append(reason)
        led["resource_count"].append(count)
        led["byte_offset"].append(unit.byte_offset)
        led["byte_length"].append(unit.byte_length)
        if len(led["run_id"]) >= self.batch_size:
            self.flush()

    def discard(self, file_sha256: str) -> None:
        """Drop the unflushed rows of one file (one whose reading failed); other files' rows stay."""
        for buffer in self._buffers():
            keep = [i for i, sha in enumerate(buffer["file_sha256"]) if sha != file_sha256]
            for name, values in buffer.items():
                buffer[name] = [values[i] for i in keep]
        self.staged = 0

    def _buffers(self) -> tuple[dict[str, list], ...]:
        return (self._stage, self._ledger, self._quarantine, self._unconsumed, self._items)

    def flush(self) -> None:
        _append(self.con, "_stage", self._stage)
        _append(self.con, "ops.ledger", self._ledger)
        _append(self.con, "ops.quarantine", self._quarantine, extra={"quarantined_at": "now()"})
        _append(self.con, "ops.unconsumed", self._unconsumed)
        _append(self.con, "ops.unit_items", self._items)


def _append(
    con: duckdb.DuckDBPyConnection,
    table: str,
    columns: dict[str, list],
    extra: dict[str, str] | None = None,
) -> None:
    first = next(iter(columns.values()))
    if not first:
        return
    batch = arrow.table(columns)
    names = list(columns)
    select = list(names)
    if extra:
        names += list(extra)
        select += list(extra.values())
    con.register("_ehrlift_batch", batch)
    try:
        con.execute(
            f"INSERT INTO {table} ({', '.join(names)}) SELECT {', '.join(select)} FROM _ehrlift_batch"
        )
    finally:
        con.unregister("_ehrlift_batch")
    for values in columns.values():
        values.clear()

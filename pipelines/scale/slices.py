"""A large file of standalone units (an HL7 archive) cut into fixed runs of units for several workers.

One pass reads the file's units (tokenizing is cheap next to converting them); every slice_units units
form a slice that any worker converts, and the writer commits the slices in order. Slice bounds depend
only on unit positions, so a pooled run and a single-process run commit the same batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pipelines.common import unit as unit_module
from pipelines.common.config import RunConfig
from pipelines.common.ledger import LedgerWriter
from pipelines.common.unit import Converter, FileContext, Unit, UnreadableFile, convert_one
from pipelines.convert import handler_for
from pipelines.land import landed_path
from pipelines.scale.plan import FileWork


@dataclass
class Slice:
    """Units (position after resume) of one file for one task; the last slice settles the file.

    failure: set instead of units when the file could not be read before any slice was cut, so the
    file is one quarantined unit as in a group. bytes: the input bytes the slice accounts for.
    """

    index: int
    work: FileWork
    units: list[Unit] = field(default_factory=list)
    last: bool = False
    total_units: int = 0  # units of the whole file this run, on the last slice
    failure: tuple[str, str] | None = None
    bytes: int = 0
    span: tuple[int, int] | None = None  # (after, through): positions a worker reads from the file itself
    # (start, end, first position): bytes of a file converted set-based by range (pipelines.scale.ranges)
    byte_range: tuple[int, int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        """A span slice as JSON, for an orchestrator (slices carrying units stay in one process)."""
        assert not self.units
        return {
            "index": self.index,
            "work": self.work.to_dict(),
            "last": self.last,
            "total_units": self.total_units,
            "failure": list(self.failure) if self.failure else None,
            "bytes": self.bytes,
            "span": list(self.span) if self.span else None,
            "byte_range": list(self.byte_range) if self.byte_range else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Slice:
        return cls(
            int(data["index"]),
            FileWork(**data["work"]),
            last=bool(data["last"]),
            total_units=int(data["total_units"]),
            failure=tuple(data["failure"]) if data["failure"] else None,
            bytes=int(data["bytes"]),
            span=tuple(data["span"]) if data["span"] else None,
            byte_range=tuple(data["byte_range"]) if data.get("byte_range") else None,
        )


def sliceable(work: FileWork, slice_bytes: int) -> bool:
    """A file big enough to spread, read by a per-unit converter whose units stand alone."""
    handler = handler_for(work.format)
    return work.size >= slice_bytes and work.chunked and isinstance(handler, Converter)


def cut_slices(config: RunConfig, work: FileWork, first_index: int, slice_units: int) -> Iterator[Slice]:
    """Read the file's units once and yield them in slices; indexes count up from first_index."""
    handler = handler_for(work.format)
    ctx = file_context(config, work)
    index, total, prev_end = first_index, 0, 0
    pending: Slice | None = None
    current = Slice(index, work)
    try:
        for unit in handler.units(ctx):
            if unit.position <= work.resume:
                continue  # committed by an earlier, interrupted run
            current.units.append(unit)
            total += 1
            if len(current.units) >= slice_units:
                end = (unit.byte_offset or 0) + (unit.byte_length or 0)
                current.bytes, prev_end = end - prev_end, end
                if pending is not None:
                    yield pending
                pending, index = current, index + 1
                current = Slice(index, work)
    except (UnreadableFile, OSError) as exc:
        if work.resume or pending is not None:
            raise  # part of the file is cut (and may be in): a re-run resumes after what committed
        if isinstance(exc, UnreadableFile):
            reason, message = exc.reason, exc.message
        else:
            reason, message = "unreadable_file", f"I/O error ({type(exc).__name__})"
        yield Slice(first_index, work, last=True, total_units=1, failure=(reason, message), bytes=work.size)
        return
    if pending is not None and not current.units:
        pending.last, pending.total_units = True, total
        pending.bytes += work.size - prev_end
        yield pending
        return
    if pending is not None:
        yield pending
    current.last, current.total_units, current.bytes = True, total, work.size - prev_end
    yield current


def span_slices(config: RunConfig, work: FileWork, first_index: int, slice_units: int) -> list[Slice]:
    """The same slices as cut_slices, as position spans: one counting pass, no units carried.

    For workers on other machines, which read their span from the shared landing folder.
    """
    handler = handler_for(work.format)
    positions = 0
    try:
        for unit in handler.units(file_context(config, work)):
            positions = unit.position
    except (UnreadableFile, OSError) as exc:
        if work.resume:
            raise
        reason, message = (
            (exc.reason, exc.message)
            if isinstance(exc, UnreadableFile)
            else ("unreadable_file", f"I/O error ({type(exc).__name__})")
        )
        return [
            Slice(first_index, work, last=True, total_units=1, failure=(reason, message), bytes=work.size)
        ]
    bounds = list(range(work.resume, positions, slice_units)) or [work.resume]
    out = [
        Slice(first_index + i, work, span=(after, min(after + slice_units, positions)))
        for i, after in enumerate(bounds)
    ]
    out[-1].last, out[-1].total_units, out[-1].bytes = True, max(0, positions - work.resume), work.size
    return out


def _read_span(handler: Converter, ctx, span: tuple[int, int]) -> list[Unit]:
    after, through = span
    out = []
    for unit in handler.units(ctx):
        if unit.position > through:
            break
        if unit.position > after:
            out.append(unit)
    return out


def convert_slice(config: RunConfig, piece: Slice, emit: Callable[..., None], con) -> None:
    """Convert one slice's units; emit(files, reached) is called at each commit point."""
    work = piece.work
    handler = handler_for(work.format)
    ctx = file_context(config, work, piece.index)
    writer = LedgerWriter(con, ctx, config.batch_size)
    if piece.failure is not None:
        writer.quarantine(Unit(0, "file", None, 0, work.size), *piece.failure)
        writer.flush()
        emit([(work.seq, work.handler, "converted", 1)], piece.bytes)
        return
    if piece.byte_range is not None:
        _convert_range(piece, handler, ctx, writer, emit, con)
        return
    units = piece.units if piece.span is None else _read_span(handler, ctx, piece.span)
    start = units[0].byte_offset or 0 if units else 0  # for progress within the slice
    staged = 0
    for unit in units:
        _outcome, resources = convert_one(lambda u: handler.convert(u, ctx), handler.name, unit, ctx, writer)
        staged += resources
        if staged >= unit_module.CHECKPOINT_RESOURCES and unit is not units[-1]:
            writer.flush()
            reached = (unit.byte_offset or 0) + (unit.byte_length or 0) - start
            emit([(work.seq, work.handler, "partial", None)], min(reached, piece.bytes))
            staged = 0
    writer.flush()
    status = ("converted", piece.total_units) if piece.last else ("partial", None)
    emit([(work.seq, work.handler, *status)], piece.bytes)


def _convert_range(piece: Slice, handler, ctx, writer: LedgerWriter, emit: Callable[..., None], con) -> None:
    """One byte range of a file, converted set-based as one batch (see pipelines.scale.ranges)."""
    work = piece.work
    handler.convert_file(ctx, con, writer, skip_through=work.resume, byte_range=piece.byte_range)
    writer.flush()
    status = ("converted", piece.total_units) if piece.last else ("partial", None)
    emit([(work.seq, work.handler, *status)], piece.bytes)


def file_context(config: RunConfig, work: FileWork, group: int | None = None) -> FileContext:
    return FileContext(
        config.run_id,
        work.seq,
        work.sha,
        landed_path(config, work.sha),
        work.format,
        work.detail,
        work.source_system,
        work.declared,
        group,
    )

"""The unit-of-work base: a converter yields units and turns each into resources; the base owns the rest."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import duckdb

from pipelines.common.ledger import LedgerWriter
from pipelines.common.records import (
    Converted,
    FileContext,
    Quarantine,
    Skip,
    StagedResource,
    Unit,
    UnreadableFile,
    stage_dict,
)

log = logging.getLogger(__name__)

# The records live in pipelines.common.records (the ledger needs them too); converters import them here.
__all__ = [
    "BatchConverter",
    "Converted",
    "Converter",
    "FileContext",
    "FileResult",
    "Quarantine",
    "Skip",
    "StagedResource",
    "Unit",
    "UnreadableFile",
    "convert_one",
    "convert_units",
    "stage_dict",
]


class Converter(ABC):
    """A format-specific converter: say how to split a file into units and how to convert one unit.

    chunked converters read formats whose units stand alone (lines, messages): a large file commits in
    chunks and a re-run resumes after the last committed unit. Others (a Bundle is one JSON document)
    commit a file whole.
    """

    name: ClassVar[str]
    formats: ClassVar[frozenset[str]]
    chunked: ClassVar[bool] = False

    @abstractmethod
    def units(self, ctx: FileContext) -> Iterator[Unit]:
        """Yield the file's units in order; raise UnreadableFile if the file breaks off."""

    @abstractmethod
    def convert(self, unit: Unit, ctx: FileContext) -> Converted | Iterable[StagedResource | dict[str, Any]]:
        """Resources for one unit; raise Quarantine or Skip for a unit that yields none."""


class BatchConverter(ABC):
    """A set-based converter: it converts a whole file in batches inside DuckDB.

    It writes the same ledger, quarantine and stage rows as the per-unit path, and sends any unit it
    cannot settle in SQL through convert_one() with its own convert_unit().
    """

    name: ClassVar[str]
    formats: ClassVar[frozenset[str]]
    chunked: ClassVar[bool] = True

    @abstractmethod
    def convert_file(
        self,
        ctx: FileContext,
        con: duckdb.DuckDBPyConnection,
        writer: LedgerWriter,
        on_progress: Callable[[int], None] | None = None,
        *,
        skip_through: int = 0,
        checkpoint: Callable[[], None] | None = None,
    ) -> FileResult:
        """Convert every unit after position skip_through, recording exactly one outcome per unit.

        checkpoint (when given) may be called between batches: it merges and commits what is done.
        """


@dataclass
class FileResult:
    units: int = 0
    converted: int = 0
    quarantined: int = 0
    skipped: int = 0
    resources: int = 0

    def add(self, outcome: str, units: int, resources: int) -> None:
        self.units += units
        setattr(self, outcome, getattr(self, outcome) + units)
        self.resources += resources


def convert_one(
    convert: Callable[[Unit], Converted | Iterable[StagedResource | dict[str, Any]]],
    name: str,
    unit: Unit,
    ctx: FileContext,
    writer: LedgerWriter,
) -> tuple[str, int]:
    """Convert one unit and record its one outcome; returns (outcome, resources)."""
    try:
        out = convert(unit)
        converted = out if isinstance(out, Converted) else Converted(list(out))
        produced = [r if isinstance(r, StagedResource) else stage_dict(r) for r in converted.resources]
    except Quarantine as q:
        writer.quarantine(unit, q.reason, q.message, q.resource_type)
        return "quarantined", 0
    except Skip as s:
        writer.skip(unit, s.reason)
        return "skipped", 0
    except Exception as exc:  # a converter bug must cost one unit, not the run
        where = _innermost(exc)
        # The exception text can quote record values: log and store only its type and location.
        log.error(
            "converter %s failed on %s %s of %s: %s at %s",
            name,
            unit.kind,
            unit.position,
            ctx.file_sha256[:12],
            type(exc).__name__,
            where,
        )
        writer.quarantine(unit, "converter_error", f"{type(exc).__name__} in {name} at {where}")
        return "quarantined", 0
    writer.convert(unit, produced)
    if converted.unconsumed:
        writer.unconsumed(unit, converted.container, converted.unconsumed)
    if converted.items:
        writer.items(unit, converted.container, converted.items)
    return "converted", len(produced)


# A chunk ends after this many units or this many staged resources, whichever comes first: the stage
# lives in memory until its merge, and one result message can carry dozens of resources.
CHECKPOINT_UNITS = 20_000
CHECKPOINT_RESOURCES = 50_000


def convert_units(
    converter: Converter,
    ctx: FileContext,
    writer: LedgerWriter,
    on_progress: Callable[[int], None] | None = None,
    *,
    skip_through: int = 0,
    checkpoint: Callable[[], None] | None = None,
) -> FileResult:
    """Run the file's units after skip_through through a per-unit converter, one outcome per unit."""
    result = FileResult()
    for unit in converter.units(ctx):
        if skip_through and unit.position <= skip_through:
            continue  # committed by an earlier, interrupted run
        outcome, resources = convert_one(
            lambda u: converter.convert(u, ctx), converter.name, unit, ctx, writer
        )
        result.add(outcome, 1, resources)
        if on_progress is not None and unit.byte_offset is not None and result.units % 2048 == 0:
            on_progress(unit.byte_offset + (unit.byte_length or 0))
        if checkpoint is not None and (
            result.units % CHECKPOINT_UNITS == 0 or writer.staged >= CHECKPOINT_RESOURCES
        ):
            checkpoint()
    return result


def _innermost(exc: BaseException) -> str:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return "?"
    return f"{Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno}"

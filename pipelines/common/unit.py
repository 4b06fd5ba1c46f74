"""The unit-of-work base: a converter yields units and turns each into resources; the base owns the rest."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import duckdb
import orjson

from pipelines.common.ledger import LedgerWriter

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FileContext:
    """What a converter may know about the file it reads."""

    run_id: str
    seq: int
    file_sha256: str
    path: Path  # the landed copy, never the operator's original
    format: str
    format_detail: str | None
    source_system: str
    declared_release: str | None = None  # "1.0", "3.0" or "4.0" when the operator declared it
    # The commit group (or slice) of the run converting the file; planned the same in one process and
    # pooled, so work bounded per group (the HL7 v2 explanations) is the same either way.
    group: int | None = None


@dataclass(slots=True)
class Unit:
    """One input unit: an NDJSON line, a Bundle entry, a whole file. Positions are 1-based; 0 is the file."""

    position: int
    kind: str
    payload: Any = None
    byte_offset: int | None = None
    byte_length: int | None = None


@dataclass(frozen=True, slots=True)
class StagedResource:
    """A converted resource as JSON text, with the keys the merge needs (no re-parsing there).

    reference_only marks a resource a unit carries only to stand for its subject (an HL7 result's PID,
    say): it is stored if nothing better exists, yields to any full version, and never conflicts.
    """

    resource_type: str
    id: str
    source_id: str | None
    last_updated: str | None
    json: bytes
    reference_only: bool = False


@dataclass(slots=True)
class Converted:
    """What a converter made of one unit: its resources, and what in the unit no mapper consumed.

    container names the kind of unit (an HL7 message type such as "ORU^R01", a C-CDA document type);
    unconsumed counts the items left over in it (segment names, entry templateIds), so loss is visible.
    items, when the converter accounts for every item it met, maps (part, item kind) - a C-CDA section and
    entry templateId; part None for units without parts - to (found, converted): what the unit held, and
    how much of it a mapper turned into resources.
    """

    resources: list[StagedResource | dict[str, Any]]
    container: str | None = None
    unconsumed: dict[str, int] = field(default_factory=dict)
    items: dict[tuple[str | None, str], tuple[int, int]] = field(default_factory=dict)


class Quarantine(Exception):
    """Raised by a converter: this unit is set aside with a reason code and a message without PHI."""

    def __init__(self, reason: str, message: str, resource_type: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.resource_type = resource_type


class Skip(Exception):
    """Raised by a converter: this unit carries nothing to convert, for a documented reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnreadableFile(Exception):
    """Raised from units(): the file cannot be read to its end; its partial results are discarded."""

    def __init__(self, message: str, reason: str = "unreadable_file") -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def stage_dict(
    resource: dict[str, Any], source_id: str | None = None, *, reference_only: bool = False
) -> StagedResource:
    """Serialize a converter's dict resource (ids already deterministic) for staging."""
    meta = resource.get("meta")
    last_updated = meta.get("lastUpdated") if isinstance(meta, dict) else None
    return StagedResource(
        resource_type=resource["resourceType"],
        id=resource["id"],
        source_id=source_id,
        last_updated=last_updated,
        json=orjson.dumps(resource),
        reference_only=reference_only,
    )


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

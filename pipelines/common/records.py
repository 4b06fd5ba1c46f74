"""What converters, the ledger and the writer exchange: a file's context, a unit, a staged resource, a
unit's conversion, and the outcomes a unit can end in."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson


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

"""What a demo-data run wrote: files, valid resources per type, every deliberate defect and its position."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SUMMARY_NAME = "demo-summary.json"
SUMMARY_VERSION = 1


@dataclass(frozen=True, slots=True)
class FileSummary:
    """One written file. Paths are relative to the output folder, with forward slashes.

    lines counts every NDJSON line, blank and defective ones included (the last may lack its newline);
    entries counts Bundle.entry or manifest output items; resources counts only valid resources.
    HL7 v2 archives have units (every message, batch-envelope segment and junk fragment), framing
    (plain, batch or mllp) and messages (the messages expected to convert, per MSH-9 code^event).
    """

    path: str
    format: str  # fhir-ndjson, fhir-bulk-manifest, fhir-bundle, hl7v2, ccda, empty, text
    size_bytes: int
    sha256: str
    resource_type: str | None = None
    lines: int | None = None
    entries: int | None = None
    bundle_type: str | None = None
    resources: dict[str, int] = field(default_factory=dict)
    units: int | None = None
    framing: str | None = None
    messages: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": self.path,
            "format": self.format,
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
        }
        for key in ("resource_type", "lines", "entries", "bundle_type", "units", "framing"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        out["resources"] = dict(sorted(self.resources.items()))
        if self.messages:
            out["messages"] = dict(sorted(self.messages.items()))
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FileSummary:
        return cls(**data)


@dataclass(frozen=True, slots=True)
class Defect:
    """A deliberate defect and what the ingest must do with it.

    unit_kind is ndjson_line (position: 1-based line number, blank lines counted), file (position 0:
    the whole file), or hl7_message / hl7_fragment (position: 1-based, counting every message, batch-envelope
    segment and fragment of the file). duplicate_of is the line number of the earlier line a duplicate
    repeats. An odd but valid unit that must convert has outcome converted and no reason.
    """

    file: str
    unit_kind: str
    position: int
    outcome: str  # quarantined, skipped or converted
    reason: str | None
    description: str
    duplicate_of: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "file": self.file,
            "unit_kind": self.unit_kind,
            "position": self.position,
            "outcome": self.outcome,
            "reason": self.reason,
        }
        if self.duplicate_of is not None:
            out["duplicate_of"] = self.duplicate_of
        out["description"] = self.description
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Defect:
        return cls(**data)


@dataclass(frozen=True, slots=True)
class DemoSummary:
    """Exactly what generate_demo_data wrote; pipeline tests reconcile the warehouse ledger against it."""

    seed: int
    patients: int
    bundle_patients: int
    transaction_time: str
    files: tuple[FileSummary, ...]
    resources: dict[str, int]  # valid resources per type, over every file
    defects: tuple[Defect, ...]
    messages: dict[str, int] = field(default_factory=dict)  # HL7 v2 messages expected to convert, per type

    @property
    def total_resources(self) -> int:
        return sum(self.resources.values())

    def file(self, path: str) -> FileSummary:
        return next(f for f in self.files if f.path == path)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "summary_version": SUMMARY_VERSION,
            "seed": self.seed,
            "patients": self.patients,
            "bundle_patients": self.bundle_patients,
            "transaction_time": self.transaction_time,
            "total_resources": self.total_resources,
            "resources": dict(sorted(self.resources.items())),
        }
        if self.messages:  # only runs that wrote HL7 v2 archives
            out["messages"] = dict(sorted(self.messages.items()))
        out["files"] = [f.to_dict() for f in self.files]
        out["defects"] = [d.to_dict() for d in self.defects]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DemoSummary:
        return cls(
            seed=data["seed"],
            patients=data["patients"],
            bundle_patients=data["bundle_patients"],
            transaction_time=data["transaction_time"],
            files=tuple(FileSummary.from_dict(f) for f in data["files"]),
            resources=dict(data["resources"]),
            defects=tuple(Defect.from_dict(d) for d in data["defects"]),
            messages=dict(data.get("messages", {})),
        )

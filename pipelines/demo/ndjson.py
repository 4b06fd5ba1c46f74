"""Bulk-export-shaped NDJSON: one file family per resource type, split like real exports, defects planted."""

from __future__ import annotations

import hashlib
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import orjson

from pipelines.demo.defects import OUTCOMES, PlannedDefect, defect_line
from pipelines.demo.summary import Defect, FileSummary

MAX_LINES = 100_000  # lines per file before a new one is started, as bulk-export servers do
_FLUSH_BYTES = 1 << 20


class _File:
    __slots__ = ("buf", "buf_size", "fh", "lines", "rel", "sha", "size", "valid")

    def __init__(self, folder: Path, rel_dir: str, name: str) -> None:
        self.rel = f"{rel_dir}/{name}"
        self.fh: BinaryIO = (folder / name).open("wb")
        self.sha = hashlib.sha256()
        self.buf: list[bytes] = []
        self.buf_size = self.lines = self.size = self.valid = 0

    def add(self, data: bytes) -> int:
        self.lines += 1
        self.buf.append(data)
        self.buf_size += len(data)
        if self.buf_size >= _FLUSH_BYTES:
            self.flush()
        return self.lines

    def flush(self) -> None:
        blob = b"".join(self.buf)
        self.fh.write(blob)
        self.sha.update(blob)
        self.size += len(blob)
        self.buf.clear()
        self.buf_size = 0

    def close(self, resource_type: str) -> FileSummary:
        self.flush()
        self.fh.close()
        return FileSummary(
            path=self.rel,
            format="fhir-ndjson",
            size_bytes=self.size,
            sha256=self.sha.hexdigest(),
            resource_type=resource_type,
            lines=self.lines,
            resources={resource_type: self.valid} if self.valid else {},
        )


class _Family:
    """All files of one resource type, and the defects still to plant in them."""

    __slots__ = (
        "current",
        "done",
        "last",
        "last_line",
        "number",
        "pending",
        "remembered",
        "rtype",
        "valid",
        "wanted",
    )

    def __init__(self, rtype: str, plan: list[PlannedDefect]) -> None:
        self.rtype = rtype
        self.number = 0
        self.current: _File | None = None
        self.done: list[FileSummary] = []
        self.valid = 0
        self.pending = deque(d for d in plan if d.resource_type == rtype)
        self.wanted = {d.source for d in self.pending if d.source is not None}
        self.remembered: dict[int, tuple[bytes, dict[str, Any], int]] = {}
        self.last: dict[str, Any] | None = None
        self.last_line: tuple[bytes, dict[str, Any], int] | None = None


class NdjsonExport:
    """Streams resources to Type.NNN.ndjson files under folder; use as a context manager or call close()."""

    def __init__(
        self,
        folder: Path,
        rel_dir: str,
        seed: int,
        plan: list[PlannedDefect],
        truncated_type: str | None,
        max_lines: int | None = None,
    ) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.rel_dir = rel_dir
        self.seed = seed
        self.plan = plan
        self.truncated_type = truncated_type
        self.max_lines = max_lines or MAX_LINES
        self.families: dict[str, _Family] = {}
        self.defects: list[Defect] = []

    def __enter__(self) -> NdjsonExport:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is not None:
            for fam in self.families.values():
                if fam.current is not None:
                    fam.current.fh.close()

    def write(self, rtype: str, resource: dict[str, Any]) -> None:
        fam = self.families.get(rtype)
        if fam is None:
            fam = self.families[rtype] = _Family(rtype, self.plan)
        line = orjson.dumps(resource)
        lineno = self._emit(fam, line + b"\n")
        fam.current.valid += 1  # type: ignore[union-attr]
        fam.valid += 1
        fam.last = resource
        fam.last_line = (line, resource, lineno)
        if fam.valid in fam.wanted:
            fam.remembered[fam.valid] = fam.last_line
        while fam.pending and fam.pending[0].after <= fam.valid:
            self._plant(fam, fam.pending.popleft())

    def close(self) -> tuple[list[FileSummary], list[Defect]]:
        """Plant what is left (defects past a short family's end, the truncated tail) and close every file."""
        files: list[FileSummary] = []
        for rtype in sorted(self.families):
            fam = self.families[rtype]
            while fam.pending:
                self._plant(fam, fam.pending.popleft())
            if rtype == self.truncated_type:
                self._plant(fam, PlannedDefect("truncated", rtype, fam.valid))
            if fam.current is not None:
                fam.done.append(fam.current.close(rtype))
                fam.current = None
            files.extend(fam.done)
        return files, sorted(self.defects, key=lambda d: (d.file, d.position))

    def _emit(self, fam: _Family, data: bytes) -> int:
        if fam.current is None or fam.current.lines >= self.max_lines:
            if fam.current is not None:
                fam.done.append(fam.current.close(fam.rtype))
            fam.current = _File(self.folder, self.rel_dir, f"{fam.rtype}.{fam.number:03d}.ndjson")
            fam.number += 1
        return fam.current.add(data)

    def _plant(self, fam: _Family, planned: PlannedDefect) -> None:
        if fam.last is None or fam.last_line is None:
            return  # nothing to model the defect on; the summary only lists what was written
        source = None
        if planned.source is not None:
            source = fam.remembered.get(planned.source, fam.last_line)
        data = defect_line(planned.kind, self.seed, fam.last, source[:2] if source else None)
        newline = b"" if planned.kind == "truncated" else b"\n"
        lineno = self._emit(fam, data + newline)
        outcome, reason, description = OUTCOMES[planned.kind]
        assert fam.current is not None
        self.defects.append(
            Defect(
                file=fam.current.rel,
                unit_kind="ndjson_line",
                position=lineno,
                outcome=outcome,
                reason=reason,
                description=description,
                duplicate_of=source[2] if source else None,
            )
        )

"""Loaders for licensed terminology releases a user supplies: one module per kind, one transaction each."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from pipelines.common.errors import EhrliftError, ExitCode, InputNotFoundError

KINDS = ("loinc", "snomed", "rxnorm", "cvx", "codesystem", "conceptmap")


class TerminologyLoadError(EhrliftError):
    """A release file is corrupt, truncated or not in the expected layout; nothing was loaded."""

    exit_code = ExitCode.TERMINOLOGY

    def __init__(self, path: Path | str, line: int | None, problem: str, *, hint: str | None = None) -> None:
        where = f"{path} line {line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}", hint=hint or "nothing was loaded; check the release files")
        self.path = str(path)
        self.line = line


@dataclass(frozen=True)
class StatusChange:
    system: str
    code: str
    old_status: str | None  # None: the code was not in the release in force before
    new_status: str | None  # None: the code is missing from the new (complete) release
    replaced_by: str | None  # the new release's replacement target(s), space-separated


@dataclass
class LoadReport:
    kind: str
    system: str | None
    version: str
    source: str
    sha256: str
    counts: dict[str, int] = field(default_factory=dict)
    changed: list[StatusChange] = field(default_factory=list)
    already_loaded: bool = False
    previous_version: str | None = None


@dataclass
class Release:
    """One parsed release, ready to install.

    Each table is a list of tuples in the column order noted, or a pyarrow Table with those column
    names (what large releases parse into).
    """

    kind: str
    system: str  # the code system URI (for a ConceptMap: the map's URL)
    version: str
    source: str
    sha256: str
    content: str = "complete"
    concepts: list[tuple] | pa.Table = field(default_factory=list)  # code, display, status, status_detail
    designations: list[tuple] | pa.Table = field(default_factory=list)  # code, term, use
    properties: list[tuple] | pa.Table = field(default_factory=list)  # code, property, value
    replacements: list[tuple] | pa.Table = field(default_factory=list)  # code, target_code, relation
    maps: list[tuple] = field(default_factory=list)  # terminology.maps columns without map, map_version
    map_name: str | None = None  # the map whose rows this release replaces
    skipped: dict[str, int] = field(default_factory=dict)  # rows left out on purpose, by why


def sha256_files(paths: list[Path]) -> str:
    """One digest over several files (names and contents), so the same release loads once."""
    outer = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.name):
        h = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        outer.update(f"{path.name}\0{h.hexdigest()}\n".encode())
    return outer.hexdigest()


def read_release(kind: str, path: Path, *, version: str | None = None) -> Release:
    """Parse a release of `kind` at `path` (file or folder) without touching the warehouse."""
    if kind not in KINDS:
        raise EhrliftError(f"unknown terminology kind {kind!r}; expected one of {', '.join(KINDS)}")
    if not path.exists():
        raise InputNotFoundError(f"terminology release not found: {path}")
    from terminology.loaders import codesystem, conceptmap, cvx, loinc, rxnorm, snomed

    reader = {
        "loinc": loinc.read,
        "snomed": snomed.read,
        "rxnorm": rxnorm.read,
        "cvx": cvx.read,
        "codesystem": codesystem.read,
        "conceptmap": conceptmap.read,
    }[kind]
    release = reader(path)
    if version:
        release.version = version
    return release


def load_release(con, kind: str, path: Path, *, version: str | None = None) -> LoadReport:
    """Parse and install one release in a single transaction; re-loading the same files does nothing."""
    from terminology.store import install

    return install(con, read_release(kind, Path(path), version=version))

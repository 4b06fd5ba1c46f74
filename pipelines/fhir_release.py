"""Declared FHIR releases: the run's --fhir-release and per-file rows of a source folder's .fhir-release.csv.

A declared release replaces the guess from content for the whole file; each unit is still checked
against it, and one that contradicts it is quarantined (declared_release_contradicted).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import duckdb

from pipelines import formats
from pipelines.common.errors import ConfigError

DECLARATION_FILE = ".fhir-release.csv"  # hidden: landing never takes it for clinical data
RELEASE_OF = {"auto": None, "dstu2": "1.0", "stu3": "3.0", "r4": "4.0"}
# Formats a declaration applies to: FHIR JSON, whatever release its content suggested.
FHIR_FORMATS = frozenset(
    {
        formats.FHIR_NDJSON,
        formats.FHIR_NDJSON_DSTU2,
        formats.FHIR_NDJSON_STU3,
        formats.FHIR_NDJSON_MIXED,
        formats.FHIR_BUNDLE,
        formats.FHIR_BUNDLE_DSTU2,
        formats.FHIR_BUNDLE_STU3,
        formats.FHIR_BUNDLE_MIXED,
        formats.FHIR_RESOURCE,
        formats.FHIR_RESOURCE_DSTU2,
        formats.FHIR_RESOURCE_STU3,
        formats.FHIR_UNSUPPORTED_VERSION,
    }
)


@dataclass(frozen=True)
class Declared:
    release: str  # "1.0", "3.0" or "4.0"
    by: str  # "run" or "folder"


class Declarations:
    """Which release a source file is declared in, if any.

    The nearest .fhir-release.csv (the file's folder, then its parents up to the source folder named
    on the command line) with a matching row decides; in a file, the first matching row wins. Without
    one, the run's --fhir-release applies. A row saying "auto" leaves its files to content detection.
    """

    def __init__(self, sources: tuple[str, ...], run_release: str) -> None:
        self._roots = [Path(s).resolve() for s in sources if Path(s).is_dir()]
        self._run = RELEASE_OF[run_release]
        self._rows: dict[Path, list[tuple[str, str | None]]] = {}

    def for_file(self, path: Path) -> Declared | None:
        path = path.resolve()
        folder = path.parent
        within = [r for r in self._roots if r == folder or r in folder.parents]
        stop = max(within, key=lambda r: len(r.parts)) if within else folder
        while True:
            for pattern, release in self._read(folder):
                if PurePosixPath(path.relative_to(folder).as_posix()).match(pattern):
                    return Declared(release, "folder") if release else None
            if folder == stop or folder == folder.parent:
                break
            folder = folder.parent
        return Declared(self._run, "run") if self._run else None

    def _read(self, folder: Path) -> list[tuple[str, str | None]]:
        if folder not in self._rows:
            self._rows[folder] = _parse(folder / DECLARATION_FILE)
        return self._rows[folder]


_MAX_BYTES = 1 << 20


def _parse(path: Path) -> list[tuple[str, str | None]]:
    """Rows of (glob, release); a header row `pattern,release` and lines starting with # are ignored."""
    if not path.is_file():
        return []
    try:
        # Read whole and decoded up front: a binary or non-UTF-8 file is a configuration error, and
        # a declaration file is a few lines (a huge one is not a declaration file).
        raw = path.read_bytes() if path.stat().st_size <= _MAX_BYTES else None
        text = raw.decode("utf-8-sig") if raw is not None else None
    except UnicodeDecodeError:
        text = None
    if text is None or "\x00" in text:
        raise ConfigError(
            f"{DECLARATION_FILE} is not a UTF-8 text file of at most {_MAX_BYTES} bytes",
            hint="write it as UTF-8 CSV rows `glob,release`, or remove it",
        )
    rows: list[tuple[str, str | None]] = []
    try:
        parsed = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error:
        raise ConfigError(
            f"{DECLARATION_FILE} is not valid CSV", hint="write rows `glob,release`, e.g. `*.ndjson,dstu2`"
        ) from None
    for number, row in enumerate(parsed, 1):
        cells = [c.strip() for c in row]
        if not any(cells) or cells[0].startswith("#") or cells == ["pattern", "release"]:
            continue
        if len(cells) != 2 or not cells[0] or cells[1].lower() not in RELEASE_OF:
            raise ConfigError(
                f"{DECLARATION_FILE} row {number} is not `glob,release`",
                hint=f"release is one of {', '.join(RELEASE_OF)}; e.g. `*.ndjson,dstu2`",
            )
        try:
            PurePosixPath("x").match(cells[0])
        except ValueError:
            raise ConfigError(
                f"{DECLARATION_FILE} row {number} has an unusable glob", hint="e.g. `*.ndjson`"
            ) from None
        rows.append((cells[0], RELEASE_OF[cells[1].lower()]))
    return rows


def record(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    sha: str,
    landed: Path,
    fmt: str,
    declared: Declared | None,
    *,
    clear: bool = True,
) -> str:
    """Record a declaration for a landed FHIR file; returns the format the file is read as this run.

    clear=False when the run cannot have declared this file before (its first landing attempt).
    """
    if clear:
        con.execute(
            "DELETE FROM ops.fhir_release_declarations WHERE run_id = ? AND file_sha256 = ?", [run_id, sha]
        )
    if declared is None or fmt not in FHIR_FORMATS:
        return fmt
    declared_fmt, detail = formats.detect(landed, release=declared.release)
    con.execute(
        "INSERT INTO ops.fhir_release_declarations VALUES (?, ?, ?, ?, ?, ?)",
        [run_id, sha, declared.release, declared.by, declared_fmt, detail],
    )
    return declared_fmt


# The format and declared release each run read a file with (its content's format when undeclared).
_READ_AS = """
    JOIN ops.files f ON f.file_sha256 = rf.file_sha256
    LEFT JOIN ops.fhir_release_declarations d ON d.run_id = rf.run_id AND d.file_sha256 = rf.file_sha256
"""
_SAME_READING = "coalesce(d.format, f.format) = ? AND d.release IS NOT DISTINCT FROM ?"


def conversion_done(
    con: duckdb.DuckDBPyConnection, sha: str, handler: str, fmt: str, release: str | None
) -> bool:
    """Has a run converted this file with this handler, read as this format under this declaration?"""
    row = con.execute(
        f"SELECT count(*) FROM ops.run_files rf {_READ_AS} "
        f"WHERE rf.file_sha256 = ? AND rf.handler = ? AND rf.status = 'converted' AND {_SAME_READING}",
        [sha, handler, fmt, release],
    ).fetchone()
    return bool(row and row[0])


def committed_position(
    con: duckdb.DuckDBPyConnection, sha: str, handler: str, fmt: str, release: str | None
) -> int:
    """The last unit interrupted runs committed of this file, read the same way (0 if none)."""
    row = con.execute(
        f"""
        SELECT max(l.unit_position) FROM ops.ledger l
        JOIN ops.run_files rf ON rf.run_id = l.run_id AND rf.file_sha256 = l.file_sha256 {_READ_AS}
        WHERE l.file_sha256 = ? AND rf.status = 'partial' AND rf.handler = ? AND {_SAME_READING}
        """,
        [sha, handler, fmt, release],
    ).fetchone()
    return int(row[0]) if row and row[0] is not None else 0

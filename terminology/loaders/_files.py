"""Reading release files row by row with file and line in every error; finding files in release folders."""

from __future__ import annotations

import csv
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb

from terminology.loaders import TerminologyLoadError

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # LOINC's RELATEDNAMES2 and notes run long


def find_one(folder: Path, patterns: tuple[str, ...], what: str, *, required: bool = True) -> Path | None:
    """The single file under `folder` matching the first pattern that matches anything."""
    for pattern in patterns:
        hits = sorted(p for p in folder.rglob(pattern) if p.is_file())
        if len(hits) > 1:
            raise TerminologyLoadError(
                folder, None, f"more than one {what} file: {', '.join(str(h) for h in hits[:3])}"
            )
        if hits:
            return hits[0]
    if required:
        raise TerminologyLoadError(folder, None, f"no {what} file ({' or '.join(patterns)}) found")
    return None


def check_complete(path: Path) -> None:
    """Release files end with a line break: one that does not was cut off (a copy or download broke)."""
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, 2)
            if size == 0:
                raise TerminologyLoadError(path, None, "empty file")
            fh.seek(size - 1)
            if fh.read(1) == b"\n":
                return
            fh.seek(0)
            lines = sum(block.count(b"\n") for block in iter(lambda: fh.read(1 << 20), b"")) + 1
    except OSError as exc:
        raise TerminologyLoadError(path, None, f"cannot read: {exc.strerror}") from None
    raise TerminologyLoadError(
        path, lines, "the file ends inside this line, without a line break (truncated?)"
    )


def _open(path: Path):
    try:
        return path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise TerminologyLoadError(path, None, f"cannot read: {exc.strerror}") from None


def read_csv(path: Path, required: tuple[str, ...], *, delimiter: str = ",") -> Iterator[tuple[int, dict]]:
    """(line, row) for each data row of a headed CSV/TSV; short, long or broken rows name their line."""
    check_complete(path)
    with _open(path) as fh:
        # strict: a file cut inside a quoted last field is an error, not a shortened value.
        reader = csv.reader(
            fh, delimiter=delimiter, quoting=csv.QUOTE_NONE if delimiter == "\t" else 0, strict=True
        )
        try:
            header = next(reader, None)
            if not header:
                raise TerminologyLoadError(path, 1, "empty file: no header row")
            missing = [c for c in required if c not in header]
            if missing:
                raise TerminologyLoadError(path, 1, f"header lacks column(s) {', '.join(missing)}")
            width = len(header)
            for row in reader:
                if not row:
                    continue
                if len(row) != width:
                    raise TerminologyLoadError(
                        path,
                        reader.line_num,
                        f"{len(row)} fields where the header has {width} (truncated or corrupt file?)",
                    )
                yield reader.line_num, dict(zip(header, row, strict=True))
        except csv.Error as exc:
            raise TerminologyLoadError(path, reader.line_num, f"not valid CSV: {exc}") from None
        except UnicodeDecodeError:
            raise TerminologyLoadError(path, reader.line_num + 1, "not UTF-8 text") from None


def read_rrf(path: Path, fields: int) -> Iterator[tuple[int, list[str]]]:
    """(line, fields) for each row of a pipe-delimited RRF file (every row ends with '|')."""
    check_complete(path)
    with _open(path) as fh:
        line = 0
        try:
            for line, text in enumerate(fh, start=1):
                text = text.rstrip("\r\n")
                if not text:
                    continue
                parts = text.split("|")
                if len(parts) != fields + 1 or parts[-1] != "":
                    raise TerminologyLoadError(
                        path,
                        line,
                        f"{len(parts) - 1} fields where {path.name} has {fields} (truncated or corrupt?)",
                    )
                yield line, parts[:-1]
        except UnicodeDecodeError:
            raise TerminologyLoadError(path, line + 1, "not UTF-8 text") from None


_DUCK_LINE = re.compile(r"CSV Error on Line: (\d+)")
_DUCK_FOUND = re.compile(r"Expected Number of Columns: (\d+) Found: (\d+)")


def duck_read(
    db: duckdb.DuckDBPyConnection,
    table: str,
    paths: list[Path],
    required: tuple[str, ...],
    delimiter: str = "\t",
) -> None:
    """Load the `required` columns of tab-separated files with one header into `table`, in file order.

    DuckDB parses release-sized files (millions of rows) in seconds; its CSV errors carry the line,
    which is re-raised naming file and line (without the line's text).
    """
    header: list[str] | None = None
    for path in paths:
        check_complete(path)
        try:
            with path.open(encoding="utf-8-sig", newline="") as fh:
                first = fh.readline().rstrip("\r\n").split(delimiter)
        except (OSError, UnicodeDecodeError) as exc:
            raise TerminologyLoadError(path, 1, f"cannot read the header: {exc}") from None
        missing = [c for c in required if c not in first]
        if not first or first == [""] or missing:
            raise TerminologyLoadError(path, 1, f"header lacks column(s) {', '.join(missing or required)}")
        if header is not None and first != header:
            raise TerminologyLoadError(path, 1, "header differs from the other files of the same kind")
        header = first
    assert header is not None
    columns = "{" + ", ".join(f"'{c}': 'VARCHAR'" for c in header) + "}"
    for i, path in enumerate(paths):
        verb = f"CREATE OR REPLACE TABLE {table} AS" if i == 0 else f"INSERT INTO {table}"
        keep = ", ".join(f'"{c}"' for c in required)
        try:
            db.execute(
                f"{verb} SELECT {keep} FROM read_csv($path, delim=$delim, header=true, quote='', escape='', "
                f"auto_detect=false, strict_mode=true, columns={columns})",
                {"path": str(path), "delim": delimiter},
            )
        except duckdb.Error as exc:
            text = str(exc)
            m = _DUCK_LINE.search(text)
            found = _DUCK_FOUND.search(text)
            problem = (
                f"{found.group(2)} fields where the header has {found.group(1)} (truncated or corrupt file?)"
                if found
                else "not a valid tab-separated RF2 file"
            )
            raise TerminologyLoadError(path, int(m.group(1)) if m else None, problem) from None

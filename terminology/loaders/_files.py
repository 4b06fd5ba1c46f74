"""Reading release files row by row with file and line in every error; finding files in release folders."""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator
from pathlib import Path

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


def _open(path: Path):
    try:
        return path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise TerminologyLoadError(path, None, f"cannot read: {exc.strerror}") from None


def read_csv(path: Path, required: tuple[str, ...], *, delimiter: str = ",") -> Iterator[tuple[int, dict]]:
    """(line, row) for each data row of a headed CSV/TSV; short, long or broken rows name their line."""
    with _open(path) as fh:
        reader = csv.reader(fh, delimiter=delimiter, quoting=csv.QUOTE_NONE if delimiter == "\t" else 0)
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
